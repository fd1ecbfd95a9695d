"""The generic training loop: mesh, jit, checkpoint/resume, logging, evaluation.

`run(config, workdir, mode)` serves every method through the `Method`/`Stage`
contract (`maskjax.methods.base`); it never looks at the method's name.

Train mode, for each stage of `method.stages()` in order:
  * checkpoints in `<workdir>/checkpoints/<stage.name>/<step>/`;
  * a complete stage (its final step saved) is restored (only when needed)
    and skipped; an incomplete one resumes from its latest step (state, data
    iterator position); a new one is initialised by `stage.init(rng, prev)`
    under `jax.jit` with the state's shardings;
  * `train_step` runs under `jax.jit` with explicit in/out shardings and a
    donated state; metrics stay on device and are fetched (all steps since the
    last fetch) at log steps and before every checkpoint, so a NaN/Inf is
    caught at the first bad step and never saved.
Then calibration on the validation split and evaluation on the test split.

Randomness (everything a pure function of (seed, stage, step), so a resumed
run is bit-identical to an uninterrupted one on the same devices):
  root = jax.random.key(config.seed)
  stage key  = fold_in(root, stage_index)
  step rng   = fold_in(stage key, step)          step = 0 .. steps-1 (computed on device)
  init rng   = fold_in(root, 10_000 + stage_index)
  data seed  = SeedSequence([config.seed, stage_index]) (grain shuffles / host rngs)

Workdir: a workdir belongs to one run and has one writer at a time (train and
eval hold its lock); `config.json` is written at start; a later run must agree
on the identity keys and, unless `allow_config_change`, on the recipe keys
(`maskjax.workdir`). Eval and predict open checkpoints read-only.
"""
from __future__ import annotations

import csv
import glob
import json
import os
import time
from typing import Any, Iterable, Iterator, Optional

import jax
import numpy as np
from absl import logging

from maskjax import checkpoint as ckpt_lib
from maskjax import config_base, fileio, logging_utils, train_state
from maskjax import data_info as data_info_lib
from maskjax import mesh as mesh_lib
from maskjax import workdir as workdir_lib
from maskjax.errors import (CheckpointError, ConfigError, DataError, NonFiniteLossError,
                            WorkdirError)

PyTree = Any

#: config keys that define a run; a workdir refuses a config that differs on any.
IDENTITY_KEYS = ("seed", "method.name", "model", "input.image_size", "input.categories",
                 "input.format", "input.data_dir")

MODES = ("train", "eval", "predict")


# ----------------------------------------------------------------------------
# data access (the contract of maskjax.data; replaceable for tests)
# ----------------------------------------------------------------------------
class DataAPI:
  """How the loop gets its data: `maskjax.data.sources` / `maskjax.data.pipeline`.

  Tests pass another object with the same four methods to `run`/`train_all`.
  """

  def load_splits(self, input_cfg, seed: int):
    from maskjax.data import sources
    return sources.load_splits(input_cfg, seed)

  def train_iterator(self, input_cfg, records, *, global_batch_size: int, seed: int,
                     host_transform=None, process_index: int = 0, process_count: int = 1,
                     samples_per_epoch=None) -> Iterator[dict]:
    from maskjax.data import pipeline
    return iter(pipeline.train_dataset(
        input_cfg, records, global_batch_size=global_batch_size, seed=seed,
        host_transform=host_transform, process_index=process_index,
        process_count=process_count, samples_per_epoch=samples_per_epoch))

  def eval_batches(self, input_cfg, records, *, global_batch_size: int, process_index: int = 0,
                   process_count: int = 1) -> Iterable[dict]:
    from maskjax.data import pipeline
    return pipeline.eval_batches(input_cfg, records, global_batch_size=global_batch_size,
                                 process_index=process_index, process_count=process_count)

  def to_global(self, batch: dict, mesh) -> dict:
    return mesh_lib.host_to_global(batch, mesh, mesh_lib.BATCH_AXES)


