"""Sweep expansion, resumability bookkeeping, job scripts, and the aggregated report."""
from __future__ import annotations

import csv
import json
import os

import pytest

from maskjax import sweep, sweep_report as report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sweep_file(tmp_path):
  p = tmp_path / "s.py"
  p.write_text(
      "def get_sweep(arg=None):\n"
      "  return {'name': 't', 'entries': [\n"
      "    {'config': 'configs/riad.py:demo', 'label': 'riad', 'categories': ['a', 'b'],\n"
      "     'seeds': [0, 1], 'overrides': {'train.steps': 3}},\n"
      "    {'config': 'configs/ear.py:demo', 'label': 'ear', 'categories': None, 'seeds': [0],\n"
      "     'grid': {'method.mosaic_m': [4, 8], 'optim.lr': [1e-4]}},\n"
      "  ]}\n")
  return str(p)


def test_expand_and_commands(tmp_path):
  runs = sweep.expand(sweep.load_sweep(_sweep_file(tmp_path)), str(tmp_path / "r"))
  assert len(runs) == 2 * 2 + 2
  wds = [r.workdir for r in runs]
  assert len(set(wds)) == len(wds)
  r0 = runs[0]
  cmd = r0.command("python")
  assert cmd[:3] == ["python", "-m", "maskjax.main"]
  assert "--config=configs/riad.py:demo" in cmd
  assert "--config.seed=0" in cmd and "--config.train.steps=3" in cmd
  assert "--config.input.categories=('a',)" in cmd
  ear = [r for r in runs if r.label == "ear"]
  assert {r.overrides["method.mosaic_m"] for r in ear} == {4, 8}
  assert all(r.category is None for r in ear)
  assert all("mosaic_m=" in r.workdir for r in ear)


def test_demo_methods_sweep_runs_every_demo_as_is(tmp_path):
  # every method's demo, its own protocol, three seeds: README's table over seeds
  import maskjax
  spec = os.path.join(ROOT, "configs", "sweeps", "demo.py") + ":methods"
  runs = sweep.expand(sweep.load_sweep(spec), str(tmp_path))
  assert len(runs) == 5 * 3
  assert {(r.label, r.seed) for r in runs} == {
      (m, s) for m in ("riad", "ssm", "ear", "aca", "mala") for s in (0, 1, 2)}
  for r in runs:
    assert r.category is None and r.overrides == {}
    assert r.command()[3:] == [f"--config={r.config}", f"--workdir={r.workdir}",
                               f"--config.seed={r.seed}"]
    assert maskjax.get_config(r.config).method.name == r.label


def test_bad_sweep_file(tmp_path):
  from maskjax.errors import ConfigError
  with pytest.raises(ConfigError, match="nope.py"):
    sweep.load_sweep(str(tmp_path / "nope.py"))
  p = tmp_path / "bad.py"
  p.write_text("x = 1\n")
  with pytest.raises(ConfigError, match="get_sweep"):
    sweep.load_sweep(str(p))


def _fake_result(workdir, method, dataset, per_cat, seed):
  os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
  with open(os.path.join(workdir, "eval", "results.json"), "w") as f:
    json.dump({"method": method, "dataset": dataset,
               "per_category": per_cat, "run_info": {"config": {"seed": seed}}}, f)


def test_finished_runs_are_skipped_and_scripts_list_pending(tmp_path):
  root = str(tmp_path / "r")
  runs = sweep.expand(sweep.load_sweep(_sweep_file(tmp_path)), root)
  _fake_result(runs[0].workdir, "riad", "demo", {"a": {"image_auroc": 0.9}}, 0)
  assert sweep.is_finished(runs[0]) and not sweep.is_finished(runs[1])
  # a truncated results.json is not a finished run
  os.makedirs(os.path.join(runs[1].workdir, "eval"))
  with open(os.path.join(runs[1].workdir, "eval", "results.json"), "w") as f:
    f.write('{"method": ')
  assert not sweep.is_finished(runs[1])

  script = sweep.write_slurm(runs, root, partition="gpu", gpus=2)
  text = open(script).read()
  lines = open(os.path.join(root, "sweep_runs.txt")).read().splitlines()
  assert len(lines) == len(runs) - 1                      # the finished run is not listed
  assert all(l.startswith("python -m maskjax.main --config=") for l in lines)
  assert runs[0].workdir not in "\n".join(lines)
  assert f"#SBATCH --array=0-{len(lines) - 1}" in text
  assert "#SBATCH --gpus=2" in text and "#SBATCH --partition=gpu" in text
  assert "SLURM_ARRAY_TASK_ID" in text and "sweep_runs.txt" in text

  tpu = open(sweep.write_tpu(runs, root, tpu_name="pod1", zone="us-z")).read()
  assert tpu.count("gcloud compute tpus tpu-vm ssh pod1 --zone=us-z --worker=all") == len(runs) - 1
  assert "python3 -m maskjax.main" in tpu


