"""Prediction with a trained run on an image, a folder or a glob: per-image
scores (`scores.csv`) and overlays scaled by the calibrated thresholds."""
from __future__ import annotations

import csv
import os
from typing import Optional

import jax
import numpy as np

from maskjax import evaluate as evaluate_lib
from maskjax import fileio, logging_utils
from maskjax.errors import ConfigError


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
  calibration, stats = evaluate_lib.load_calibration(workdir)
  out_dir = out_dir or new_predict_dir(workdir)
  if jax.process_index() == 0:
    fileio.ensure_writable_dir(out_dir, "--output_dir")
  det = api.Detector(config, workdir, method, state, mesh, evaluate_lib.calibration_args(calibration), stats)
  logging_utils.info("predict: scoring %d image(s) with the model of %s", len(items), workdir)
  preds = det.predict([it.path if it.path else it.array for it in items], category=category,
                      progress="predict (scoring)")
  if jax.process_index() == 0:
    with fileio.atomic_open(os.path.join(out_dir, "scores.csv"), "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["path", "category", "threshold", "score", "normalized_score", "anomalous"])
      for p in preds:
        w.writerow([p.path or "", p.category or "", p.threshold, f"{p.score:.6g}",
                    f"{p.normalized_score:.6g}", int(p.decision)])
    pixel_thr = float(stats.get("pixel_threshold") or 0.0)
    bar = logging_utils.Progress("predict (overlays)", total=len(items), unit="images",
                                 compiles=False)
    for i, (it, p) in enumerate(zip(items, preds)):
      image = (np.asarray(_original_rgb(it.path), np.float32) / 255.0 if it.path else
               prepare.as_float_rgb(it.array))
      plots.prediction_overlay(
          os.path.join(out_dir, output_name(p.path, i) + "_overlay.png"), image=image,
          anomaly_map=p.anomaly_map, pixel_threshold=pixel_thr,
          title=f"{output_name(p.path, i)}: score {p.score:.4g} "
                f"({p.normalized_score:.2f} x threshold, {p.threshold}) -> "
                + ("ANOMALOUS" if p.decision else "normal"))
      bar.update()
    bar.done()
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