# ----------------------------------------------------------------------------
# workdir
# ----------------------------------------------------------------------------
IDENTITY_KEYS = workdir_lib.IDENTITY_KEYS


def check_workdir(config, workdir: str, *, write: bool = True,
                  allow_config_change: bool = False, mode: str = "train") -> None:
  """Refuse a workdir holding another run (or another recipe); record `config.json`
  (process 0). See `maskjax.workdir`."""
  workdir_lib.check(config, workdir, write=write and jax.process_index() == 0,
                    allow_config_change=allow_config_change,
                    command="resume" if mode == "train" else mode, evaluating=mode != "train")


# ----------------------------------------------------------------------------
# one stage, compiled
# ----------------------------------------------------------------------------
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
  ckpt = ckpt_lib.StageCheckpointer(ckpt_dir, max_to_keep=int(tcfg.get("keep_checkpoints", 2)),
                                    async_save=bool(tcfg.get("async_checkpoint", True)))
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
    log_every = max(int(tcfg.get("log_every", 10)), 1)
    ckpt_every = max(int(tcfg.get("checkpoint_every", 0)), 0)
    logger = logging_utils.MetricLogger(workdir, stage=stage.name, total_steps=stage.steps,
                                        start_step=step,
                                        progress_bar=bool(tcfg.get("progress_bar", True)),
                                        later_steps=later_steps)
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
      steps = _trained_steps(workdir, method)[s.name]["steps"]
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


# ----------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------
def _to_jsonable(x):
  if isinstance(x, dict):
    return {str(k): _to_jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_to_jsonable(v) for v in x]
  if isinstance(x, (jax.Array, np.ndarray, np.generic)):
    a = np.asarray(x)
    return a.item() if a.ndim == 0 else a.tolist()
  return x


def _gather(tree):
  """Global jax.Arrays -> full numpy arrays on every host."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(tree)


def _gather_local(arr: np.ndarray) -> np.ndarray:
  """Host-local rows (this process's part of a global batch) -> all rows."""
  if jax.process_count() == 1:
    return np.asarray(arr)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(np.asarray(arr), tiled=True))


def _calibration_args(calibration: dict) -> dict:
  """Calibration values as jit arguments: global jax.Arrays stay, the rest
  become numpy (identical on every process, so jit treats them as replicated)."""
  return jax.tree.map(lambda v: v if isinstance(v, jax.Array) else np.asarray(v), calibration)


