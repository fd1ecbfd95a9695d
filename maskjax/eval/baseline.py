"""The trivial reference detector shown beside every evaluation.

Per-pixel Gaussian baseline: fitted on a category's training normals at the
run's resolution (per pixel and channel mean `mu` and standard deviation
`sd` of the normals), then for an image x

  map   = box21( mean_over_channels( |x - mu| / (sd + EPS) ) )
  score = max(map)

`box21` is a 21 x 21 box filter (mean; borders mirrored, scipy's "reflect" =
NumPy's "symmetric" padding). EPS = 0.01 (on the [0, 1] intensity scale) keeps
pixels that never vary in the normals (a flat sky) from dividing by zero.
It has no parameters beyond these, takes seconds, and any learned detector
that is worth its training should beat it: a method whose image or pixel
AUROC is not at least `MARGIN` above it on a category is marked in the
reports (`below_baseline`).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

NAME = "gaussian_per_pixel"
DESCRIPTION = ("per-pixel Gaussian of the training normals: map = box21(mean_c |x - mean| / "
               "(std + 0.01)), image score = max(map)")
BOX = 21
EPS = 0.01
# a method must beat the baseline by this much (AUROC, fraction) to count as better
MARGIN = 0.02
COMPARED = ("image_auroc", "pixel_auroc")


def fit(normals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """normals float [N, H, W, C] -> (mean [H, W, C], std [H, W, C]) (population std)."""
  x = np.asarray(normals, np.float64)
  if x.ndim != 4 or x.shape[0] < 1:
    raise ValueError(f"fit needs [N, H, W, C] normals, got shape {x.shape}")
  return x.mean(0), x.std(0)


def anomaly_maps(images: np.ndarray, mean: np.ndarray, std: np.ndarray, box: int = BOX,
                 eps: float = EPS) -> np.ndarray:
  """images float [N, H, W, C] -> maps float32 [N, H, W]."""
  x = np.asarray(images, np.float64)
  z = (np.abs(x - mean[None]) / (std[None] + eps)).mean(-1)
  if box > 1:
    z = ndimage.uniform_filter(z, size=(1, box, box), mode="reflect")
  return z.astype(np.float32)


def image_scores(maps: np.ndarray) -> np.ndarray:
  return np.asarray(maps).reshape(len(maps), -1).max(-1)


def _load(records, size):
  from maskjax.data import images
  return np.stack([images.load_image(r.path, size) for r in records])


def _masks(records, size):
  from maskjax.data import images
  return np.stack([images.load_mask(r.mask_path, size) if r.mask_path and r.label
                   else np.zeros((size, size), np.float32) for r in records])


def evaluate(normal_records: Sequence, test_records: Sequence, image_size: int,
             categories: Sequence[str] | None = None) -> dict:
  """{category: `metrics.evaluate_category` dict} of the baseline, fitted per
  category on `normal_records` (the training normals, records with `.path`,
  `.category`) and scored on `test_records` (`.path`, `.mask_path`, `.label`)."""
  from maskjax.eval import metrics as metrics_lib
  cats = list(categories) if categories is not None else sorted({r.category for r in test_records})
  out = {}
  for cat in cats:
    train = [r for r in normal_records if r.category == cat]
    test = [r for r in test_records if r.category == cat]
    if not train or not test:
      continue
    mean, std = fit(_load(train, image_size))
    maps = anomaly_maps(_load(test, image_size), mean, std)
    labels = np.asarray([int(r.label) for r in test], np.int32)
    out[cat] = metrics_lib.evaluate_category(image_scores(maps), labels, maps,
                                             _masks(test, image_size))
  return out


def compare(per_category: Mapping[str, Mapping], baseline: Mapping[str, Mapping],
            margin: float = MARGIN, metrics: Sequence[str] = COMPARED) -> dict[str, list[str]]:
  """{category: [metrics where the method is not at least `margin` above the
  baseline]}, for the categories that have a baseline; [] = beats it everywhere.
  A metric undefined for the method but defined for the baseline counts as not beaten."""
  out = {}
  for cat, ours in per_category.items():
    base = baseline.get(cat)
    if not base:
      continue
    bad = []
    for k in metrics:
      b, o = base.get(k), ours.get(k)
      if b is None:
        continue
      if o is None or o < b + margin:
        bad.append(k)
    out[cat] = bad
  return out


def block(per_category: Mapping[str, Mapping], baseline: Mapping[str, Mapping],
          margin: float = MARGIN) -> dict:
  """The "baseline" entry of results.json."""
  from maskjax.eval import metrics as metrics_lib
  keep = tuple(metrics_lib.METRICS)
  per = {c: {k: v.get(k) for k in keep} for c, v in baseline.items()}
  mean = {k: v["mean"] for k, v in metrics_lib.mean_over_categories(dict(baseline)).items()}
  return {"name": NAME, "description": DESCRIPTION, "margin": margin, "compared": list(COMPARED),
          "per_category": per, "mean": mean,
          "below_baseline": compare(per_category, baseline, margin)}
