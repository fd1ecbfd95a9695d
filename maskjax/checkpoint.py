"""Orbax checkpoints of one training stage (the only Orbax user of the loop).

Layout: `<workdir>/checkpoints/<stage>/<step>/` with three items:
  state  the state pytree (params, optimizer state, ...), `StandardSave`;
         restored straight into the run's shardings.
  data   the grain iterator state, one JSON file per process
         (`grain.checkpoint.CheckpointSave`), so each host resumes its own
         shard of the data order.
  meta   JSON: {"step", "stage", "stage_index", "seed", "final", "steps"}.

A stage is complete when its latest step is >= the stage's step count (the
save at the last step has `meta["final"] == True`; a checkpoint beyond a
lowered `train.steps` also counts as the end). Saves are asynchronous when
`config.train.async_checkpoint`; `wait()` blocks until they are committed.
Orbax commits a step atomically (temporary directory, then rename), so a
process killed mid-save leaves the previous step as the latest one.

Only the process that trains (holding the workdir lock, `maskjax.workdir`)
opens a checkpointer for writing; it alone may clean up the temporary
directories of interrupted saves. Eval, predict and completeness checks open
it `read_only`: they never create, delete or clean up anything, so they are
safe beside a live save. A failed save (disk full, read-only directory, ...)
becomes one `CheckpointError` naming the step, the cause and the last good
step, at the save that failed or at the next `check()` / `wait()`.
"""
from __future__ import annotations

import errno
import logging as logging_std
import os
import re
import sys
from typing import Any, Optional

import orbax.checkpoint as ocp
from absl import logging

from maskjax.errors import CheckpointError

PyTree = Any

try:  # grain's Orbax handler (per-process iterator state files)
  from grain.checkpoint import CheckpointRestore as _GrainRestore
  from grain.checkpoint import CheckpointSave as _GrainSave
except ImportError:  # pragma: no cover - grain built without Orbax support
  _GrainSave = _GrainRestore = None


class StageCheckpointer:
  """Periodic/final saves, keep-last-K, async, restore into shardings."""

  def __init__(self, directory: str, *, max_to_keep: int = 2, async_save: bool = True,
               read_only: bool = False):
    self.directory = os.path.abspath(directory)
    self.read_only = bool(read_only)
    keep = max(int(max_to_keep), 1) if max_to_keep and not read_only else None
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, save_interval_steps=0 if read_only else 1,
        enable_async_checkpointing=bool(async_save) and not read_only,
        cleanup_tmp_directories=not read_only,
        create=not read_only,
        read_only=self.read_only)
    self._pending: Optional[int] = None   # step of a save that may still be running
    if not read_only:
      _ignore_closed_loop_errors()
    try:
      self._mngr = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data", "meta"))
    except OSError as e:
      raise CheckpointError(f"cannot open the checkpoint directory {self.directory}: "
                            f"{_os_text(e)}") from e

  # -- queries --------------------------------------------------------------------
  def latest_step(self) -> Optional[int]:
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._mngr.all_steps())

  def read_meta(self, step: int) -> dict:
    try:
      out = self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    except Exception as e:  # noqa: BLE001 - report which checkpoint is broken
      raise CheckpointError(f"cannot read the metadata of checkpoint {self.directory}/{step}: "
                            f"{type(e).__name__}: {e}") from e
    return dict(out["meta"])

  # -- save -----------------------------------------------------------------------
  def save(self, step: int, state: PyTree, *, data_iterator=None, meta: dict) -> None:
    """Save (asynchronously when enabled). The state arrays must not be
    donated before the save has copied them: Orbax copies device arrays to
    host before `save` returns, so the next (donating) step is safe."""
    if self.read_only:
      raise CheckpointError(f"{self.directory} was opened read-only; cannot save step {step}")
    items = {"state": ocp.args.StandardSave(state),
             "meta": ocp.args.JsonSave(dict(meta, step=int(step)))}
    if data_iterator is not None and _GrainSave is not None:
      items["data"] = _GrainSave(data_iterator)
    if self._pending is not None:  # Orbax waits for it anyway; this names its step on failure
      with self._save_errors(self._pending):
        self._mngr.wait_until_finished()
    with self._save_errors(int(step)):
      self._mngr.save(int(step), args=ocp.args.Composite(**items), force=True)
    self._pending = int(step)

  def check(self) -> None:
    """Raise the error of a finished asynchronous save now (cheap, no waiting)."""
    if self._pending is not None:
      with self._save_errors(self._pending):
        self._mngr.check_for_errors()

  def _save_errors(self, step: int):
    return _SaveErrors(self, step)

  def committed_steps(self) -> list[int]:
    """Steps whose save completed (read from the directory, not Orbax's cache)."""
    if not os.path.isdir(self.directory):
      return []
    return sorted(int(n) for n in os.listdir(self.directory) if n.isdigit())

  # -- restore --------------------------------------------------------------------
  def restore(self, step: int, abstract_state: PyTree, *, data_iterator=None):
    """-> (state, meta). `abstract_state`: ShapeDtypeStructs with shardings
    (`maskjax.mesh.with_shardings`). `data_iterator` (optional) is set to the
    saved position in place."""
    items = {"state": ocp.args.StandardRestore(abstract_state), "meta": ocp.args.JsonRestore()}
    if data_iterator is not None and _GrainRestore is not None:
      items["data"] = _GrainRestore(data_iterator)
    try:
      out = self._mngr.restore(int(step), args=ocp.args.Composite(**items))
    except Exception as e:  # noqa: BLE001
      others = [s for s in self.committed_steps() if s != int(step)]
      raise CheckpointError(
          f"cannot restore checkpoint {self.directory}/{step} into the current model: "
          f"{type(e).__name__}: {e}. If the model or method config changed, use a new "
          "--workdir; if this checkpoint is damaged, move it away to resume from the last "
          "good one (" + (f"step {others[-1]}" if others else "none is left") + ")") from e
    return out["state"], dict(out["meta"])

  # -- lifecycle ------------------------------------------------------------------
  def wait(self) -> None:
    with self._save_errors(self._pending if self._pending is not None else -1):
      self._mngr.wait_until_finished()

  def close(self) -> None:
    try:
      self.wait()
    finally:
      try:
        self._mngr.close()
      except Exception as e:  # noqa: BLE001 - the save error (if any) was raised by wait()
        logging.warning("closing checkpoint manager %s: %s", self.directory, e)
    logging.debug("closed checkpoint manager %s", self.directory)


