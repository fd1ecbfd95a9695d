"""What a run directory is: one run, one writer at a time, its config history.

Lock. `train`, and `eval` writing into the workdir, hold an exclusive `flock`
on `<workdir>/.maskjax.lock` for their whole life (process 0 only, the one that
writes). A second writer fails at once with one line naming the holder's pid,
host and mode. The kernel drops the lock when its process dies (kill -9
included), so a stale lock file never blocks a resume; its content is only
informational. `predict`, and `eval --output_dir`, write elsewhere and open
checkpoints read-only: they need no lock, work on a read-only workdir and may
run beside a training run.

Identity. `config.json` records the config of the run. A later command in the
same workdir is compared key by key with it:
  * `IDENTITY_KEYS` define the run (seed, method, model, data): any difference
    is another run, always refused;
  * `OPERATIONAL_KEYS` only say how the run is executed (logging, checkpoint
    cadence, workers, mesh, evaluation, `train.steps` to extend a run): they
    may change freely;
  * every other key is a *recipe key* (losses, optimiser, batch size, method
    switches, schedules, ...): changing one on resume refuses, listing the
    keys, unless `--allow_config_change`. New keys are recipe keys by default,
    so forgetting to classify one errs on the safe side.
Whenever the recorded config changes, the previous one is kept as
`config.<n>.json` (n = 1, 2, ...) before `config.json` is replaced, and
`config_phases()` lists every phase for the report.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from typing import Any, Optional

from maskjax import fileio
from maskjax.errors import WorkdirError

#: config keys that define a run; a workdir refuses a config that differs on any.
IDENTITY_KEYS = ("seed", "method.name", "model", "input.image_size", "input.categories",
                 "train.protocol",
                 "input.format", "input.data_dir")

#: keys (or whole sections) that may change when a run resumes.
OPERATIONAL_KEYS = ("train.steps", "train.log_every", "train.checkpoint_every",
                    "train.keep_checkpoints", "train.async_checkpoint", "train.progress_bar",
                    "input.num_workers", "input.prefetch", "input.eval_batch_size",
                    "input.cache_dir", "eval", "mesh")

#: identity keys that eval / predict may change: a trained model may be
#: evaluated on another copy or another dataset of the same layout.
DATA_KEYS = ("input.data_dir", "input.format", "input.categories")

LOCK_NAME = ".maskjax.lock"
CONFIG_NAME = "config.json"


# ----------------------------------------------------------------------------
# lock
# ----------------------------------------------------------------------------
class WorkdirLock:
  """Exclusive, non-blocking lock of one workdir (see the module docstring).

    with WorkdirLock(workdir, mode="train"):
      ...
  """

  def __init__(self, workdir: str, *, mode: str, enabled: bool = True):
    self.path = os.path.join(os.path.abspath(workdir), LOCK_NAME)
    self.mode = mode
    self.enabled = enabled
    self._fd: Optional[int] = None

  def acquire(self) -> "WorkdirLock":
    if not self.enabled:
      return self
    try:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise WorkdirError(f"cannot create the lock file {self.path}: "
                         f"{fileio.describe_os_error(e)}") from e
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      holder = _read_holder(fd)
      os.close(fd)
      raise WorkdirError(
          f"--workdir={os.path.dirname(self.path)} is in use by another maskjax run ({holder}); "
          "wait for it to end or use another --workdir") from None
    info = f"pid {os.getpid()} on host {socket.gethostname()}, mode {self.mode}, since " + \
        time.strftime("%Y-%m-%d %H:%M:%S")
    os.ftruncate(fd, 0)
    os.pwrite(fd, info.encode() + b"\n", 0)
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is not None:
      try:
        os.ftruncate(self._fd, 0)
      except OSError:
        pass
      os.close(self._fd)  # closing the descriptor drops the flock
      self._fd = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


def _read_holder(fd: int) -> str:
  try:
    text = os.pread(fd, 500, 0).decode(errors="replace").strip()
  except OSError:
    text = ""
  return text or "holder unknown"


# ----------------------------------------------------------------------------
# identity and config history
# ----------------------------------------------------------------------------
def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


def _under(key: str, sections) -> bool:
  return any(key == s or key.startswith(s + ".") for s in sections)


def diff_configs(previous: dict, current: dict) -> dict[str, list[tuple[str, Any, Any]]]:
  """{"identity" | "recipe" | "operational": [(key, old, new), ...]}."""
  a, b = _flatten(previous), _flatten(current)
  out = {"identity": [], "recipe": [], "operational": []}
  missing = object()
  for key in sorted(set(a) | set(b)):
    old, new = a.get(key, missing), b.get(key, missing)
    if old == new:
      continue
    old = "(absent)" if old is missing else old
    new = "(absent)" if new is missing else new
    kind = ("identity" if _under(key, IDENTITY_KEYS) else
            "operational" if _under(key, OPERATIONAL_KEYS) else "recipe")
    out[kind].append((key, old, new))
  return out


def _fmt_diffs(diffs) -> str:
  return "; ".join(f"{k}: workdir has {a!r}, config has {b!r}" for k, a, b in diffs)


def read_config(workdir: str) -> Optional[dict]:
  path = os.path.join(workdir, CONFIG_NAME)
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise WorkdirError(f"{path} is not a readable config ({e}); use another --workdir") from e


def with_schema_defaults(recorded: dict) -> dict:
  """A recorded config with every shared key it lacks taken from `base_config()`.

  A `config.json` written before a key existed lacks it; the run behaved as
  that key's default says (the default is what the code did before), so the
  filled-in config reads the same as the run and the code needs no fallback.
  """
  from maskjax.config_base import base_config

  def fill(into: dict, defaults: dict) -> dict:
    out = dict(into)
    for k, v in defaults.items():
      if k not in out:
        out[k] = v
      elif isinstance(v, dict) and isinstance(out[k], dict):
        out[k] = fill(out[k], v)
    return out
  out = fill(recorded, json.loads(base_config().to_json()))
  return fill_method_defaults(out)


def fill_method_defaults(recorded: dict) -> dict:
  """`recorded` with the method-config keys it lacks set to what the code did
  before they existed: the method's config module lists them as
  `RECORDED_DEFAULTS = {"model.up_block": "conv_bn_relu", ...}` (a key's full
  value may differ: a new key's default follows the paper, its recorded
  default the run)."""
  import importlib
  name = (recorded.get("method") or {}).get("name")
  if not isinstance(name, str) or not name.isidentifier():
    return recorded
  try:
    module = importlib.import_module(f"maskjax.configs.{name}")
  except ImportError:          # an out-of-tree method: its config declares nothing here
    return recorded
  out = json.loads(json.dumps(recorded))
  for dotted, value in getattr(module, "RECORDED_DEFAULTS", {}).items():
    *parents, leaf = dotted.split(".")
    node = out
    for part in parents:
      node = node.setdefault(part, {})
    node.setdefault(leaf, value)
  return out


def load_run_config(workdir: str):
  """The run's recorded config (`config.json`) as a ConfigDict, for commands
  that act on a finished run without `--config` (eval, predict, export); keys
  added to the schema after the run was recorded get their defaults."""
  import ml_collections
  previous = read_config(workdir)
  if previous is None:
    raise WorkdirError(f"--workdir={workdir} holds no run (no {CONFIG_NAME}); train first")
  return ml_collections.ConfigDict(with_schema_defaults(previous))


def check(config, workdir: str, *, write: bool = True, allow_config_change: bool = False,
          command: str = "resume", evaluating: bool = False) -> None:
  """Refuse a workdir holding another run or (without `allow_config_change`)
  another recipe; with `write`, record the config (keeping the previous one as
  `config.<n>.json` when it differs). Call with the workdir lock held."""
  path = os.path.join(workdir, CONFIG_NAME)
  current = json.loads(config.to_json())
  previous = read_config(workdir)
  changed = False
  if previous is not None:
    # a key the schema gained since the run was recorded is no change of the run
    diffs = diff_configs(with_schema_defaults(previous), current)
    if evaluating:
      diffs["identity"] = [d for d in diffs["identity"] if not _under(d[0], DATA_KEYS)]
    if diffs["identity"]:
      raise WorkdirError(
          f"--workdir={workdir} holds a different run ({path}); differing keys: "
          + _fmt_diffs(diffs["identity"]) + ". Use a new --workdir, or the original config "
          "to resume it")
    if diffs["recipe"] and not allow_config_change:
      raise WorkdirError(
          f"--workdir={workdir} was trained with another recipe; changed keys: "
          + _fmt_diffs(diffs["recipe"]) + f". Use the original values to {command} it, a new "
          "--workdir, or --allow_config_change to continue with the new recipe (the "
          "previous config is kept as config.<n>.json)")
    changed = bool(diffs["recipe"] or diffs["operational"])
  if not write:
    return
  if changed:
    n = 1 + max([int(x) for x in _history_numbers(workdir)] or [0])
    fileio.write_json(os.path.join(workdir, f"config.{n}.json"), previous)
  if previous is None or changed:
    fileio.write_text(path, config.to_json(indent=2))


def _history_numbers(workdir: str) -> list[int]:
  out = []
  for name in os.listdir(workdir) if os.path.isdir(workdir) else ():
    parts = name.split(".")
    if len(parts) == 3 and parts[0] == "config" and parts[1].isdigit() and parts[2] == "json":
      out.append(int(parts[1]))
  return sorted(out)


def config_phases(workdir: str) -> list[dict]:
  """Every recorded config of the run, oldest first, with the keys each phase
  changed: [{"file": "config.1.json", "changed": {key: [old, new]}}, ...,
  {"file": "config.json", ...}]. One entry when the config never changed."""
  files = [f"config.{n}.json" for n in _history_numbers(workdir)] + [CONFIG_NAME]
  phases, prev = [], None
  for name in files:
    path = os.path.join(workdir, name)
    if not os.path.exists(path):
      continue
    with open(path, encoding="utf-8") as f:
      cfg = json.load(f)
    cfg = with_schema_defaults(cfg)  # a key the schema gained since is no change
    changed = {}
    if prev is not None:
      d = diff_configs(prev, cfg)
      changed = {k: [a, b] for k, a, b in d["recipe"] + d["operational"]}
    phases.append({"file": name, "changed": changed})
    prev = cfg
  return phases


def check_for_mode(config, workdir: str, *, write: bool = True,
                   allow_config_change: bool = False, mode: str = "train") -> None:
  """`check` as the modes use it: process 0 records `config.json` when training;
  eval and predict compare without resuming."""
  import jax
  check(config, workdir, write=write and jax.process_index() == 0,
        allow_config_change=allow_config_change,
        command="resume" if mode == "train" else mode, evaluating=mode != "train")