def test_pinning_env():
  env = sweep._pin_env(1, 2)
  assert env["CUDA_VISIBLE_DEVICES"] == "2,3"
  assert "CUDA_VISIBLE_DEVICES" not in sweep._pin_env(0, 0) or \
      sweep._pin_env(0, 0)["CUDA_VISIBLE_DEVICES"] == os.environ.get("CUDA_VISIBLE_DEVICES")


def test_report_aggregates_seeds_papers_and_references(tmp_path):
  root = str(tmp_path / "runs")
  for seed, (a, b) in enumerate([(0.90, 0.80), (0.94, 0.84)]):
    _fake_result(os.path.join(root, "riad", "bottle", f"seed{seed}"), "riad", "mvtec",
                 {"bottle": {"image_auroc": a, "pixel_auroc": 0.97, "aupro": 0.9,
                             "image_f1_max": 0.9}}, seed)
    _fake_result(os.path.join(root, "riad", "cable", f"seed{seed}"), "riad", "mvtec",
                 {"cable": {"image_auroc": b, "pixel_auroc": None, "aupro": 0.8,
                            "image_f1_max": 0.85}}, seed)
  ref = tmp_path / "anomalib.csv"
  with open(ref, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["model.class_path", "data.category", "seed", "image_AUROC", "pixel_AUROC"])
    w.writerow(["anomalib.models.Riad", "bottle", 0, 0.92, 0.97])
    w.writerow(["anomalib.models.Riad", "cable", 0, 0.70, 0.95])
  written = report.build_report(root, [str(ref)], tolerance=0.05)
  md = open(os.path.join(root, "report", "mvtec_image_auroc.md")).read()
  assert "| bottle | 92.0 ± 2.0 (n=2)" in md
  assert "| cable | 82.0 ± 2.0 (n=2)" in md
  assert "| mean | 87.0" in md
  # cable differs from the reference by 12 points > 5: marked
  cable = [l for l in md.splitlines() if l.startswith("| cable")][0]
  assert "70.0 ! (+12.0)" in cable
  bottle = [l for l in md.splitlines() if l.startswith("| bottle")][0]
  assert "!" not in bottle
  pix = open(os.path.join(root, "report", "mvtec_pixel_auroc.md")).read()
  assert "| cable | n/a" in pix
  assert any(p.endswith(".png") and os.path.getsize(p) > 0 for p in written)
  rows = list(csv.reader(open(os.path.join(root, "report", "mvtec_aupro.csv"))))
  assert rows[0][0] == "category" and rows[-1][0] == "mean"


def test_reference_csv_generic_format(tmp_path):
  p = tmp_path / "ref.csv"
  p.write_text("method,category,metric,value\nriad,bottle,image_auroc,99.0\nriad,bottle,AUPRO,0.8\n")
  rows = report.read_reference(str(p))
  assert {"method": "riad", "category": "bottle", "metric": "image_auroc", "value": 0.99} in rows
  assert any(r["metric"] == "aupro" and r["value"] == 0.8 for r in rows)


def _per_category_run(workdir, seed, per_cat, merged=True):
  """A per-category parent (`maskjax.per_category`): one sub-run per category,
  each with its own report, and (when finished) the merged report."""
  from maskjax import per_category
  os.makedirs(workdir, exist_ok=True)
  per_category.write_sub_runs(workdir, list(per_cat))
  for cat, metrics in per_cat.items():
    _fake_result(per_category.sub_workdir(workdir, cat), "riad", "mvtec", {cat: metrics}, seed)
  if merged:
    _fake_result(workdir, "riad", "mvtec", per_cat, seed)


def test_per_category_runs_are_counted_once_under_one_label(tmp_path):
  # the sweep's layout for an entry with categories None: <label>/all/seed<s>
  root = str(tmp_path / "runs")
  _per_category_run(os.path.join(root, "riad", "all", "seed0"), 0,
                    {"bottle": {"image_auroc": 0.90}, "mvtec/cable": {"image_auroc": 0.70}})
  # stopped after its first category: no merged report yet
  _per_category_run(os.path.join(root, "riad", "all", "seed1"), 1,
                    {"bottle": {"image_auroc": 0.94}, "cable": {"image_auroc": 0.80}}, merged=False)
  os.remove(os.path.join(root, "riad", "all", "seed1", "cable", "eval", "results.json"))
  paths = report.run_paths(root)
  assert [os.path.relpath(d, root) for _, d in paths] == [
      os.path.join("riad", "all", "seed0"), os.path.join("riad", "all", "seed1")]
  report.build_report(root)
  md = open(os.path.join(root, "report", "mvtec_image_auroc.md")).read()
  head = [l for l in md.splitlines() if l.startswith("| category")][0]
  assert [h.strip() for h in head.strip("|").split("|")][1:] == ["riad"]
  assert "| bottle | 92.0 ± 2.0 (n=2)" in md     # seed 0's merged report + seed 1's sub-run
  assert "| cable | 70.0 |" in md                 # seed 0 only, counted once
