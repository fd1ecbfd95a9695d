"""Exact anomaly-detection metrics: AUROC, AUPRO, F1-max, average precision.

Conventions
-----------
* Scores: higher = more anomalous. Image scores are [N]; anomaly maps are
  [N, H, W]. Float32 and float64 are used as given (no down-cast, so distinct
  scores stay distinct); integer scores are cast to float64. NaN scores are an
  error.
* Labels: image labels [N] in {0, 1}; ground-truth masks [N, H, W], any
  non-zero value is a defect pixel.
* Exact: no binning. Every distinct score is a threshold, and tied scores form
  one point of the curve, exactly as scikit-learn's ``roc_curve`` /
  ``precision_recall_curve`` group them (predict anomalous when
  ``score >= threshold``).
* Undefined metrics: when the positives or the negatives are missing the
  metric is ``None`` and ``undefined[metric]`` holds the reason (never 0.5).

How the sweep stays small
-------------------------
Between two consecutive distinct *anomalous* scores only normal samples
enter the prediction: TP (and PRO) stay flat while FP grows. On the ROC and
PRO curves those points are collinear (horizontal), precision only drops
(so F1 cannot peak there) and recall does not change (so they add nothing to
average precision). Each curve is therefore evaluated exactly at the distinct
anomalous scores ``t``, with two points per ``t``: FP counted over normals
``> t`` (just before ``t`` enters) and ``>= t`` (just after). This is the same
curve as a global sort of all pixels, computed from one in-place float sort of
the normal scores plus an argsort of the (usually few) anomalous ones, so a
full MVTec AD test set (1,725 x 256 x 256 = 113 M pixels) needs a few hundred
MB beyond its inputs.

AUPRO follows MVTec AD's evaluation (and anomalib >= 2.3): connected
components of each ground-truth mask with 8-connectivity (``scipy.ndimage.label``
with a 3x3 structure), FPR = normal pixels (over all images) with
``score >= t`` / all normal pixels, PRO(t) = mean over all regions of the
fraction of the region with ``score >= t``, the curve starts at (0, 0), is cut
at ``fpr_limit`` with linear interpolation of the crossing, integrated with the
trapezoid rule and divided by ``fpr_limit``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import numpy as np
from scipy import ndimage

METRICS = ("image_auroc", "pixel_auroc", "aupro", "image_f1_max", "pixel_f1_max",
           "image_ap", "pixel_ap")

_STRUCTURE_8 = np.ones((3, 3), dtype=bool)


class UndefinedMetric(ValueError):
  """A metric cannot be computed on this data (e.g. no anomalous samples)."""


# --------------------------------------------------------------------------
# input checks


def _as_scores(x: Any, name: str) -> np.ndarray:
  a = np.asarray(x)
  if a.dtype not in (np.float32, np.float64):
    a = a.astype(np.float64)
  n_nan = int(np.isnan(a).sum()) if a.size else 0
  if n_nan:
    raise ValueError(f"{name} holds {n_nan} NaN value(s) of {a.size}; scores must be finite "
                     "or +-inf (check the method's score function)")
  return a


def _as_labels(x: Any, name: str) -> np.ndarray:
  a = np.asarray(x)
  return a if a.dtype == bool else (a != 0)


def _check_same_shape(a: np.ndarray, b: np.ndarray, names: str) -> None:
  if a.shape != b.shape:
    raise ValueError(f"{names}: shapes differ, {a.shape} vs {b.shape}; they must match "
                     "element for element")


# --------------------------------------------------------------------------
# the sweep over distinct anomalous scores


@dataclasses.dataclass
class Sweep:
  """Counts at every distinct score of the positives (descending).

  thresholds [K]: distinct positive scores, descending.
  tp [K]: positives with score >= threshold.
  fp_ge [K] / fp_gt [K]: negatives with score >= / > threshold.
  n_pos, n_neg: totals.
  pro [K] (AUPRO only): mean per-region overlap at score >= threshold.
  """
  thresholds: np.ndarray
  tp: np.ndarray
  fp_ge: np.ndarray
  fp_gt: np.ndarray
  n_pos: int
  n_neg: int
  pro: np.ndarray | None = None
  n_regions: int = 0


def _sweep(pos_scores: np.ndarray, neg_sorted: np.ndarray,
           pos_weights: np.ndarray | None = None) -> Sweep:
  """pos_scores: 1-D positive scores; neg_sorted: ascending negative scores."""
  order = np.argsort(pos_scores, kind="stable")[::-1]
  s = pos_scores[order]
  # last index of every run of equal scores (descending order)
  ends = np.flatnonzero(s[1:] != s[:-1])
  ends = np.append(ends, s.size - 1)
  thresholds = s[ends]
  tp = (ends + 1).astype(np.int64)
  n_neg = int(neg_sorted.size)
  # both come from one score array, so they share a dtype: no rounding merges values
  fp_ge = n_neg - np.searchsorted(neg_sorted, thresholds, side="left").astype(np.int64)
  fp_gt = n_neg - np.searchsorted(neg_sorted, thresholds, side="right").astype(np.int64)
  pro = None
  if pos_weights is not None:
    pro = np.cumsum(pos_weights[order], dtype=np.float64)[ends]
    pro[-1] = 1.0  # every region fully covered at the lowest threshold (no rounding drift)
  return Sweep(thresholds, tp, fp_ge, fp_gt, int(s.size), n_neg, pro)


def _split_sorted(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Positive scores (flat, original order) and ascending negative scores."""
  flat_s = scores.reshape(-1)
  flat_l = labels.reshape(-1)
  pos = flat_s[flat_l]
  neg = flat_s[~flat_l]  # a fresh copy, sorted in place
  neg.sort()
  return pos, neg


