"""The Python API: configs by name, training, and a trained detector.

    import maskjax
    config = maskjax.get_config("riad:demo", train={"steps": 50})
    run = maskjax.fit(config, "runs/riad")           # trains (or resumes) and evaluates
    run.metrics["image_auroc"], run.report
    det = maskjax.Detector.load("runs/riad")         # the config comes from the run
    for p in det.predict("photos/*.png"):             # file, folder, glob, list, PIL, array
      p.score, p.normalized_score, p.decision, p.anomaly_map.shape, p.category
    det.evaluate()                                    # the run's test split (or data_dir=...)
    exp = maskjax.Detector.load_exported("export/")  # jax + numpy only (maskjax.exported)
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import numpy as np


def get_config(name: str, **overrides):
  """A method config by name ("riad", "mala:demo") or path ("configs/x.py:demo"),
  with overrides as sections (`train={"steps": 4}`) or dotted keys
  (`**{"train.steps": 4}`); an unknown key is a ConfigError naming it."""
  from maskjax import configs
  return configs.get_config(name, **overrides)


@dataclasses.dataclass
class Run:
  """What `fit` returns."""
  workdir: str
  metrics: dict            # mean over categories: image_auroc, pixel_auroc, aupro, ...
  per_category: dict
  report: Optional[str]    # results.md
  results_json: Optional[str]


def fit(config, workdir: str, *, allow_config_change: bool = False) -> Run:
  """Train every stage (resuming a run in `workdir`), then evaluate."""
  from maskjax import runner
  res = runner.run(config, workdir, mode="train", allow_config_change=allow_config_change)
  return Run(workdir=os.path.abspath(workdir), metrics=res.get("mean", {}),
             per_category=res.get("per_category", {}), report=res.get("report_md"),
             results_json=res.get("report_json"))


@dataclasses.dataclass
class Prediction:
  path: Optional[str]
  category: Optional[str]
  score: float
  normalized_score: float     # 0 = lowest validation score, 1 = the decision threshold
  decision: bool              # anomalous
  anomaly_map: np.ndarray     # at the image's original size
  threshold: str              # which threshold decided: "category", "folder" or "global"


class Detector:
  """A trained run, ready to score images. `Detector.load(workdir)`."""

  def __init__(self, config, workdir, method, state, mesh, calibration, stats):
    self.config, self.workdir, self.method, self.state = config, workdir, method, state
    self.mesh, self.calibration, self.stats = mesh, calibration, stats
    self.image_size = int(config.input.image_size)
    # > 0: score also needs each image at this side ("image_source", ACA's test scales)
    self.source_size = int(config.input.source_size)
    self.categories = list(stats.get("categories") or config.input.categories)
    self._score = None

  @classmethod
  def load(cls, workdir: str, config=None) -> "Detector":
    from maskjax import data_info
    from maskjax import evaluate as evaluate_lib
    from maskjax import mesh as mesh_lib
    from maskjax import train
    from maskjax import workdir as workdir_lib
    from maskjax.methods import build_method
    from maskjax import per_category
    workdir = os.path.abspath(workdir)
    per_category.refuse_single_model_use(workdir, "load")
    config = config if config is not None else workdir_lib.load_run_config(workdir)
    method = build_method(config, data_info.for_workdir(config, workdir))
    method.workdir = workdir
    mesh = mesh_lib.make_mesh(config.mesh)
    state = train.restore_final_state(config, workdir, method, mesh)
    calibration, stats = evaluate_lib.load_calibration(workdir)
    return cls(config, workdir, method, state, mesh, evaluate_lib.calibration_args(calibration), stats)

  @staticmethod
  def load_exported(out_dir: str):
    """An exported detector (`python -m maskjax.export`), run with jax alone."""
    from maskjax.exported import ExportedDetector
    return ExportedDetector(out_dir)

  # -- scoring -------------------------------------------------------------------
  def score(self, images: np.ndarray, category_ids=None, *, progress: str = "",
            sources: Optional[np.ndarray] = None) -> dict:
    """Prepared float32 [N, S, S, 3] images -> {"image_score" [N], "anomaly_map" [N, S, S]}.
    `progress`: a job name to log progress per batch with an ETA under ("" = quiet).
    `sources`: float32 [N, T, T, 3], the same images prepared at T =
    `config.input.source_size` (`prepare.to_model_input(item, T)`); needed
    exactly when that key is > 0."""
    import jax

    from maskjax import logging_utils
    from maskjax.errors import ConfigError
    if self.source_size and sources is None:
      raise ConfigError(f"this run has config.input.source_size={self.source_size}: score() "
                        f"needs sources=, the images prepared at {self.source_size} px as well "
                        "(Detector.predict prepares both)")
    if sources is not None:
      sources = np.asarray(sources, np.float32)
      t = self.source_size
      if not t:
        raise ConfigError("sources= given but this run has config.input.source_size=0 "
                          "(its score reads no image_source)")
      if sources.shape != (len(images), t, t, 3):
        raise ConfigError(f"sources has shape {sources.shape}; config.input.source_size={t} "
                          f"expects [{len(images)}, {t}, {t}, 3]")
    if self._score is None:
      from maskjax.evaluate import jitted
      self._score = jitted(self.method, "score")
    images = np.asarray(images, np.float32)
    n = images.shape[0]
    cats = np.zeros((n,), np.int32) if category_ids is None else np.asarray(category_ids,
                                                                           np.int32)
    bs = int(self.config.input.eval_batch_size)
    scores, maps = [], []
    bar = logging_utils.Progress(progress, total=-(-n // bs), unit="batches") if progress else None
    for start in range(0, n, bs):
      chunk = images[start:start + bs]
      m = chunk.shape[0]
      pad = bs - m
      batch = {"image": np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], np.float32)]),
               "mask": np.zeros((bs, self.image_size, self.image_size), np.float32),
               "label": np.zeros((bs,), np.int32),
               "category_id": np.concatenate([np.maximum(cats[start:start + bs], 0),
                                              np.zeros((pad,), np.int32)]).astype(np.int32),
               "valid": np.arange(bs) < m, "index": np.arange(bs, dtype=np.int32)}
      if sources is not None:
        src = sources[start:start + bs]
        batch["image_source"] = np.concatenate([src, np.zeros((pad,) + src.shape[1:],
                                                              np.float32)])
      out = jax.device_get(self._score(self.state, batch, self.calibration))
      scores.append(np.asarray(out["image_score"], np.float32)[:m])
      maps.append(np.asarray(out["anomaly_map"], np.float32)[:m])
      if bar:
        bar.update()
    if bar:
      bar.done()
    return {"image_score": np.concatenate(scores), "anomaly_map": np.concatenate(maps)}

  def predict(self, inputs: Any, category: Optional[str] = None, *,
              progress: str = "") -> list[Prediction]:
    """Score images given as a file, folder, glob, list of paths, PIL image or array
    (`progress`: log per-batch progress under that name)."""
    from maskjax.data import prepare
    from maskjax.eval import threshold
    items = prepare.collect(inputs)
    cats = [prepare.category_for(it, category, self.categories) for it in items]
    arrays = np.stack([prepare.to_model_input(it, self.image_size) for it in items])
    sources = (np.stack([prepare.to_model_input(it, self.source_size) for it in items])
               if self.source_size else None)
    ids = [self.categories.index(c) if c is not None else -1 for c, _ in cats]
    out = self.score(arrays, ids, progress=progress, sources=sources)
    preds = []
    for i, it in enumerate(items):
      cat, source = cats[i]
      stats, used = threshold.for_category(self.stats, cat)
      s = float(out["image_score"][i])
      preds.append(Prediction(
          path=it.path, category=cat, score=s,
          normalized_score=float(threshold.normalize([s], stats)[0]),
          decision=bool(threshold.decide([s], stats)[0]),
          anomaly_map=prepare.to_original_size(out["anomaly_map"][i], it.size),
          threshold=source if used == "category" else "global"))
    return preds

  def evaluate(self, data_dir: Optional[str] = None, output_dir: Optional[str] = None) -> dict:
    """Metrics on the test split of the run's dataset, or of `data_dir` (same
    layout and categories); the report goes to `output_dir` (default DIR/eval)."""
    from maskjax import runner
    config = self.config
    if data_dir is not None:
      config = config.copy_and_resolve_references()
      config.input.data_dir = data_dir
      if output_dir is None:  # keep the run's own report
        name = os.path.basename(os.path.normpath(data_dir)) or "data"
        output_dir = os.path.join(self.workdir, f"eval_{name}")
    return runner.run(config, self.workdir, mode="eval", output_dir=output_dir)


def export_detector(workdir: str, out_dir: str, platforms=("cpu", "cuda")) -> dict:
  """`python -m maskjax.export` from Python; returns the export's metadata."""
  from maskjax import export
  return export.export_run(workdir, out_dir, platforms=tuple(platforms))


def demo_images(n: int = 2, category: Optional[str] = None, source: str = "photos") -> list[str]:
  """Paths of `n` test images (defective first) of a demo category (default:
  the first) of the embedded demo data `source` (generated on first use)."""
  from maskjax.data import demo
  root = demo.demo_root(source=source)
  cats = sorted(c for c in os.listdir(root) if os.path.isdir(os.path.join(root, c, "test")))
  cat = category or cats[0]
  test = os.path.join(root, cat, "test")
  kinds = sorted(os.listdir(test), key=lambda k: (k == "good", k))
  paths = [os.path.join(test, k, f) for k in kinds for f in sorted(os.listdir(os.path.join(test, k)))]
  return paths[:n]