#: set when a save failed: TensorStore threads of that save may still be
#: unwinding, so the CLI ends the process without the interpreter's shutdown
#: (which would print their closed-event-loop tracebacks after the error line).
SAVE_FAILED = False


class _SaveErrors:
  """Turns any exception of an (async) save into one CheckpointError line."""

  def __init__(self, ckpt: StageCheckpointer, step: int):
    self.ckpt, self.step = ckpt, step

  def __enter__(self):
    return self

  def __exit__(self, typ, e, tb):
    if e is None or isinstance(e, (CheckpointError, KeyboardInterrupt)):
      return False
    good = [s for s in self.ckpt.committed_steps() if s != self.step]
    cause = _root_cause(e)
    # The other writes of the failed save end the same way; asyncio would print
    # each as "Task exception was never retrieved" at exit, burying this line.
    logging_std.getLogger("asyncio").setLevel(logging_std.CRITICAL)
    text = _os_text(cause) if isinstance(cause, OSError) else f"{type(cause).__name__}: {cause}"
    what = f"step {self.step}" if self.step >= 0 else "a checkpoint"
    self.ckpt._pending = None
    global SAVE_FAILED
    SAVE_FAILED = True
    raise CheckpointError(
        f"saving {what} to {self.ckpt.directory} failed: {text}; last good checkpoint: "
        + (f"step {good[-1]}" if good else "none") + ". Free space / fix the directory, then "
        "rerun the same command to resume from it") from e


def _ignore_closed_loop_errors() -> None:
  """When a background save fails, TensorStore's remaining write callbacks find
  Orbax's event loop closed and print one traceback each through
  `sys.excepthook`; the failure itself is reported by `_SaveErrors`, so these
  (and only these) are dropped."""
  previous = sys.excepthook
  if getattr(previous, "_maskjax_quiet", False):
    return

  def hook(typ, value, tb):
    if typ is RuntimeError and "Event loop is closed" in str(value):
      return
    previous(typ, value, tb)
  hook._maskjax_quiet = True
  sys.excepthook = hook


def _root_cause(e: BaseException) -> BaseException:
  """The first OSError in an exception's chain (causes, contexts, groups), else
  the OS error code TensorStore puts in its messages, else `e`."""
  seen, todo = set(), [e]
  while todo:
    x = todo.pop(0)
    if x is None or id(x) in seen:
      continue
    seen.add(id(x))
    if isinstance(x, OSError) and x.errno:
      return x
    todo += list(getattr(x, "exceptions", ()) or ()) + [x.__cause__, x.__context__]
  m = re.search(r"os_error_code='?(\d+)", str(e))
  if m:
    code = int(m.group(1))
    return OSError(code, os.strerror(code))
  return e


def _os_text(e: OSError) -> str:
  name = errno.errorcode.get(e.errno, "")
  return f"{e.strerror or e} ({name})" if name else str(e.strerror or e)


def has_checkpoint(directory: str) -> bool:
  """True when `directory` holds at least one committed step."""
  if not os.path.isdir(directory):
    return False
  return any(n.isdigit() for n in os.listdir(directory))
