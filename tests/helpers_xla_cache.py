"""One JAX persistent compilation cache for the whole test session.

Many tests start fresh Python processes (the CLI, the toy worker, the README
example, the benchmark smoke suite) that compile the same programs again. All of
them, and the pytest process itself, share one compilation cache in a temporary
directory made for the test session (never the user's ~/.cache); tests/conftest.py
sets it up before any test compiles and removes it at the end of the session.

  * the pytest process: `jax.config` is updated;
  * subprocesses: JAX_COMPILATION_CACHE_DIR and the minimum compile time / entry
    size are exported through os.environ, which every subprocess helper copies.
    The CLI's own --compilation_cache flag (default ~/.cache/maskjax/xla)
    overrides the environment, so CLI tests pass `cli_cache_flag()`.

MASKJAX_TEST_XLA_CACHE=off runs the tests without a persistent cache;
MASKJAX_TEST_XLA_CACHE=DIR uses (and keeps) DIR instead of a temporary
directory, so a second session starts warm. pytest-xdist workers inherit the
controller's directory through the same variable.

JAX writes a cache entry in place, so a process killed while it writes one
could leave a truncated entry behind (later processes would warn on stderr and
recompile). Processes that a test SIGKILLs, or whose file writes a test makes
fail, read the cache but never write to it (`read_only(env)`).
"""
from __future__ import annotations

import os
import shutil
import tempfile

CACHE_ENV = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
             "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES")
SESSION_VAR = "MASKJAX_TEST_XLA_CACHE"

_dir: str | None = None
_owned: str | None = None   # made by this process, removed by `teardown`


def setup() -> str | None:
  """Creates (or joins) the session cache; idempotent."""
  global _dir, _owned
  if _dir is not None:
    return _dir or None
  requested = os.environ.get(SESSION_VAR, "")
  if requested.lower() in ("off", "0", "no", "false"):
    for k in CACHE_ENV:
      os.environ.pop(k, None)
    _dir = ""
    return None
  if requested:  # a directory named by the caller (or the xdist controller): kept
    path = os.path.abspath(os.path.expanduser(requested))
    os.makedirs(path, exist_ok=True)
  else:
    path = _owned = tempfile.mkdtemp(prefix="maskjax-tests-xla-")
  os.environ[SESSION_VAR] = path
  os.environ["JAX_COMPILATION_CACHE_DIR"] = path
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  import jax
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  _dir = path
  return path


def teardown() -> None:
  if _owned and os.environ.get(SESSION_VAR) == _owned:
    shutil.rmtree(_owned, ignore_errors=True)


def cache_dir() -> str:
  """The session's cache directory; "" when the cache is off."""
  return setup() or ""


def cli_cache_flag() -> str:
  """`python -m maskjax.main` flag for the session cache (an empty value, the
  cache off, disables the CLI's own cache as well)."""
  return f"--compilation_cache={cache_dir()}"


def read_only(env: dict) -> dict:
  """A copy of `env` whose process loads programs from the session cache but
  writes no entry (JAX writes only programs that took longer than the minimum
  compile time to compile)."""
  env = dict(env)
  if env.get("JAX_COMPILATION_CACHE_DIR"):
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "1e9"
  return env