def _undefined_reason(n_pos: int, n_neg: int, what: str) -> str | None:
  if n_pos == 0 and n_neg == 0:
    return f"no {what} to score"
  if n_pos == 0:
    return f"test set has no anomalous {what}"
  if n_neg == 0:
    return f"test set has no normal {what}"
  return None


# --------------------------------------------------------------------------
# curves and scalar metrics from a sweep


def _roc_points(sw: Sweep) -> tuple[np.ndarray, np.ndarray]:
  """(fpr, tpr) with (0, 0) first and (1, 1) last; collinear points kept."""
  tp_prev = np.concatenate([[0], sw.tp[:-1]])
  fp = np.empty(2 * sw.tp.size, np.int64)
  tp = np.empty(2 * sw.tp.size, np.int64)
  fp[0::2], fp[1::2] = sw.fp_gt, sw.fp_ge
  tp[0::2], tp[1::2] = tp_prev, sw.tp
  fpr = np.concatenate([[0.0], fp / sw.n_neg, [1.0]])
  tpr = np.concatenate([[0.0], tp / sw.n_pos, [1.0]])
  return fpr, tpr


def _auroc(sw: Sweep) -> float:
  fpr, tpr = _roc_points(sw)
  return float(np.trapezoid(tpr, fpr))


def _ap(sw: Sweep) -> float:
  """sklearn's average_precision_score: sum_k (R_k - R_{k-1}) P_k."""
  precision = sw.tp / (sw.tp + sw.fp_ge)
  d_recall = np.diff(np.concatenate([[0], sw.tp])) / sw.n_pos
  return float(np.sum(d_recall * precision))


def _f1_max(sw: Sweep) -> tuple[float, float]:
  """(max F1, its threshold); the highest threshold wins ties."""
  precision = sw.tp / (sw.tp + sw.fp_ge)
  recall = sw.tp / sw.n_pos
  denom = precision + recall
  f1 = np.where(denom > 0, 2 * precision * recall / np.where(denom > 0, denom, 1), 0.0)
  k = int(np.argmax(f1))
  return float(f1[k]), float(sw.thresholds[k])


def _pro_points(sw: Sweep) -> tuple[np.ndarray, np.ndarray]:
  """(fpr, pro) with (0, 0) first and (1, 1) last."""
  pro_prev = np.concatenate([[0.0], sw.pro[:-1]])
  fp = np.empty(2 * sw.pro.size, np.int64)
  pro = np.empty(2 * sw.pro.size, np.float64)
  fp[0::2], fp[1::2] = sw.fp_gt, sw.fp_ge
  pro[0::2], pro[1::2] = pro_prev, sw.pro
  fpr = np.concatenate([[0.0], fp / sw.n_neg, [1.0]])
  pro = np.concatenate([[0.0], pro, [1.0]])
  return fpr, pro


