"""The generic training loop: jit with explicit shardings, checkpoint/resume,
metrics, for every method through the `Method`/`Stage` contract
(`maskjax.methods.base`); it never looks at the method's name.

For each stage of `train_state.resolve_stages(method, config)` in order:
  * checkpoints in `<workdir>/checkpoints/<stage.name>/<step>/`;
  * a complete stage (its final step saved) is restored (only when needed)
    and skipped; an incomplete one resumes from its latest step (state, data
    iterator position); a new one is initialised by `stage.init(rng, prev)`
    under `jax.jit` with the state's shardings;
  * `train_step` runs under `jax.jit` with explicit in/out shardings and a
    donated state; metrics stay on device and are fetched (all steps since the
    last fetch) at log steps and before every checkpoint, so a NaN/Inf is
    caught at the first bad step and never saved.

Randomness (everything a pure function of (seed, stage, step), so a resumed
run is bit-identical to an uninterrupted one on the same devices):
  root = jax.random.key(config.seed)
  stage key  = fold_in(root, stage_index)
  step rng   = fold_in(stage key, step)          step = state["step"] (on device)
  init rng   = fold_in(root, 10_000 + stage_index)
  data seed  = SeedSequence([config.seed, stage_index]) (grain shuffles / host rngs)

Evaluation is `maskjax.evaluate`, prediction `maskjax.predict`, mode
dispatch `maskjax.runner`, the workdir's identity `maskjax.workdir`.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import jax
import numpy as np

from maskjax import checkpoint as ckpt_lib
from maskjax import logging_utils, train_state
from maskjax import mesh as mesh_lib
from maskjax import workdir as workdir_lib
from maskjax.data_access import DataAPI
from maskjax.errors import CheckpointError, ConfigError, NonFiniteLossError

PyTree = Any


def stage_key(seed: int, stage_index: int) -> jax.Array:
  return jax.random.fold_in(jax.random.key(seed), stage_index)


def init_key(seed: int, stage_index: int) -> jax.Array:
  return jax.random.fold_in(jax.random.key(seed), 10_000 + stage_index)


def data_seed(seed: int, stage_index: int) -> int:
  return int(np.random.SeedSequence([int(seed), int(stage_index)]).generate_state(1)[0] >> 1)


class CompiledStage:
  """A resolved stage's init and train step under `jax.jit` with explicit shardings.

    cs = CompiledStage(stage, mesh, config.mesh, abstract_previous_state)
    state = cs.init(rng, previous_state)
    state, metrics = cs.step(state, batch, key)   # state donated

  The step counter is the state's "step" (`maskjax.train_state`); the step rng
  is `fold_in(key, step)` computed on device, so no host transfer per step.
  """

  def __init__(self, stage, mesh, mesh_cfg=None, abstract_previous: PyTree = None,
               donate: bool = True):
    self.stage = stage
    self.mesh = mesh
    self.abstract_state = jax.eval_shape(stage.init, jax.random.key(0), abstract_previous)
    self.state_shardings = mesh_lib.state_shardings(self.abstract_state, mesh, mesh_cfg)
    self.abstract_with_shardings = mesh_lib.with_shardings(self.abstract_state,
                                                           self.state_shardings)
    self.batch_sharding = mesh_lib.batch_sharding(mesh)
    self.replicated = mesh_lib.replicated(mesh)
    self.init = jax.jit(stage.init, out_shardings=self.state_shardings)
    train_step = stage.train_step

    def step_fn(state, batch, key):
      return train_step(state, batch, jax.random.fold_in(key, state["step"]))

    self.step = jax.jit(step_fn,
                        in_shardings=(self.state_shardings, self.batch_sharding,
                                      self.replicated),
                        out_shardings=(self.state_shardings, self.replicated),
                        donate_argnums=(0,) if donate else ())

  def init_from_seed(self, seed: int, stage_index: int, previous_state: PyTree) -> PyTree:
    """`stage.init(init_key(seed, stage_index), previous_state)` with the key made
    inside the jitted function (no host array crosses to a multi-process mesh)."""
    stage = self.stage
    fn = jax.jit(lambda prev: stage.init(init_key(seed, stage_index), prev),
                 out_shardings=self.state_shardings)
    return fn(previous_state)

  def stage_key(self, seed: int, stage_index: int) -> jax.Array:
    """Replicated `stage_key(seed, stage_index)`."""
    return jax.jit(lambda: stage_key(seed, stage_index), out_shardings=self.replicated)()


def _first_non_finite(pending: list[tuple[int, dict]]) -> Optional[tuple[int, str, float]]:
  """First (step, term, value) with a non-finite value. Within a step the loss
  terms ("loss/...") are checked first, then the total "loss", then any other
  metric (grad_norm, ...), so the term at fault is named, not its consequences."""
  def order(k):
    return (0 if k.startswith("loss/") else 1 if k == "loss" else 2, k)
  for step, metrics in pending:
    keys = sorted(metrics, key=order)
    for k in keys:
      v = np.asarray(metrics[k])
      if not np.all(np.isfinite(v)):
        return step, k, float(v.reshape(-1)[~np.isfinite(v.reshape(-1))][0])
  return None


def _records_for(splits, name: str):
  if not hasattr(splits, name):
    raise ConfigError(f"Stage.train_split={name!r} is not a split (train, val, test)")
  return getattr(splits, name)


def train_stage(config, workdir: str, stage, stage_index: int, previous_state: PyTree, mesh,
                splits, data: DataAPI, abstract_previous: PyTree = None,
                later_steps: int = 0) -> PyTree:
  """Train (or resume, or skip when complete) one stage; returns its final state.
  `later_steps`: steps of the stages that follow (for the run's ETA)."""
  tcfg = config.train
  ckpt_dir = os.path.join(workdir, "checkpoints", stage.name)
  if abstract_previous is None and previous_state is not None:
    abstract_previous = jax.eval_shape(lambda x: x, previous_state)
  cs = CompiledStage(stage, mesh, config.mesh, abstract_previous)
  ckpt = ckpt_lib.StageCheckpointer(ckpt_dir, max_to_keep=int(tcfg.keep_checkpoints),
                                    async_save=bool(tcfg.async_checkpoint))
  try:
    latest = ckpt.latest_step()
    if latest is not None and latest >= stage.steps:
      logging_utils.info("stage %s complete (step %d of %d): restoring", stage.name, latest,
                         stage.steps)
      state, _ = ckpt.restore(latest, cs.abstract_with_shardings)
      return state

    mesh_lib.per_host_batch_size(stage.batch_size, jax.device_count(), jax.process_count(),
                                 stage.batch_key)
    it = data.train_iterator(
        config.input, _records_for(splits, stage.train_split),
        global_batch_size=stage.batch_size, seed=data_seed(config.seed, stage_index),
        host_transform=stage.host_transform, process_index=jax.process_index(),
        process_count=jax.process_count(), samples_per_epoch=stage.samples_per_epoch)
    if latest is not None:
      state, meta = ckpt.restore(latest, cs.abstract_with_shardings, data_iterator=it)
      step = int(meta["step"])
      logging_utils.info("stage %s: resuming from step %d (%s)", stage.name, step, ckpt_dir)
    else:
      logging_utils.info("stage %s: initialising the model (compiling its init)", stage.name)
      state = cs.init_from_seed(int(config.seed), stage_index, previous_state)
      step = 0
      logging_utils.info("stage %s: initialised, %d steps, global batch %d", stage.name,
                         stage.steps, stage.batch_size)
    last_good = latest
    key = cs.stage_key(int(config.seed), stage_index)
    log_every = max(int(tcfg.log_every), 1)
    ckpt_every = max(int(tcfg.checkpoint_every), 0)
    logger = logging_utils.MetricLogger(workdir, stage=stage.name, total_steps=stage.steps,
                                        start_step=step,
                                        progress_bar=bool(tcfg.progress_bar),
                                        later_steps=later_steps,
                                        then=f"then evaluation of {len(splits.val)} validation + "
                                             f"{len(splits.test)} test images")
    pending: list[tuple[int, dict]] = []
    first = True
    try:
      logging_utils.info("stage %s: compiling the training step (the first step takes longest)",
                         stage.name)
      while step < stage.steps:
        batch = data.to_global(next(it), mesh)
        state, metrics = cs.step(state, batch, key)
        step += 1
        pending.append((step, metrics))
        if first:
          jax.block_until_ready(metrics)
          logging_utils.info("stage %s: first step (compile + run) done", stage.name)
          logger.reset_clock(step)
          first = False
        is_final = step == stage.steps
        do_ckpt = is_final or (ckpt_every and step % ckpt_every == 0)
        if do_ckpt or step % log_every == 0:
          fetched = jax.device_get(pending)
          pending = []
          bad = _first_non_finite(fetched)
          if bad is not None:
            s, term, value = bad
            raise NonFiniteLossError(
                f"non-finite loss at step {s}: {term}={value} (stage {stage.name}); "
                f"last good checkpoint: "
                + (f"step {last_good} in {ckpt_dir}" if last_good is not None else "none"))
          ckpt.check()  # a failed asynchronous save surfaces now, with its cause
          last_metrics = fetched[-1][1]
          logger.log(step, {k: np.asarray(v).reshape(-1)[0] for k, v in last_metrics.items()},
                     batch_size=stage.batch_size)
        if do_ckpt:
          ckpt.save(step, state, data_iterator=it,
                    meta=_meta(config, stage, stage_index, step, is_final))
          last_good = step
    finally:
      logger.close()
    ckpt.wait()
    return state
  finally:
    ckpt.close()


def _meta(config, stage, stage_index, step, final) -> dict:
  return {"stage": stage.name, "stage_index": int(stage_index), "seed": int(config.seed),
          "steps": int(stage.steps), "final": bool(final), "step": int(step),
          "process_count": jax.process_count(), "num_devices": jax.device_count()}


def _stage_complete(workdir: str, stage) -> bool:
  d = os.path.join(workdir, "checkpoints", stage.name)
  if not ckpt_lib.has_checkpoint(d):
    return False
  c = ckpt_lib.StageCheckpointer(d, async_save=False, read_only=True)
  try:
    latest = c.latest_step()
    return latest is not None and latest >= stage.steps
  finally:
    c.close()


def _restore_final(workdir: str, stage, stage_index: int, mesh, mesh_cfg, abstract_previous):
  d = os.path.join(workdir, "checkpoints", stage.name)
  cs = CompiledStage(stage, mesh, mesh_cfg, abstract_previous)
  c = ckpt_lib.StageCheckpointer(d, async_save=False, read_only=True)
  try:
    latest = c.latest_step()
    if latest is None:
      raise CheckpointError(f"no checkpoint of stage {stage.name!r} in {d}; train first "
                            "(--mode=train)")
    state, _ = c.restore(latest, cs.abstract_with_shardings)
    return state, cs.abstract_state
  finally:
    c.close()


def train_all(config, workdir: str, method, mesh, splits, data: Optional[DataAPI] = None):
  """Train every stage in order (resuming / skipping complete ones); returns
  the final state of the last stage."""
  data = data or DataAPI()
  stages = train_state.resolve_stages(method, config)
  if not stages:
    raise ConfigError(f"method {config.method.name!r} has no stages")
  complete = [_stage_complete(workdir, s) for s in stages]
  state, abstract = None, None
  for i, stage in enumerate(stages):
    needed_later = i == len(stages) - 1 or not complete[i + 1]
    if complete[i] and not needed_later:
      cs = CompiledStage(stage, mesh, config.mesh, abstract)
      abstract, state = cs.abstract_state, None
      logging_utils.info("stage %s complete, skipped", stage.name)
      continue
    if state is None and abstract is not None:   # a skipped stage's state is needed now
      state, abstract = _restore_final(workdir, stages[i - 1], i - 1, mesh, config.mesh,
                                       _abstract_before(stages, i - 1, mesh, config.mesh))
    later = sum(s.steps for s, done in zip(stages[i + 1:], complete[i + 1:]) if not done)
    state = train_stage(config, workdir, stage, i, state, mesh, splits, data,
                        abstract_previous=abstract, later_steps=later)
    abstract = jax.eval_shape(lambda x: x, state)
  return state


def _abstract_before(stages, index, mesh, mesh_cfg):
  abstract = None
  for s in stages[:index]:
    abstract = jax.eval_shape(s.init, jax.random.key(0), abstract)
  return abstract


def restore_final_state(config, workdir: str, method, mesh):
  """The final state of the last stage (eval/predict modes)."""
  stages = train_state.resolve_stages(method, config)
  for s in stages:
    if not _stage_complete(workdir, s):
      steps = trained_steps(workdir, method)[s.name]["steps"]
      recorded = (workdir_lib.read_config(workdir) or {}).get("train", {}).get("steps")
      hint = ""
      if steps is not None and recorded is not None and int(recorded) != int(
          config.train.steps):
        hint = (f"; the run was trained with train.steps={recorded} and this config asks for "
                f"train.steps={config.train.steps}: pass --config.train.steps={recorded}, or "
                "omit --config to use the run's config.json")
      raise CheckpointError(
          f"stage {s.name!r} of {workdir} is not trained to its end (step {steps or 0} of "
          f"{s.steps}) "
          f"({os.path.join(workdir, 'checkpoints', s.name)}){hint or '; run --mode=train first'}")
  state, _ = _restore_final(workdir, stages[-1], len(stages) - 1, mesh, config.mesh,
                            _abstract_before(stages, len(stages) - 1, mesh, config.mesh))
  return state




def trained_steps(workdir: str, method) -> dict:
  """{stage: {"steps": trained (latest checkpoint), "planned": stage.steps}}."""
  out = {}
  for st in train_state.resolve_stages(method, method.config):
    d = os.path.join(workdir, "checkpoints", st.name)
    latest = None
    if ckpt_lib.has_checkpoint(d):
      c = ckpt_lib.StageCheckpointer(d, async_save=False, read_only=True)
      try:
        latest = c.latest_step()
      finally:
        c.close()
    out[st.name] = {"steps": latest, "planned": int(st.steps)}
  return out
