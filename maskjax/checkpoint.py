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
"""
from __future__ import annotations

import os
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

  def __init__(self, directory: str, *, max_to_keep: int = 2, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max(int(max_to_keep), 1) if max_to_keep else None,
        enable_async_checkpointing=bool(async_save),
        cleanup_tmp_directories=True,
        create=True)
    self._mngr = ocp.CheckpointManager(self.directory, options=options,
                                       item_names=("state", "data", "meta"))

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
    items = {"state": ocp.args.StandardSave(state),
             "meta": ocp.args.JsonSave(dict(meta, step=int(step)))}
    if data_iterator is not None and _GrainSave is not None:
      items["data"] = _GrainSave(data_iterator)
    self._mngr.save(int(step), args=ocp.args.Composite(**items), force=True)

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
      raise CheckpointError(
          f"cannot restore checkpoint {self.directory}/{step} into the current model: "
          f"{type(e).__name__}: {e}. If the model or method config changed, use a new "
          "--workdir") from e
    return out["state"], dict(out["meta"])

  # -- lifecycle ------------------------------------------------------------------
  def wait(self) -> None:
    self._mngr.wait_until_finished()

  def close(self) -> None:
    try:
      self._mngr.wait_until_finished()
    finally:
      self._mngr.close()
    logging.debug("closed checkpoint manager %s", self.directory)


def has_checkpoint(directory: str) -> bool:
  """True when `directory` holds at least one committed step."""
  if not os.path.isdir(directory):
    return False
  return any(n.isdigit() for n in os.listdir(directory))