def partial_area(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
  """Trapezoid area under (x, y) for x in [0, x_max] (x non-decreasing, from 0);
  the crossing of x_max is linearly interpolated."""
  j = int(np.searchsorted(x, x_max, side="right"))  # points with x <= x_max
  xs, ys = x[:j], y[:j]
  if j < x.size and (j == 0 or xs[-1] < x_max):
    x0, y0, x1, y1 = x[j - 1], y[j - 1], x[j], y[j]
    y_cut = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
    xs = np.append(xs, x_max)
    ys = np.append(ys, y_cut)
  return float(np.trapezoid(ys, xs))


# --------------------------------------------------------------------------
# public scalar metrics (raise UndefinedMetric when undefined)


def _binary_sweep(scores: Any, labels: Any, what: str) -> Sweep:
  s = _as_scores(scores, f"{what} scores")
  lab = _as_labels(labels, f"{what} labels")
  _check_same_shape(s, lab, f"{what} scores / labels")
  pos, neg = _split_sorted(s, lab)
  reason = _undefined_reason(pos.size, neg.size, what)
  if reason:
    raise UndefinedMetric(reason)
  return _sweep(pos, neg)


def auroc(scores: Any, labels: Any) -> float:
  """Exact ROC AUC (equals sklearn ``roc_auc_score``); any array shape."""
  return _auroc(_binary_sweep(scores, labels, "samples"))


def image_auroc(image_scores: Any, image_labels: Any) -> float:
  """Image-level ROC AUC over [N] scores and {0,1} labels."""
  return _auroc(_binary_sweep(image_scores, image_labels, "images"))


def pixel_auroc(maps: Any, masks: Any) -> float:
  """Pixel-level ROC AUC over all pixels of [N,H,W] maps and masks."""
  return _auroc(_binary_sweep(maps, masks, "pixels"))


def average_precision(scores: Any, labels: Any) -> float:
  """Equals sklearn ``average_precision_score`` (step-wise, no interpolation)."""
  return _ap(_binary_sweep(scores, labels, "samples"))


def f1_max(scores: Any, labels: Any) -> tuple[float, float]:
  """(max over thresholds of 2PR/(P+R), threshold); ``precision_recall_curve`` points."""
  return _f1_max(_binary_sweep(scores, labels, "samples"))


def roc_curve(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
  """(fpr, tpr) from (0,0) to (1,1) with the exact area; may hold collinear points."""
  return _roc_points(_binary_sweep(scores, labels, "samples"))


def _region_sweep(maps: Any, masks: Any) -> Sweep:
  m = _as_scores(maps, "anomaly maps")
  g = _as_labels(masks, "ground-truth masks")
  _check_same_shape(m, g, "anomaly maps / masks")
  if m.ndim != 3:
    raise ValueError(f"anomaly maps must be [N, H, W], got shape {m.shape}")
  pos_scores, weights, n_regions = [], [], 0
  for i in range(m.shape[0]):
    gi = g[i]
    if not gi.any():
      continue
    lab, n = ndimage.label(gi, structure=_STRUCTURE_8)
    sizes = np.bincount(lab.ravel())
    lab_pos = lab[gi]
    pos_scores.append(m[i][gi])
    weights.append(1.0 / sizes[lab_pos])
    n_regions += n
  n_pos = int(sum(p.size for p in pos_scores))
  neg = m[~g]
  reason = _undefined_reason(n_pos, neg.size, "pixels")
  if reason:
    raise UndefinedMetric(reason)
  neg.sort()
  w = np.concatenate(weights) / n_regions
  sw = _sweep(np.concatenate(pos_scores), neg, w)
  sw.n_regions = n_regions
  return sw


def aupro(maps: Any, masks: Any, fpr_limit: float = 0.3) -> float:
  """Normalised area under the PRO curve up to ``fpr_limit`` (MVTec AD definition)."""
  if not 0.0 < fpr_limit <= 1.0:
    raise ValueError(f"fpr_limit={fpr_limit} must be in (0, 1]")
  fpr, pro = _pro_points(_region_sweep(maps, masks))
  return partial_area(fpr, pro, fpr_limit) / fpr_limit


def pro_curve(maps: Any, masks: Any) -> tuple[np.ndarray, np.ndarray]:
  """(fpr, pro) from (0,0) to (1,1), exact; may hold collinear points."""
  return _pro_points(_region_sweep(maps, masks))


def downsample_curve(x: np.ndarray, y: np.ndarray, max_points: int = 2000
                     ) -> tuple[np.ndarray, np.ndarray]:
  """Subsample a curve for plotting, keeping the first and last points."""
  if x.size <= max_points:
    return x, y
  idx = np.unique(np.linspace(0, x.size - 1, max_points).round().astype(np.int64))
  return x[idx], y[idx]


# --------------------------------------------------------------------------
# everything for one category


def pixel_metrics(maps: Any, masks: Any, *, fpr_limit: float = 0.3) -> dict:
  """Pixel AUROC, AP, F1-max (+ threshold) and AUPRO from one sweep.

  maps, masks [N,H,W]. Returns {"pixel_auroc", "pixel_ap", "pixel_f1_max",
  "pixel_f1_threshold", "aupro", "num_anomalous_pixels", "num_regions",
  "undefined": {metric: reason}}; undefined metrics are None.
  """
  if not 0.0 < fpr_limit <= 1.0:
    raise ValueError(f"fpr_limit={fpr_limit} must be in (0, 1]")
  keys = ("pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro")
  out: dict[str, Any] = {k: None for k in keys}
  out["pixel_f1_threshold"] = None
  try:
    sw = _region_sweep(maps, masks)
  except UndefinedMetric as e:
    g = _as_labels(masks, "ground-truth masks")
    out.update(num_anomalous_pixels=int(g.sum()), num_regions=count_regions(g),
               undefined={k: str(e) for k in keys})
    return out
  out["pixel_auroc"] = _auroc(sw)
  out["pixel_ap"] = _ap(sw)
  out["pixel_f1_max"], out["pixel_f1_threshold"] = _f1_max(sw)
  fpr, pro = _pro_points(sw)
  out["aupro"] = partial_area(fpr, pro, fpr_limit) / fpr_limit
  out.update(num_anomalous_pixels=sw.n_pos, num_regions=sw.n_regions, undefined={})
  return out


def evaluate_category(image_scores: Any, image_labels: Any, maps: Any = None, masks: Any = None,
                      *, fpr_limit: float = 0.3) -> dict:
  """All metrics of one category's test set.

  image_scores [N], image_labels [N] in {0,1}; maps, masks [N,H,W] (or None
  when the method has no anomaly maps: pixel metrics are then undefined).
  Returns {metric: float | None for metric in METRICS} plus
  "image_f1_threshold", "pixel_f1_threshold" (score at F1-max, or None),
  "num_images", "num_anomalous_images", "num_pixels", "num_anomalous_pixels",
  "num_regions" and "undefined": {metric: reason}.
  """
  out: dict[str, Any] = {k: None for k in METRICS}
  out["image_f1_threshold"] = None
  out["pixel_f1_threshold"] = None
  undefined: dict[str, str] = {}
  lab = _as_labels(image_labels, "image labels").reshape(-1)
  out["num_images"] = int(lab.size)
  out["num_anomalous_images"] = int(lab.sum())
  try:
    sw = _binary_sweep(image_scores, lab, "images")
    out["image_auroc"] = _auroc(sw)
    out["image_ap"] = _ap(sw)
    out["image_f1_max"], out["image_f1_threshold"] = _f1_max(sw)
  except UndefinedMetric as e:
    for k in ("image_auroc", "image_ap", "image_f1_max"):
      undefined[k] = str(e)

  pixel_keys = ("pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro")
  if maps is None or masks is None:
    for k in pixel_keys:
      undefined[k] = "no anomaly maps / masks were given"
    out.update(num_pixels=0, num_anomalous_pixels=0, num_regions=0)
  else:
    m = _as_scores(maps, "anomaly maps")
    g = _as_labels(masks, "ground-truth masks")
    _check_same_shape(m, g, "anomaly maps / masks")
    if m.ndim != 3:
      raise ValueError(f"anomaly maps must be [N, H, W], got shape {m.shape}")
    if m.shape[0] != lab.size:
      raise ValueError(f"{m.shape[0]} anomaly maps for {lab.size} image labels; one map per image")
    out["num_pixels"] = int(g.size)
    pix = pixel_metrics(m, g, fpr_limit=fpr_limit)
    undefined.update(pix.pop("undefined"))
    out.update(pix)
  out["undefined"] = undefined
  return out


def count_regions(masks: Any) -> int:
  """Connected ground-truth regions (8-connectivity) summed over images."""
  g = _as_labels(masks, "ground-truth masks")
  return int(sum(ndimage.label(gi, structure=_STRUCTURE_8)[1] for gi in g if gi.any()))


def mean_over_categories(per_category: Mapping[str, Mapping[str, Any]],
                         metrics: tuple[str, ...] = METRICS) -> dict:
  """{metric: {"mean": float | None, "count": n averaged, "of": n categories}}.

  Undefined (None) entries are skipped; the mean is None when none is defined.
  """
  out = {}
  for k in metrics:
    vals = [float(v[k]) for v in per_category.values()
            if v.get(k) is not None and math.isfinite(float(v[k]))]
    out[k] = {"mean": float(np.mean(vals)) if vals else None, "count": len(vals),
              "of": len(per_category)}
  return out
