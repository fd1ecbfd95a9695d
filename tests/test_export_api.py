"""The Python API and the exported detector, for every method's demo model.

Each method's demo config is trained for two steps on one demo category
(enough for a checkpoint and a calibration: parity does not need a good
model), exported, and the exported artifact must give the live score's
image scores and maps to 1e-6.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import maskjax
from maskjax.errors import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("riad", "ssm", "ear", "aca", "mala")


def _tiny(method: str):
  over = {"train": {"steps": 2, "log_every": 1, "progress_bar": False},
          "input": {"categories": ("fabric",), "eval_batch_size": 4,
                    "demo_source": "synthetic"},
          "eval": {"plots": False, "num_heatmaps": 0, "baseline": False}}
  if method in ("aca", "mala"):
    over["input"]["batch_size"] = 4
  return maskjax.get_config(f"{method}:demo", **over)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  runs = {}

  def get(method):
    if method not in runs:
      wd = tmp_path_factory.mktemp(method) / "run"
      run = maskjax.fit(_tiny(method), str(wd))
      runs[method] = (wd, run)
    return runs[method]
  return get


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_export_equals_live_score(trained, tmp_path, method):
  wd, run = trained(method)
  assert run.report and os.path.exists(run.report)
  assert 0.0 <= run.metrics["image_auroc"] <= 1.0
  from maskjax import export
  meta = export.export_run(str(wd), str(tmp_path / "exp"), platforms=("cpu",))
  assert meta["method"] == method and meta["categories"] == ["fabric"]
  live = maskjax.Detector.load(str(wd))
  exp = maskjax.Detector.load_exported(str(tmp_path / "exp"))
  rng = np.random.default_rng(1)
  n = 3  # not a multiple of the eval batch: padding on both sides
  size = live.image_size
  images = rng.uniform(0, 1, (n, size, size, 3)).astype(np.float32)
  a = live.score(images, [0] * n)
  b = exp.score(images, [0] * n)
  np.testing.assert_allclose(b["image_score"], a["image_score"], rtol=0, atol=1e-6)
  np.testing.assert_allclose(b["anomaly_map"], a["anomaly_map"], rtol=0, atol=1e-6)
  # thresholds: the exported decision and normalised score are the calibrated ones
  stats = json.load(open(wd / "calibration.json"))["threshold"]["per_category"]["fabric"]
  np.testing.assert_array_equal(b["decision"], a["image_score"] > stats["threshold"])
  np.testing.assert_allclose(
      b["normalized_score"],
      (a["image_score"] - stats["min"]) / (stats["threshold"] - stats["min"]), rtol=1e-5,
      atol=1e-6)


def _png(path, size=(40, 30), seed=0):
  rng = np.random.default_rng(seed)
  Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def test_detector_predict_inputs(trained, tmp_path):
  wd, _ = trained("riad")
  det = maskjax.Detector.load(str(wd))
  folder = tmp_path / "imgs"
  folder.mkdir()
  _png(folder / "a.png", (40, 30), 0)
  _png(folder / "b.jpg", (64, 64), 1)
  one = det.predict(str(folder / "a.png"))
  assert len(one) == 1 and one[0].anomaly_map.shape == (30, 40)  # original size
  assert one[0].category == "fabric" and isinstance(one[0].decision, bool)
  both = det.predict(str(folder))
  assert [os.path.basename(p.path) for p in both] == ["a.png", "b.jpg"]
  assert both[0].score == pytest.approx(one[0].score, abs=0)  # neighbours change nothing
  globbed = det.predict(str(folder / "*.jpg"))
  assert len(globbed) == 1 and globbed[0].score == pytest.approx(both[1].score, abs=0)
  arr = np.asarray(Image.open(folder / "a.png"))
  from_array = det.predict(arr)
  assert from_array[0].score == pytest.approx(one[0].score, abs=1e-6)
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError, match="it is empty"):
    det.predict(str(tmp_path / "empty"))
  (tmp_path / "txt").mkdir()
  (tmp_path / "txt" / "notes.txt").write_text("x")
  (tmp_path / "txt" / "data.csv").write_text("x")
  with pytest.raises(DataError, match="notes.txt") as e:
    det.predict(str(tmp_path / "txt"))
  assert "data.csv" in str(e.value)


def test_export_cli_then_a_fresh_process_without_method_code(trained, tmp_path):
  """`python -m maskjax.export` (no --config: the run's config.json), then a
  fresh process loads the export with jax and numpy: no method, model, Flax,
  Orbax or grain module is imported, and it scores as the live model."""
  wd, _ = trained("riad")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-m", "maskjax.export", "--workdir", str(wd), "--out",
                      str(tmp_path / "exp")], capture_output=True, text=True, timeout=300,
                     env=env, cwd=str(tmp_path))
  assert r.returncode == 0, r.stderr[-3000:]
  meta = json.load(open(tmp_path / "exp" / "detector.json"))
  assert meta["platforms"] == ["cpu", "cuda"] and meta["image_size"] == 64
  assert max(meta["parity_max_abs_diff"].values()) <= 1e-5
  _png(tmp_path / "x.png")
  code = f"""
import sys, json, maskjax
det = maskjax.Detector.load_exported({str(tmp_path / 'exp')!r})
p = det.predict({str(tmp_path / 'x.png')!r})
bad = sorted(m for m in sys.modules if m.startswith(("maskjax.methods", "maskjax.models", "flax",
                                                     "orbax", "optax", "grain", "maskjax.train")))
print(json.dumps({{"bad": bad, "score": p[0]["score"], "shape": list(p[0]["anomaly_map"].shape)}}))
"""
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                     env=env, cwd=str(tmp_path))
  assert r.returncode == 0, r.stderr[-3000:]
  out = json.loads(r.stdout.strip().splitlines()[-1])
  assert out["bad"] == [] and out["shape"] == [30, 40]
  live = maskjax.Detector.load(str(wd)).predict(str(tmp_path / "x.png"))[0]
  assert out["score"] == pytest.approx(live.score, abs=1e-6)
  r = subprocess.run([sys.executable, "-m", "maskjax.export", "--workdir", str(tmp_path / "none"),
                      "--out", str(tmp_path / "e2")], capture_output=True, text=True, timeout=300,
                     env=env, cwd=str(tmp_path))
  assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