def score_split(config, method, state, calibration, mesh, records, data: DataAPI,
                keep_maps: bool = True, what: str = "scoring") -> dict:
  """Score every record: -> {"image_score" [N], "anomaly_map" [N,H,W] (if keep_maps),
  "label" [N], "mask" [N,H,W] (if keep_maps), "index" [N]} in record order.
  Logs progress with an ETA (`what` names the job: "calibration", "evaluation")."""
  score_fn = jax.jit(method.score)
  bs = int(config.input.eval_batch_size)
  progress = logging_utils.Progress(what, total=-(-len(records) // bs), unit="batches")
  mesh_lib.per_host_batch_size(bs, jax.device_count(), jax.process_count(),
                               "input.eval_batch_size")
  cal = _calibration_args(calibration)
  parts = {k: [] for k in ("image_score", "anomaly_map", "label", "mask", "index")}
  for host_batch in data.eval_batches(config.input, records, global_batch_size=bs,
                                      process_index=jax.process_index(),
                                      process_count=jax.process_count()):
    out = _gather(score_fn(state, data.to_global(host_batch, mesh), cal))
    valid = _gather_local(host_batch["valid"]).astype(bool)
    parts["image_score"].append(np.asarray(out["image_score"], np.float32)[valid])
    parts["index"].append(_gather_local(host_batch["index"])[valid])
    parts["label"].append(_gather_local(host_batch["label"])[valid])
    if keep_maps:
      parts["anomaly_map"].append(np.asarray(out["anomaly_map"], np.float32)[valid])
      parts["mask"].append(_gather_local(host_batch["mask"])[valid])
    progress.update()
  progress.done()
  res = {k: np.concatenate(v) for k, v in parts.items() if v}
  order = np.argsort(res["index"], kind="stable") if "index" in res else None
  return {k: v[order] for k, v in res.items()} if order is not None else res


def _val_batches(config, splits, mesh, data):
  bs = int(config.input.eval_batch_size)
  for b in data.eval_batches(config.input, splits.val, global_batch_size=bs,
                             process_index=jax.process_index(),
                             process_count=jax.process_count()):
    yield data.to_global(b, mesh)


def calibrate(config, workdir, method, state, mesh, splits, data,
              out_dir: Optional[str] = None) -> tuple[dict, Any]:
  """Method calibration + decision threshold on the validation split, saved as
  `calibration.json` in `out_dir` (default: the workdir, where predict reads it)."""
  from maskjax.eval import threshold
  calibration = method.calibrate(state, _val_batches(config, splits, mesh, data)) or {}
  if len(splits.val) == 0:
    raise ConfigError("the validation split is empty: raise config.input.val_fraction "
                      f"(now {config.input.val_fraction}) so thresholds can be fitted")
  val = score_split(config, method, state, calibration, mesh, splits.val, data,
                    what="calibration (validation normals)")
  q = float(config.eval.threshold_quantile)
  stats = threshold.fit(val["image_score"], q, val_maps=val["anomaly_map"])
  # one threshold per category too: a multi-category model's categories score
  # on different scales, so a global threshold flags whole categories
  cat_of = np.asarray([r.category for r in splits.val])[val["index"]]
  stats["categories"] = list(splits.categories)
  stats["per_category"] = {c: threshold.fit(val["image_score"][cat_of == c], q)
                           for c in splits.categories if np.any(cat_of == c)}
  if jax.process_index() == 0:
    fileio.write_json(os.path.join(out_dir or workdir, "calibration.json"),
                      {"calibration": _to_jsonable(calibration),
                       "threshold": _to_jsonable(stats)})
  return calibration, stats


def load_calibration(workdir: str) -> tuple[dict, Any]:
  path = os.path.join(workdir, "calibration.json")
  if not os.path.exists(path):
    raise CheckpointError(f"{path} does not exist; evaluate the run first (--mode=eval)")
  try:
    with open(path, encoding="utf-8") as f:
      d = json.load(f)
    return d["calibration"], d["threshold"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise CheckpointError(f"{path} is not a readable calibration ({type(e).__name__}: {e}); "
                          "rerun --mode=eval to write it again") from e


def evaluate(config, workdir, method, state, mesh, splits, data: Optional[DataAPI] = None,
             timings: Optional[dict] = None, out_dir: Optional[str] = None) -> dict:
  """Calibrate on validation, score the test split, per-category metrics and reports
  (into `out_dir`, default `<workdir>/eval`)."""
  from maskjax.eval import metrics as metrics_lib
  from maskjax.eval import report
  data = data or DataAPI()
  if not splits.test:
    raise DataError(f"the test split of {config.input.data_dir or 'the demo data'} is empty "
                    f"(config.input.categories={tuple(config.input.categories)}): nothing to "
                    "evaluate")
  t0 = time.perf_counter()
  custom_out = out_dir is not None
  out_dir = out_dir or os.path.join(workdir, "eval")
  calibration, stats = calibrate(config, workdir, method, state, mesh, splits, data,
                                 out_dir=out_dir if custom_out else None)
  test = score_split(config, method, state, calibration, mesh, splits.test, data,
                     what="evaluation (test split)")
  eval_time = time.perf_counter() - t0
  cat_of = np.asarray([r.category for r in splits.test])[test["index"]]
  per_category = {}
  for cat in splits.categories:
    sel = cat_of == cat
    if not np.any(sel):
      continue
    per_category[cat] = metrics_lib.evaluate_category(
        test["image_score"][sel], test["label"][sel], test["anomaly_map"][sel],
        test["mask"][sel])
  mean = {k: v["mean"] for k, v in metrics_lib.mean_over_categories(per_category).items()}
  results = {"per_category": per_category, "mean": mean}
  if jax.process_index() == 0:
    run_info = {"config": json.loads(config.to_json()), "timings": dict(timings or {},
                                                                         eval_s=eval_time),
                "device": mesh_lib.describe_devices(), "describe": method.describe(),
                "threshold": _to_jsonable(stats),
                "config_phases": workdir_lib.config_phases(workdir),
                "stages_trained": _trained_steps(workdir, method)}
    base = None
    if config.eval.baseline:  # the trivial reference row (maskjax.eval.baseline)
      from maskjax.eval import baseline
      try:
        tb = time.perf_counter()
        base = baseline.evaluate(list(splits.train) + list(splits.val), splits.test,
                                 int(config.input.image_size), list(per_category))
        run_info["timings"]["baseline_s"] = time.perf_counter() - tb
      except Exception as e:  # noqa: BLE001 - the reference row never fails a finished run
        logging.warning("baseline failed: %s: %s", type(e).__name__, e)
    json_path, md_path = report.write_reports(out_dir, method=config.method.name,
                                              dataset=data_info_lib.dataset_name(config),
                                              per_category=per_category, run_info=run_info,
                                              baseline=base)
    results.update(report_json=str(json_path), report_md=str(md_path))
    _write_test_scores(os.path.join(out_dir, "scores.csv"), splits, test, stats)
    if config.eval.get("plots", True):
      _plots(config, out_dir, splits, test)
    last = max([v["steps"] or 0 for v in run_info["stages_trained"].values()] or [0])
    figures = sorted(glob.glob(os.path.join(out_dir, "**", "*.png"), recursive=True))[:4]
    logging_utils.log_evaluation(workdir, mean, per_category, step=last, images=figures)
    m = results["mean"]
    print(f"report: {md_path}")
    print("mean image AUROC {} | pixel AUROC {} | AUPRO {}".format(
        *(_fmt(m.get(k)) for k in ("image_auroc", "pixel_auroc", "aupro"))))
  return results


def _trained_steps(workdir: str, method) -> dict:
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


def _write_test_scores(path: str, splits, test: dict, stats: dict) -> None:
  """One row per test image: path, category, defect, label, score, the score
  normalised by its category's threshold, and the decision."""
  from maskjax.eval import threshold
  with fileio.atomic_open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["path", "category", "defect", "label", "score", "normalized_score",
                "anomalous"])
    for i, s in zip(test["index"], test["image_score"]):
      r = splits.test[int(i)]
      st, _ = threshold.for_category(stats, r.category)
      w.writerow([r.path, r.category, r.defect, int(r.label), f"{float(s):.6g}",
                  f"{float(threshold.normalize([s], st)[0]):.6g}",
                  int(threshold.decide([s], st)[0])])


def _fmt(v) -> str:
  return "n/a" if v is None else f"{v:.4f}"


def _plots(config, out_dir, splits, test) -> None:
  """Heatmap overlays and ROC/PRO curves (maskjax.eval.plots); a failure is a warning."""
  from maskjax.eval import plots
  try:
    records = [splits.test[i] for i in test["index"]]
    plots.heatmap_overlays(out_dir, records=records, anomaly_maps=test["anomaly_map"],
                           image_size=int(config.input.image_size),
                           num_per_category=int(config.eval.num_heatmaps))
    plots.roc_pro_curves(out_dir, records=records, image_scores=test["image_score"],
                         anomaly_maps=test["anomaly_map"], masks=test["mask"])
  except Exception as e:  # noqa: BLE001 - plots never fail a finished run
    logging.warning("plots failed: %s: %s", type(e).__name__, e)


# ----------------------------------------------------------------------------
# prediction on a folder of images
# ----------------------------------------------------------------------------
def new_predict_dir(workdir: str) -> str:
  """`<workdir>/predict/<n>` with the next free n: a call never overwrites another's."""
  root = os.path.join(workdir, "predict")
  taken = [int(n) for n in os.listdir(root) if n.isdigit()] if os.path.isdir(root) else []
  return os.path.join(root, f"{max(taken, default=0) + 1:03d}")


def output_name(path: Optional[str], index: int) -> str:
  """`a.png` -> `a.png`: the extension stays in output names, so `a.png` and
  `a.jpg` of one folder never share an output file."""
  return os.path.basename(path) if path else f"array_{index:04d}"


def predict(config, workdir, method, state, mesh, inputs, out_dir: Optional[str] = None,
            category: Optional[str] = None) -> dict:
  """Score an image, a folder or a glob (`maskjax.data.prepare.collect`) with the
  run's model; write `<out_dir>/scores.csv` (path, category, threshold used,
  score, normalised score, decision) and one overlay PNG per image (image |
  heatmap with colour bar | outline of the region above the pixel threshold),
  every map scaled by the calibrated thresholds, never by the other images.
  `out_dir` defaults to a new `<workdir>/predict/<n>`."""
  from maskjax import api
  from maskjax.data import prepare
  from maskjax.eval import plots
  if not inputs:
    raise ConfigError("predict mode needs images: --predict_dir (an image, a folder or a glob) "
                      "or config.eval.predict_dir")
  items = prepare.collect(inputs)
  calibration, stats = load_calibration(workdir)
  out_dir = out_dir or new_predict_dir(workdir)
  if jax.process_index() == 0:
    fileio.ensure_writable_dir(out_dir, "--output_dir")
  det = api.Detector(config, workdir, method, state, mesh, _calibration_args(calibration), stats)
  logging_utils.info("predict: scoring %d image(s) with the model of %s", len(items), workdir)
  preds = det.predict([it.path if it.path else it.array for it in items], category=category)
  if jax.process_index() == 0:
    with fileio.atomic_open(os.path.join(out_dir, "scores.csv"), "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["path", "category", "threshold", "score", "normalized_score", "anomalous"])
      for p in preds:
        w.writerow([p.path or "", p.category or "", p.threshold, f"{p.score:.6g}",
                    f"{p.normalized_score:.6g}", int(p.decision)])
    pixel_thr = float(stats.get("pixel_threshold") or 0.0)
    for i, (it, p) in enumerate(zip(items, preds)):
      image = (np.asarray(_original_rgb(it.path), np.float32) / 255.0 if it.path else
               prepare.as_float_rgb(it.array))
      plots.prediction_overlay(
          os.path.join(out_dir, output_name(p.path, i) + "_overlay.png"), image=image,
          anomaly_map=p.anomaly_map, pixel_threshold=pixel_thr,
          title=f"{output_name(p.path, i)}: score {p.score:.4g} "
                f"({p.normalized_score:.2f} x threshold, {p.threshold}) -> "
                + ("ANOMALOUS" if p.decision else "normal"))
    n_bad = sum(p.decision for p in preds)
    print(f"scores: {os.path.join(out_dir, 'scores.csv')} ({len(preds)} images, {n_bad} anomalous)")
  return {"paths": [p.path for p in preds], "scores": np.asarray([p.score for p in preds]),
          "normalized_scores": np.asarray([p.normalized_score for p in preds]),
          "decisions": np.asarray([p.decision for p in preds], bool),
          "categories": [p.category for p in preds], "out_dir": out_dir}


def _original_rgb(path: str):
  from PIL import Image
  with Image.open(path) as img:
    return img.convert("RGB")


# ----------------------------------------------------------------------------
# entry point
# ----------------------------------------------------------------------------
def run(config, workdir: str, mode: str = "train", predict_dir: Optional[str] = None, *,
        data: Optional[DataAPI] = None, evaluate_after_train: bool = True,
        output_dir: Optional[str] = None, allow_config_change: bool = False) -> dict:
  """Train (all stages) then evaluate, or evaluate / predict with the final
  checkpoint of `workdir`. Returns a dict of results (metrics, paths).

  `output_dir`: where eval writes its report (default `<workdir>/eval`) and
  predict its heatmaps (default `<workdir>/predict`). `allow_config_change`:
  resume although recipe keys changed (`maskjax.workdir`)."""
  if mode not in MODES:
    raise ConfigError(f"--mode={mode!r}; known: {', '.join(MODES)}")
  config_base.validate(config)
  mesh_lib.maybe_initialize_distributed()
  workdir = os.path.abspath(workdir)
  writer = jax.process_index() == 0
  if mode != "train" and not os.path.exists(os.path.join(workdir, "config.json")):
    raise WorkdirError(f"--workdir={workdir} holds no run (no config.json); train first")
  if writer and mode == "train":
    fileio.ensure_writable_dir(workdir, "--workdir")
  if writer and mode == "eval":
    fileio.ensure_writable_dir(output_dir or os.path.join(workdir, "eval"),
                               "--output_dir" if output_dir else "--workdir")
    if output_dir is None:
      fileio.ensure_writable_dir(workdir, "--workdir")
  if mode == "predict" or (mode == "eval" and output_dir):
    # read-only use of the run (outputs go elsewhere): no lock, safe beside a writer
    check_workdir(config, workdir, write=False, allow_config_change=allow_config_change,
                  mode=mode)
    return _run_mode(config, workdir, mode, predict_dir, data, evaluate_after_train,
                       output_dir)
  with workdir_lib.WorkdirLock(workdir, mode=mode, enabled=writer):
    check_workdir(config, workdir, write=mode == "train",
                  allow_config_change=allow_config_change, mode=mode)
    return _run_mode(config, workdir, mode, predict_dir, data, evaluate_after_train,
                       output_dir)


def _run_mode(config, workdir, mode, predict_dir, data, evaluate_after_train, output_dir):
  from maskjax.methods import build_method
  data = data or DataAPI()
  if mode == "predict":
    from maskjax.data import prepare
    paths_dir = predict_dir or str(config.eval.predict_dir)
    if not paths_dir:
      raise ConfigError("predict mode needs images: --predict_dir (an image, a folder or a "
                        "glob) or config.eval.predict_dir")
    prepare.collect(paths_dir)  # fail before building anything
    output_dir = output_dir or new_predict_dir(workdir)
    if jax.process_index() == 0:
      fileio.ensure_writable_dir(output_dir, "--output_dir")
  splits = None
  info = data_info_lib.load(workdir) if mode != "train" else None
  if mode != "predict" or info is None:
    splits = data.load_splits(config.input, int(config.seed))
    current = data_info_lib.from_splits(splits, config)
    if mode == "train":
      recorded = data_info_lib.load(workdir)
      if recorded is not None:
        data_info_lib.check_same(recorded, current, workdir)
      elif jax.process_index() == 0:
        data_info_lib.save(workdir, current)
    info = info or current
  method = build_method(config, info)
  method.workdir = workdir
  mesh = mesh_lib.make_mesh(config.mesh)
  for k, v in (method.describe() or {}).items():
    logging_utils.info("method %s: %s", k, v)
  logging_utils.info("devices: %s, mesh %s", mesh_lib.describe_devices(), dict(mesh.shape))
  results: dict = {"workdir": workdir, "mode": mode}
  if mode == "predict":
    state = restore_final_state(config, workdir, method, mesh)
    results.update(predict(config, workdir, method, state, mesh, paths_dir, out_dir=output_dir))
    return results
  if not splits.val:  # the decision threshold needs validation normals: fail before training
    raise ConfigError("the validation split is empty: the decision threshold is fitted on "
                      "held-out training normals; raise config.input.val_fraction (now "
                      f"{config.input.val_fraction}) or add training images")
  timings = {}
  if mode == "train":
    t0 = time.perf_counter()
    state = train_all(config, workdir, method, mesh, splits, data)
    timings["train_s"] = time.perf_counter() - t0
    if not evaluate_after_train:
      results["state"] = state
      return results
  else:
    state = restore_final_state(config, workdir, method, mesh)
  results.update(evaluate(config, workdir, method, state, mesh, splits, data, timings,
                          out_dir=output_dir))
  return results
