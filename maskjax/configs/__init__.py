"""The method configs, as code (big_vision style), inside the package.

Each `<method>.py` here defines `get_config(arg)` with named variants (`demo`
for the embedded data on a CPU, the paper's full settings by default);
`sweeps/` holds sweep definitions. Address them by name or by path:

  python -m maskjax.main --config=riad:demo ...            # from any directory
  python -m maskjax.main --config=configs/riad.py:demo ... # a path; falls back to the
                                                           # packaged file when absent
  maskjax.get_config("mala:demo", train={"steps": 10})
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any

from maskjax.errors import ConfigError

CONFIG_DIR = os.path.dirname(os.path.abspath(__file__))
METHOD_CONFIGS = ("riad", "ssm", "ear", "aca", "mala")


def resolve(spec: str) -> str:
  """'riad:demo' | 'configs/riad.py:demo' | '/x/y.py' -> an existing file path
  with the variant kept ('<file>.py:demo'). Paths that exist win; a missing
  `configs/<name>.py` (or `configs/sweeps/<name>.py`) is taken from the package."""
  path, sep, variant = spec.partition(":")
  tail = sep + variant
  if os.path.isfile(path):
    return spec
  name = path[:-3] if path.endswith(".py") else path
  candidates = [os.path.join(CONFIG_DIR, name + ".py")]
  norm = os.path.normpath(path).replace(os.sep, "/")
  if "/configs/" in "/" + norm:
    rel = ("/" + norm).split("/configs/", 1)[1]
    candidates.append(os.path.join(CONFIG_DIR, rel if rel.endswith(".py") else rel + ".py"))
  for c in candidates:
    if os.path.isfile(c):
      return c + tail
  known = ", ".join(METHOD_CONFIGS)
  raise ConfigError(f"config {spec!r}: no such file, and not a packaged config (known: {known}; "
                    "sweeps: " + ", ".join(sorted(n[:-3] for n in os.listdir(
                        os.path.join(CONFIG_DIR, "sweeps")) if n.endswith(".py"))) + ")")


def load_module(path: str):
  spec = importlib.util.spec_from_file_location(
      "maskjax_config_" + os.path.splitext(os.path.basename(path))[0], path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _set(config, dotted: str, value: Any) -> None:
  node = config
  parts = dotted.split(".")
  for i, p in enumerate(parts[:-1]):
    if p not in node:
      raise ConfigError(f"unknown config key {'.'.join(parts[:i + 1])!r} (in override {dotted!r})")
    node = node[p]
  if parts[-1] not in node:
    raise ConfigError(f"unknown config key {dotted!r}")
  old = node[parts[-1]]
  if isinstance(old, tuple) and isinstance(value, list):
    value = tuple(value)
  try:
    node[parts[-1]] = value
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config.{dotted}={value!r}: {e}") from e


def _flatten(prefix: str, value: Any):
  if isinstance(value, dict):
    for k, v in value.items():
      yield from _flatten(f"{prefix}.{k}" if prefix else k, v)
  else:
    yield prefix, value


def get_config(spec: str, **overrides):
  """The config `spec` names ('mala:demo', a path), with overrides given as
  sections (`train={"steps": 4}`) or dotted keys (`**{"train.steps": 4}`)."""
  path = resolve(spec)
  file, _, variant = path.partition(":")
  config = load_module(file).get_config(variant)
  for key, value in overrides.items():
    for dotted, v in _flatten(key, value):
      _set(config, dotted, v)
  return config
