"""results.json / results.md, thresholds from validation normals, PNG plots."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from maskjax.eval import metrics, plots, published, report, threshold


def _category(rng, n=8, size=16, with_anomalies=True):
  labels = np.array([0, 1] * (n // 2)) if with_anomalies else np.zeros(n, int)
  masks = np.zeros((n, size, size), np.float32)
  masks[labels == 1, 4:9, 5:11] = 1
  maps = (rng.random(masks.shape) + masks).astype(np.float32)
  return maps.max(axis=(1, 2)), labels, maps, masks


def test_write_reports_json_schema_and_paper_column(tmp_path):
  rng = np.random.default_rng(0)
  per = {"bottle": metrics.evaluate_category(*_category(rng)),
         "metal_nut": metrics.evaluate_category(*_category(rng)),
         "cable": metrics.evaluate_category(*_category(rng, with_anomalies=False))}
  run_info = {"config": {"seed": 3, "method": {"name": "ssm"}}, "timings": {"eval_s": 1.5},
              "threshold": threshold.fit(rng.random(20), 0.9)}
  jp, mp = report.write_reports(str(tmp_path), method="ssm", dataset="mvtec",
                                per_category=per, run_info=run_info)
  with open(jp) as f:
    res = json.load(f)  # strict JSON (NaN would not round-trip as null)
  assert res["schema"] == report.SCHEMA
  assert set(res["per_category"]) == {"bottle", "metal_nut", "cable"}
  for cat in res["per_category"].values():
    assert set(metrics.METRICS) <= set(cat)
  assert res["per_category"]["cable"]["image_auroc"] is None
  assert "no anomalous" in res["per_category"]["cable"]["undefined"]["image_auroc"]
  m = res["mean"]["image_auroc"]
  assert m["count"] == 2 and m["of"] == 3
  np.testing.assert_allclose(m["mean"], np.mean([per["bottle"]["image_auroc"],
                                                 per["metal_nut"]["image_auroc"]]))
  assert res["published"]["per_category"]["bottle"]["image_auroc"] == pytest.approx(0.999)
  assert res["published"]["tables"] == {"image_auroc": "Table II", "pixel_auroc": "Table III"}
  assert res["run_config"]["seed"] == 3 and res["timings"]["eval_s"] == 1.5
  for k in ("jax", "flax", "optax", "numpy", "maskjax"):
    assert res["versions"][k], k
  assert res["device"]
  md = open(mp).read()
  assert "paper" in md and "Table II" in md and "n/a" in md
  ours = per["bottle"]["image_auroc"]
  row = next(ln for ln in md.splitlines() if ln.startswith("| bottle |"))
  cells = [c.strip() for c in row.strip("|").split("|")]
  assert cells[1:4] == [f"{100 * ours:.2f}", "99.9", f"{100 * (ours - 0.999):+.2f}"]


def test_reports_without_paper_numbers_and_prefixed_categories(tmp_path):
  rng = np.random.default_rng(1)
  per = {"demo_circle": metrics.evaluate_category(*_category(rng))}
  jp, mp = report.write_reports(str(tmp_path / "a"), method="riad", dataset="demo",
                                per_category=per, run_info={})
  assert json.load(open(jp))["published"] is None
  assert "Ours vs. the paper" not in open(mp).read()
  per = {"mvtec/bottle": metrics.evaluate_category(*_category(rng)),
         "visa/pcb1": metrics.evaluate_category(*_category(rng))}
  jp, _ = report.write_reports(str(tmp_path / "b"), method="mala", dataset="mvtec+visa",
                               per_category=per, run_info={})
  pub = json.load(open(jp))["published"]
  assert pub["per_category"]["visa/pcb1"]["pixel_auroc"] == pytest.approx(0.916)
  assert pub["per_category"]["mvtec/bottle"]["image_auroc"] == pytest.approx(1.0)


def test_threshold_fit_normalize_decide():
  rng = np.random.default_rng(2)
  val = rng.normal(size=200)
  st = threshold.fit(val, 0.95, val_maps=rng.random((4, 8, 8)))
  assert st["threshold"] == pytest.approx(np.quantile(val, 0.95))
  assert st["min"] == pytest.approx(val.min()) and st["std"] == pytest.approx(val.std())
  assert "pixel_threshold" in st
  json.dumps(st)
  n = threshold.normalize([val.min(), st["threshold"]], st)
  np.testing.assert_allclose(n, [0.0, 1.0])
  test = np.array([st["threshold"] - 1e-9, st["threshold"], st["threshold"] + 1e-3])
  assert threshold.decide(test, st).tolist() == [False, False, True]
  assert (threshold.normalize(test, st) > 1).tolist() == [False, False, True]
  assert np.mean(threshold.decide(val, st)) == pytest.approx(0.05, abs=0.01)
  with pytest.raises(ValueError, match="threshold_quantile"):
    threshold.fit(val, 1.5)
  with pytest.raises(ValueError, match="val_fraction"):
    threshold.fit([], 0.9)


def _png_ok(path):
  assert os.path.getsize(path) > 0
  with Image.open(path) as im:
    assert im.format == "PNG" and im.size[0] > 50


def test_plots_from_arrays(tmp_path):
  rng = np.random.default_rng(3)
  scores, labels, maps, masks = _category(rng)
  images = rng.random(maps.shape + (3,)).astype(np.float32)
  cats = ["a"] * 4 + ["b"] * 4
  paths = plots.heatmap_overlays(str(tmp_path), images, masks, maps, None, categories=cats,
                                 num_per_category=2)
  assert sorted(os.path.basename(p) for p in paths) == ["heatmaps_a.png", "heatmaps_b.png"]
  for p in paths:
    _png_ok(p)
  cats[-1] = "mvtec/c"  # a single image: ROC undefined, still a figure
  paths = plots.roc_pro_curves(str(tmp_path), image_scores=scores, anomaly_maps=maps,
                               masks=masks, categories=cats)
  assert os.path.basename(paths[-1]) == "curves_mvtec_c.png"
  for p in paths:
    _png_ok(p)


def test_heatmap_overlays_from_records(tmp_path):
  from maskjax.data.records import Record
  rng = np.random.default_rng(4)
  recs = []
  for i in range(3):
    ip = tmp_path / f"{i}.png"
    Image.fromarray((rng.random((20, 20, 3)) * 255).astype(np.uint8)).save(ip)
    mp = None
    if i:
      mp = tmp_path / f"{i}_mask.png"
      m = np.zeros((20, 20), np.uint8)
      m[5:10, 5:10] = 255
      Image.fromarray(m).save(mp)
    recs.append(Record(str(ip), mp and str(mp), int(i > 0), "bottle", 0,
                       "good" if i == 0 else "crack", "test"))
  maps = rng.random((3, 16, 16)).astype(np.float32)
  paths = plots.heatmap_overlays(str(tmp_path / "out"), records=recs, anomaly_maps=maps,
                                 image_size=16, num_per_category=3)
  assert len(paths) == 1
  _png_ok(paths[0])
