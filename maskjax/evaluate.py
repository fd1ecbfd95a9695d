"""Evaluation of a trained run: the method's calibration and the decision
thresholds on the validation split of training normals, scoring of the test
split, per-category metrics, reports (`maskjax.eval.report`), per-image
scores, plots and TensorBoard."""
from __future__ import annotations

import csv
import glob
import json
import os
import time
from typing import Any, Optional

import jax
import numpy as np
from absl import logging

from maskjax import data_info as data_info_lib
from maskjax import fileio, logging_utils, train
from maskjax import mesh as mesh_lib
from maskjax import workdir as workdir_lib
from maskjax.data_access import DataAPI
from maskjax.errors import CheckpointError, ConfigError, DataError


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


def calibration_args(calibration: dict) -> dict:
  """Calibration values as jit arguments: global jax.Arrays stay, the rest
  become numpy (identical on every process, so jit treats them as replicated)."""
  return jax.tree.map(lambda v: v if isinstance(v, jax.Array) else np.asarray(v), calibration)


def jitted(method, name: str):
  """`jax.jit(getattr(method, name))`, built once per method object: the
  validation split, the test split and predict then reuse one compiled
  program (a fresh `jax.jit` of a bound method misses jit's cache)."""
  cache = method.__dict__.setdefault("_jitted", {})
  if name not in cache:
    cache[name] = jax.jit(getattr(method, name))
  return cache[name]


def score_split(config, method, state, calibration, mesh, records, data: DataAPI,
                keep_maps: bool = True, what: str = "scoring",
                pipelined: Optional[bool] = None) -> dict:
  """Score every record: -> {"image_score" [N], "anomaly_map" [N,H,W] (if keep_maps),
  "label" [N], "mask" [N,H,W] (if keep_maps), "index" [N]} in record order.
  Logs progress with an ETA (`what` names the job: "calibration", "evaluation").

  `pipelined`: batch i + 1 is dispatched (asynchronously) before the outputs
  of batch i are fetched, so the device scores while the host loads the next
  images and copies the previous results; one device-to-host transfer per
  batch, of the outputs that are kept. Same values either way. Default (None):
  on accelerators only; on a CPU the "device" is the host's own cores and
  dispatching ahead measured 0.81-1.01x (benchmarks/eval_throughput.py)."""
  if pipelined is None:
    pipelined = jax.default_backend() != "cpu"
  score_fn = jitted(method, "score")
  bs = int(config.input.eval_batch_size)
  progress = logging_utils.Progress(what, total=-(-len(records) // bs), unit="batches")
  mesh_lib.per_host_batch_size(bs, jax.device_count(), jax.process_count(),
                               "input.eval_batch_size")
  cal = calibration_args(calibration)
  parts = {k: [] for k in ("image_score", "anomaly_map", "label", "mask", "index")}

  def collect(host_batch, out):
    kept = {"image_score": out["image_score"]}
    if keep_maps:
      kept["anomaly_map"] = out["anomaly_map"]
    kept = _gather(kept)
    valid = _gather_local(host_batch["valid"]).astype(bool)
    parts["image_score"].append(np.asarray(kept["image_score"], np.float32)[valid])
    parts["index"].append(_gather_local(host_batch["index"])[valid])
    parts["label"].append(_gather_local(host_batch["label"])[valid])
    if keep_maps:
      parts["anomaly_map"].append(np.asarray(kept["anomaly_map"], np.float32)[valid])
      parts["mask"].append(_gather_local(host_batch["mask"])[valid])
    progress.update()

  pending = None
  for host_batch in data.eval_batches(config.input, records, global_batch_size=bs,
                                      process_index=jax.process_index(),
                                      process_count=jax.process_count()):
    out = score_fn(state, data.to_global(host_batch, mesh), cal)  # dispatched, not awaited
    if pending is not None:
      collect(*pending)
    pending = (host_batch, out)
    if not pipelined:
      collect(*pending)
      pending = None
  if pending is not None:
    collect(*pending)
  progress.done()
  res = {k: np.concatenate(v) for k, v in parts.items() if v}
  order = np.argsort(res["index"], kind="stable") if "index" in res else None
  return {k: v[order] for k, v in res.items()} if order is not None else res


def _method_calibration(config, method, state, mesh, splits, data) -> dict:
  """`method.calibrate` on the gathered host rows of `method.calibration_stats`
  over the validation split (padding dropped)."""
  if not method.calibrates:
    return {}
  fn = jitted(method, "calibration_stats")
  stats, cids = [], []
  bs = int(config.input.eval_batch_size)
  for b in data.eval_batches(config.input, splits.val, global_batch_size=bs,
                             process_index=jax.process_index(),
                             process_count=jax.process_count()):
    out = np.asarray(_gather(fn(state, data.to_global(b, mesh))))
    valid = _gather_local(b["valid"]).astype(bool)
    stats.append(out[valid])
    cids.append(_gather_local(b["category_id"]).astype(np.int64)[valid])
  if not stats:
    return method.calibrate(np.zeros((0,), np.float32), np.zeros((0,), np.int64)) or {}
  return method.calibrate(np.concatenate(stats), np.concatenate(cids)) or {}


def calibrate(config, workdir, method, state, mesh, splits, data,
              out_dir: Optional[str] = None) -> tuple[dict, Any]:
  """Method calibration + decision threshold on the validation split, saved as
  `calibration.json` in `out_dir` (default: the workdir, where predict reads it)."""
  from maskjax.eval import threshold
  calibration = _method_calibration(config, method, state, mesh, splits, data)
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
                "device": mesh_lib.describe_devices(), "describe": _facts(config, method),
                "threshold": _to_jsonable(stats),
                "config_phases": workdir_lib.config_phases(workdir),
                "stages_trained": train.trained_steps(workdir, method)}
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
    if config.eval.plots:
      _plots(config, out_dir, splits, test)
    last = max([v["steps"] or 0 for v in run_info["stages_trained"].values()] or [0])
    figures = sorted(glob.glob(os.path.join(out_dir, "**", "*.png"), recursive=True))[:4]
    logging_utils.log_evaluation(workdir, mean, per_category, step=last, images=figures)
    m = results["mean"]
    print(f"report: {md_path}")
    print("mean image AUROC {} | pixel AUROC {} | AUPRO {}".format(
        *(_fmt(m.get(k)) for k in ("image_auroc", "pixel_auroc", "aupro"))))
  return results


def _facts(config, method) -> dict:
  """What the report states about the run: the method's own facts, the init
  source of every module its paper starts from pretrained weights, the recipe doc."""
  from maskjax.methods import init_sources
  facts = dict(method.describe() or {})
  for module, src in init_sources(config).items():
    if src == "random init" and bool(config.model.allow_random_init):
      src += " (model.allow_random_init=True; the paper starts from pretrained weights)"
    facts[f"init of {module}"] = src
  facts["recipe"] = (f"docs/RECIPES.md, section {method.name}: each setting as the paper, "
                     "this config and the public PyTorch code have it")
  return facts


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
