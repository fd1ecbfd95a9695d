"""The trivial per-pixel Gaussian baseline against an independent NumPy
computation, and the reports' baseline row / below-baseline mark."""
from __future__ import annotations

import json
import os
import types

import numpy as np
from PIL import Image

from maskjax.eval import baseline, metrics, report


def _numpy_baseline(train, test, box=21, eps=0.01):
  """Straight NumPy: loops over pixels for the box filter (symmetric padding)."""
  mu = train.sum(0) / len(train)
  sd = np.sqrt(((train - mu) ** 2).sum(0) / len(train))
  z = np.abs(test - mu) / (sd + eps)
  z = z.sum(-1) / z.shape[-1]
  r = box // 2
  out = np.zeros_like(z)
  for i, m in enumerate(z):
    p = np.pad(m, r, mode="symmetric")
    for y in range(m.shape[0]):
      for x in range(m.shape[1]):
        out[i, y, x] = p[y:y + box, x:x + box].mean()
  return out, out.reshape(len(out), -1).max(1)


def test_maps_and_scores_equal_numpy():
  rng = np.random.default_rng(0)
  train = rng.uniform(0, 1, (7, 24, 24, 3))
  train[:, :5, :5] = 0.5  # pixels that never vary: std 0, eps keeps it finite
  test = rng.uniform(0, 1, (4, 24, 24, 3))
  mean, std = baseline.fit(train)
  maps = baseline.anomaly_maps(test, mean, std)
  ref_maps, ref_scores = _numpy_baseline(train, test)
  np.testing.assert_allclose(maps, ref_maps, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(baseline.image_scores(maps), ref_scores, rtol=1e-5)
  assert np.isfinite(maps).all()


def _write(path, arr):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(arr).save(path)


def test_evaluate_from_files_finds_a_bright_defect(tmp_path):
  rng = np.random.default_rng(1)
  rec = lambda **k: types.SimpleNamespace(**k)  # noqa: E731
  normals, tests = [], []
  for i in range(10):
    p = str(tmp_path / f"n{i}.png")
    _write(p, (120 + rng.integers(-8, 8, (32, 32, 3))).astype(np.uint8))
    normals.append(rec(path=p, category="a", label=0, mask_path=None))
  for i in range(6):
    img = (120 + rng.integers(-8, 8, (32, 32, 3))).astype(np.uint8)
    lab = i % 2
    mp = None
    if lab:
      m = np.zeros((32, 32), np.uint8)
      m[8:16, 10:18] = 255
      img[m > 0] = 250
      mp = str(tmp_path / f"t{i}_mask.png")
      _write(mp, m)
    p = str(tmp_path / f"t{i}.png")
    _write(p, img)
    tests.append(rec(path=p, category="a", label=lab, mask_path=mp))
  out = baseline.evaluate(normals, tests, 32)
  assert out["a"]["image_auroc"] == 1.0 and out["a"]["pixel_auroc"] > 0.9


def test_report_marks_a_category_below_the_baseline(tmp_path):
  rng = np.random.default_rng(2)

  def cat(good):
    lab = np.array([0] * 10 + [1] * 10)
    scores = lab * (2.0 if good else 0.0) + rng.normal(0, 1, 20)
    masks = np.zeros((20, 8, 8))
    masks[10:, :3, :3] = 1
    maps = masks * (2.0 if good else 0.0) + rng.normal(0, 1, masks.shape)
    return metrics.evaluate_category(scores, lab, maps, masks)

  ours = {"good_cat": cat(True), "bad_cat": cat(False)}
  base = {"good_cat": cat(False), "bad_cat": cat(True)}
  jp, mp = report.write_reports(str(tmp_path), method="riad", dataset="demo", per_category=ours,
                                baseline=base)
  res = json.load(open(jp))
  assert res["baseline"]["below_baseline"]["bad_cat"] == ["image_auroc", "pixel_auroc"]
  assert res["baseline"]["below_baseline"]["good_cat"] == []
  assert res["baseline"]["per_category"]["bad_cat"]["image_auroc"] == base["bad_cat"]["image_auroc"]
  md = open(mp).read()
  section = md.split("## Ours vs. the trivial baseline")[1].split("## All metrics")[0]
  rows = {l.split(" | ")[0].strip("| "): l for l in section.splitlines() if l.startswith("| ")}
  assert "BELOW BASELINE" in rows["bad_cat"] and rows["good_cat"].endswith("| beats |")
  assert "*baseline (mean)*" in md
  # within the margin still counts as not beating it
  close = {"c": dict(base["bad_cat"], image_auroc=base["bad_cat"]["image_auroc"] + 0.01,
                     pixel_auroc=base["bad_cat"]["pixel_auroc"] + 0.05)}
  assert baseline.compare(close, {"c": base["bad_cat"]}) == {"c": ["image_auroc"]}
  # no baseline given: no section, null in the JSON
  jp2, mp2 = report.write_reports(str(tmp_path / "b"), method="riad", dataset="demo",
                                  per_category=ours)
  assert json.load(open(jp2))["baseline"] is None and "BELOW BASELINE" not in open(mp2).read()
