"""Session-wide test setup: one JAX persistent compilation cache shared by the
pytest process and every subprocess a test starts (tests/helpers_xla_cache.py)."""
from __future__ import annotations

import helpers_xla_cache

helpers_xla_cache.setup()  # before any test module compiles


def pytest_unconfigure(config):
  helpers_xla_cache.teardown()
