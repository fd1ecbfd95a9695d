"""Decision threshold and score normalisation from validation normals.

The validation split holds only normal images (held out from the training
normals), so F1-optimal thresholds cannot be fitted on it. The decision
threshold is instead a quantile of the normal validation image scores
(``config.eval.threshold_quantile``, default 0.99: about 1% of normal images
are flagged). Quantiles use NumPy's default linear interpolation.

Normalisation is a min-max scaling whose ends are the lowest normal
validation score and the threshold::

    normalize(s) = (s - min) / (threshold - min)

so 0 is the lowest validation score, 1.0 is the decision threshold, and
``decide`` flags ``score > threshold`` (equivalently ``normalize(s) > 1``).
Values are not clipped (test scores may fall outside the validation range).
When pixel maps are given, a pixel threshold (the same quantile over all
validation pixels) is fitted too; plots use it for the thresholded prediction.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def fit(val_scores: Any, quantile: float = 0.99, val_maps: Any = None) -> dict:
  """Statistics of normal validation scores -> {threshold, quantile, mean, std, min, max, count}.

  val_scores [N] image scores of normal validation images; val_maps [N,H,W]
  optional, adds pixel_threshold / pixel_min / pixel_max. Plain floats (JSON-able).
  """
  if not 0.0 <= float(quantile) <= 1.0:
    raise ValueError(f"threshold quantile {quantile} must be in [0, 1] "
                     "(config.eval.threshold_quantile)")
  s = np.asarray(val_scores, np.float64).reshape(-1)
  if s.size == 0:
    raise ValueError("no validation scores to fit a threshold on: the validation split of "
                     "training normals is empty (raise config.input.val_fraction)")
  if not np.all(np.isfinite(s)):
    raise ValueError(f"{int(np.sum(~np.isfinite(s)))} of {s.size} validation scores are not "
                     "finite; cannot fit a threshold")
  out = {"threshold": float(np.quantile(s, quantile)), "quantile": float(quantile),
         "mean": float(s.mean()), "std": float(s.std()), "min": float(s.min()),
         "max": float(s.max()), "count": int(s.size)}
  if val_maps is not None:
    m = np.asarray(val_maps, np.float32).reshape(-1)
    out.update(pixel_threshold=float(np.quantile(m, quantile)), pixel_min=float(m.min()),
               pixel_max=float(m.max()))
  return out


def normalize(scores: Any, stats: dict) -> np.ndarray:
  """(s - min) / (threshold - min): 0 at the lowest validation score, 1 at the threshold."""
  s = np.asarray(scores, np.float64)
  span = float(stats["threshold"]) - float(stats["min"])
  if span <= 0:  # all validation scores equal: keep the threshold at 1.0
    span = max(abs(float(stats["threshold"])), 1.0) * 1e-12
  return (s - float(stats["min"])) / span


def decide(scores: Any, stats: dict) -> np.ndarray:
  """True where the image is anomalous: score > threshold."""
  return np.asarray(scores, np.float64) > float(stats["threshold"])


def for_category(stats: dict, category: str | None) -> tuple[dict, str]:
  """(threshold statistics, source) for images of `category`: the category's
  own fit when calibration made one ("category"), else the global one ("global")."""
  per = stats.get("per_category") or {}
  if category is not None and category in per:
    return per[category], "category"
  return stats, "global"
