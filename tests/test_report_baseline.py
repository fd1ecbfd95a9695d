"""The sweep report's baseline column and below-baseline marks."""
from __future__ import annotations

import json
import os

from maskjax import sweep_report as report


def _result(root, label, seed, per_cat, base, size=64):
  d = os.path.join(root, label, f"seed{seed}", "all", "eval")
  os.makedirs(d, exist_ok=True)
  with open(os.path.join(d, "results.json"), "w") as f:
    json.dump({"method": label, "dataset": "demo", "per_category": per_cat,
               "baseline": {"margin": 0.02, "per_category": base},
               "run_info": {"config": {"seed": seed, "input": {"image_size": size}}}}, f)


def test_baseline_column_and_marks(tmp_path):
  root = str(tmp_path)
  base = {"a": {"image_auroc": 0.70, "pixel_auroc": 0.80},
          "b": {"image_auroc": 0.60, "pixel_auroc": 0.90}}
  for seed in (0, 1):  # two runs of the same data: one baseline column, not n=2
    _result(root, "riad", seed, {"a": {"image_auroc": 0.90, "pixel_auroc": 0.81},
                                 "b": {"image_auroc": 0.95, "pixel_auroc": 0.97}}, base)
  _result(root, "ssm", 0, {"a": {"image_auroc": 0.71, "pixel_auroc": 0.95},
                           "b": {"image_auroc": 0.99, "pixel_auroc": 0.99}}, base)
  report.build_report(root)
  md = open(os.path.join(root, "report", "demo_image_auroc.md")).read()
  lines = [l for l in md.splitlines() if l.startswith("| ")]
  head = [h.strip() for h in lines[0].strip("|").split("|")]
  assert "baseline (64 px)" in head
  rows = {l.strip("|").split("|")[0].strip(): [c.strip() for c in l.strip("|").split("|")]
          for l in lines[1:]}
  col = {h: i for i, h in enumerate(head)}
  assert rows["a"][col["baseline (64 px)"]] == "70.0"
  assert rows["a"][col["ssm"]].endswith("▼")          # 0.71 < 0.70 + 0.02
  assert not rows["a"][col["riad"]].endswith("▼")
  assert not rows["b"][col["ssm"]].endswith("▼")
  px = open(os.path.join(root, "report", "demo_pixel_auroc.md")).read()
  prow = [l for l in px.splitlines() if l.startswith("| a ")][0]
  assert prow.count("▼") == 1  # riad 0.81 < 0.80 + 0.02; ssm 0.95 beats it
  assert "▼ = not at least" in px
  aupro = open(os.path.join(root, "report", "demo_aupro.md")).read()
  assert "▼" not in aupro
