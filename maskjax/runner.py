"""Mode dispatch: `run(config, workdir, mode)` trains all stages then
evaluates, or evaluates / predicts with the final checkpoint of a workdir, or
plans (`maskjax.plan`). With `train.protocol = "per_category"` a run of several
categories is one sub-run per category (`maskjax.per_category`).

Workdir: a workdir belongs to one run and has one writer at a time (train and
eval hold its lock); `config.json` is written at start; a later run must agree
on the identity keys and, unless `allow_config_change`, on the recipe keys
(`maskjax.workdir`). Eval and predict open checkpoints read-only.
"""
from __future__ import annotations

import os
import time
from typing import Optional

import jax

from maskjax import config_base, fileio, logging_utils, per_category
from maskjax import data_info as data_info_lib
from maskjax import mesh as mesh_lib
from maskjax import workdir as workdir_lib
from maskjax.data_access import DataAPI
from maskjax.errors import ConfigError, WorkdirError
from maskjax.evaluate import evaluate
from maskjax.predict import new_predict_dir, predict
from maskjax.train import restore_final_state, train_all

MODES = ("train", "eval", "predict", "plan")


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
  if mode == "plan":  # nothing trained, compiled or locked; writes plan.json only
    from maskjax import plan
    return plan.run_plan(config, workdir, data)
  if mode == "train":  # before any data or model work
    from maskjax.methods import check_pretrained
    check_pretrained(config)
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
  data = data or DataAPI()
  categories = _per_category_runs(config, workdir, mode, data)
  if categories:
    return _run_per_category(config, workdir, mode, categories, data, evaluate_after_train,
                             output_dir, allow_config_change, writer)
  if mode == "predict" or (mode == "eval" and output_dir):
    # read-only use of the run (outputs go elsewhere): no lock, safe beside a writer
    workdir_lib.check_for_mode(config, workdir, write=False, allow_config_change=allow_config_change,
                  mode=mode)
    return _run_mode(config, workdir, mode, predict_dir, data, evaluate_after_train,
                       output_dir)
  with workdir_lib.WorkdirLock(workdir, mode=mode, enabled=writer):
    workdir_lib.check_for_mode(config, workdir, write=mode == "train",
                  allow_config_change=allow_config_change, mode=mode)
    return _run_mode(config, workdir, mode, predict_dir, data, evaluate_after_train,
                       output_dir)


def _per_category_runs(config, workdir, mode, data) -> Optional[list]:
  """The categories of a per-category run (`maskjax.per_category`), or None
  for a run of one model."""
  recorded = per_category.read_sub_runs(workdir)
  if mode == "predict":
    per_category.refuse_single_model_use(workdir, "predict with")
    return None
  if mode == "eval":
    return recorded
  if not per_category.is_per_category(config):
    return None
  cats = list(data.load_splits(config.input, int(config.seed)).categories)
  if recorded is not None and recorded != cats:
    raise WorkdirError(f"--workdir={workdir} holds per-category sub-runs of {recorded}; the "
                       f"data now selects {cats}: use a new --workdir")
  return cats if len(cats) > 1 or recorded else None


def _run_per_category(config, workdir, mode, categories, data, evaluate_after_train, output_dir,
                      allow_config_change, writer) -> dict:
  def run_one(cfg, sub_dir, sub_out):
    return run(cfg, sub_dir, mode, data=data, evaluate_after_train=evaluate_after_train,
               output_dir=sub_out, allow_config_change=allow_config_change)

  lock = mode == "train" or not output_dir
  with workdir_lib.WorkdirLock(workdir, mode=mode, enabled=writer and lock):
    workdir_lib.check_for_mode(config, workdir, write=mode == "train",
                               allow_config_change=allow_config_change, mode=mode)
    if writer and mode == "train":
      per_category.write_sub_runs(workdir, categories)
    return per_category.run_all(config, workdir, categories, run_one, mode=mode,
                                output_dir=output_dir)


def _run_mode(config, workdir, mode, predict_dir, data, evaluate_after_train, output_dir):
  from maskjax.methods import build_method
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
