"""Exact metrics against independent computations (sklearn, a plain per-threshold AUPRO)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn import metrics as skm

from maskjax.eval import metrics


def _reference_aupro(maps, masks, fpr_limit=0.3):
  """Plain AUPRO: label regions, loop over every distinct threshold, interp, trapz."""
  maps = np.asarray(maps, np.float64)
  masks = np.asarray(masks) > 0
  regions = []
  for i in range(maps.shape[0]):
    lab, n = ndimage.label(masks[i], structure=np.ones((3, 3)))
    for r in range(1, n + 1):
      regions.append((i, lab == r))
  normal = ~masks
  n_normal = normal.sum()
  fprs, pros = [0.0], [0.0]
  for t in np.unique(maps)[::-1]:
    pred = maps >= t
    fprs.append((pred & normal).sum() / n_normal)
    pros.append(np.mean([(pred[i] & reg).sum() / reg.sum() for i, reg in regions]))
  fprs, pros = np.array(fprs), np.array(pros)
  y_cut = np.interp(fpr_limit, fprs, pros)
  keep = fprs <= fpr_limit
  x = np.concatenate([fprs[keep], [fpr_limit]])
  y = np.concatenate([pros[keep], [y_cut]])
  return np.trapezoid(y, x) / fpr_limit


def _sk_f1_max(y, s):
  p, r, _ = skm.precision_recall_curve(y, s)
  with np.errstate(invalid="ignore", divide="ignore"):
    f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
  return f1.max()


def _blob_masks(rng, n, h, w, max_blobs=3):
  masks = np.zeros((n, h, w), np.float32)
  for i in range(n):
    if i % 3 == 0:
      continue  # normal image
    for _ in range(rng.integers(1, max_blobs + 1)):
      y, x = rng.integers(0, h), rng.integers(0, w)
      ry, rx = rng.integers(0, 4), rng.integers(0, 4)
      masks[i, max(0, y - ry):y + ry + 1, max(0, x - rx):x + rx + 1] = 1
  return masks


SCORE_KINDS = ["random", "tied", "constant", "float32"]


def _scores(rng, kind, shape, labels):
  if kind == "random":
    return rng.normal(size=shape) + 0.8 * labels
  if kind == "tied":
    return np.round(rng.normal(size=shape) + 0.8 * labels, 1)
  if kind == "constant":
    return np.full(shape, 0.25)
  return (rng.random(size=shape) + 0.5 * labels).astype(np.float32)


@pytest.mark.parametrize("kind", SCORE_KINDS)
def test_binary_metrics_match_sklearn(kind):
  rng = np.random.default_rng(SCORE_KINDS.index(kind))
  y = rng.random(500) < 0.3
  s = _scores(rng, kind, y.shape, y)
  np.testing.assert_allclose(metrics.auroc(s, y), skm.roc_auc_score(y, s), rtol=1e-12)
  np.testing.assert_allclose(metrics.average_precision(s, y),
                             skm.average_precision_score(y, s), rtol=1e-12)
  f1, thr = metrics.f1_max(s, y)
  np.testing.assert_allclose(f1, _sk_f1_max(y, s), rtol=1e-12)
  pred = s >= thr
  np.testing.assert_allclose(skm.f1_score(y, pred), f1, rtol=1e-12)


def test_pixel_metrics_match_sklearn_on_maps():
  rng = np.random.default_rng(3)
  masks = _blob_masks(rng, 9, 24, 20)
  maps = np.round(rng.normal(size=masks.shape) + masks, 2).astype(np.float32)
  y, s = masks.ravel() > 0, maps.ravel()
  np.testing.assert_allclose(metrics.pixel_auroc(maps, masks), skm.roc_auc_score(y, s),
                             rtol=1e-12)
  res = metrics.evaluate_category(maps.max(axis=(1, 2)), masks.max(axis=(1, 2)), maps, masks)
  np.testing.assert_allclose(res["pixel_ap"], skm.average_precision_score(y, s), rtol=1e-12)
  np.testing.assert_allclose(res["pixel_f1_max"], _sk_f1_max(y, s), rtol=1e-12)
  yi, si = masks.max(axis=(1, 2)) > 0, maps.max(axis=(1, 2))
  np.testing.assert_allclose(res["image_auroc"], skm.roc_auc_score(yi, si), rtol=1e-12)
  np.testing.assert_allclose(res["image_ap"], skm.average_precision_score(yi, si), rtol=1e-12)
  assert res["undefined"] == {}


def test_roc_curve_area_matches_sklearn_auc():
  rng = np.random.default_rng(4)
  y = rng.random(300) < 0.5
  s = np.round(rng.normal(size=300) + y, 1)
  fpr, tpr = metrics.roc_curve(s, y)
  f_sk, t_sk, _ = skm.roc_curve(y, s, drop_intermediate=False)
  np.testing.assert_allclose(np.trapezoid(tpr, fpr), skm.auc(f_sk, t_sk), rtol=1e-12)
  # our points are a subset of sklearn's (only collinear points are skipped)
  sk_points = {(round(a, 12), round(b, 12)) for a, b in zip(f_sk, t_sk)}
  for a, b in zip(fpr, tpr):
    assert (round(a, 12), round(b, 12)) in sk_points


AUPRO_CASES = ["random", "tied", "constant", "tiny", "huge", "f64_fine_ties"]


def _aupro_case(name):
  rng = np.random.default_rng(AUPRO_CASES.index(name) + 10)
  n, h, w = 6, 16, 18
  if name == "tiny":
    masks = np.zeros((n, h, w), np.float32)
    masks[1, 3, 4] = masks[2, 10, 10] = masks[2, 12, 1] = 1  # 1-px regions
    masks[4, 5:9, 5:12] = 1
  elif name == "huge":
    masks = np.zeros((n, h, w), np.float32)
    masks[1] = 1
    masks[1, 0, 0] = 0  # nearly the whole image is one region
    masks[3, 2:14, 1:16] = 1
    masks[5, 0, 0] = 1
  else:
    masks = _blob_masks(rng, n, h, w)
  if name == "constant":
    maps = np.zeros(masks.shape, np.float32)
  elif name == "tied":
    maps = np.round(rng.random(masks.shape) + 0.5 * masks, 1).astype(np.float32)
  elif name == "f64_fine_ties":
    maps = rng.integers(0, 40, size=masks.shape).astype(np.float64) / 7 + masks * 1.5
  else:
    maps = (rng.random(masks.shape) + 0.6 * masks).astype(np.float32)
  return maps, masks


@pytest.mark.parametrize("name", AUPRO_CASES)
@pytest.mark.parametrize("limit", [0.3, 0.05, 1.0])
def test_aupro_matches_plain_per_threshold(name, limit):
  maps, masks = _aupro_case(name)
  ours = metrics.aupro(maps, masks, fpr_limit=limit)
  ref = _reference_aupro(maps, masks, fpr_limit=limit)
  np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)


def test_aupro_perfect_and_inverted():
  maps, masks = _aupro_case("random")
  assert metrics.aupro(masks + 0.0, masks) == pytest.approx(1.0)
  assert metrics.aupro(1.0 - masks, masks) == pytest.approx(0.0)


def test_aupro_uses_8_connectivity():
  masks = np.zeros((1, 6, 6), np.float32)
  masks[0, 1, 1] = masks[0, 2, 2] = 1  # diagonal neighbours: one region, not two
  maps = np.zeros_like(masks)
  maps[0, 1, 1] = 1.0
  fpr, pro = metrics.pro_curve(maps, masks)
  # after the top threshold one of the two pixels of the single region is found
  assert pro[2] == pytest.approx(0.5)  # (0, 0), point before t = 1 enters, after
  assert metrics.count_regions(masks) == 1


@pytest.mark.parametrize("labels,reason", [
    (np.zeros(6), "no anomalous"), (np.ones(6), "no normal")])
def test_undefined_image_metrics(labels, reason):
  rng = np.random.default_rng(0)
  scores = rng.random(6)
  with pytest.raises(metrics.UndefinedMetric, match=reason):
    metrics.image_auroc(scores, labels)
  maps = rng.random((6, 5, 5)).astype(np.float32)
  masks = np.broadcast_to(labels[:, None, None], maps.shape).astype(np.float32)
  res = metrics.evaluate_category(scores, labels, maps, masks)
  for k in metrics.METRICS:
    assert res[k] is None, k
    assert reason in res["undefined"][k]


def test_no_maps_gives_undefined_pixel_metrics_and_valid_image_metrics():
  res = metrics.evaluate_category([0.1, 0.9, 0.4], [0, 1, 0])
  assert res["image_auroc"] == 1.0
  assert res["pixel_auroc"] is None and "no anomaly maps" in res["undefined"]["pixel_auroc"]


def test_nan_and_shape_errors_name_the_input():
  with pytest.raises(ValueError, match="NaN"):
    metrics.auroc([0.1, np.nan], [0, 1])
  with pytest.raises(ValueError, match="shapes differ"):
    metrics.pixel_auroc(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))


def test_mean_over_categories_skips_undefined():
  per = {"a": {"image_auroc": 0.8}, "b": {"image_auroc": None}, "c": {"image_auroc": 0.6}}
  m = metrics.mean_over_categories(per, ("image_auroc",))
  assert m["image_auroc"] == {"mean": pytest.approx(0.7), "count": 2, "of": 3}
