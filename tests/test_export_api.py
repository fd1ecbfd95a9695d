"""The Python API and the exported detector, for every method's demo model.

Each method's demo config is trained for two steps on one demo category
(enough for a checkpoint and a calibration: parity does not need a good
model) by `maskjax.fit`, exported, and the exported artifact must give the
live score's image scores and maps to 1e-6. The five trainings run in
processes of their own, two at a time, while the tests export and score the
runs that are ready.
"""
from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

import maskjax
from maskjax.errors import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("riad", "ssm", "ear", "aca", "mala")


def _overrides(method: str) -> dict:
  over = {"train": {"steps": 2, "log_every": 1, "progress_bar": False},
          "input": {"categories": ("fabric",), "eval_batch_size": 4,
                    "demo_source": "synthetic"},
          "eval": {"plots": False, "num_heatmaps": 0, "baseline": False}}
  if method in ("aca", "mala"):
    over["input"]["batch_size"] = 4
  return over


# `maskjax.fit(get_config("<method>:demo", **overrides), workdir)` in a process of
# its own, its Run written as JSON. The trainings are independent and mostly
# compile (one core each), so two run at a time beside the tests, which export
# and score each run as soon as it is there.
_FIT = """
import ast, dataclasses, json, sys
import maskjax
method, workdir, out, over = sys.argv[1], sys.argv[2], sys.argv[3], ast.literal_eval(sys.argv[4])
run = maskjax.fit(maskjax.get_config(method + ":demo", **over), workdir)
with open(out, "w") as f:
  json.dump(dataclasses.asdict(run), f)
"""
PARALLEL_FITS = 2


def _methods_needed(session, module) -> list[str]:
  """The methods the selected tests of this module train, in test order."""
  out = []
  for item in session.items:
    if item.module is module and "trained" in getattr(item, "fixturenames", ()):
      callspec = getattr(item, "callspec", None)
      m = callspec.params.get("method", "riad") if callspec else "riad"
      if m not in out:
        out.append(m)
  return out


@pytest.fixture(scope="module")
def trained(request, tmp_path_factory):
  root = tmp_path_factory.mktemp("runs")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  todo, queued = queue.Queue(), set()
  for m in _methods_needed(request.session, request.module) or list(METHODS):
    todo.put(m)
    queued.add(m)
  done = {m: threading.Event() for m in METHODS}
  results, procs, stop = {}, [], threading.Event()

  def slot():
    while not stop.is_set():
      try:
        method = todo.get_nowait()
      except queue.Empty:
        return
      (root / method).mkdir()
      wd, out, log = root / method / "run", root / method / "run.json", root / method / "fit.log"
      with open(log, "w") as f:
        p = subprocess.Popen([sys.executable, "-c", _FIT, method, str(wd), str(out),
                              repr(_overrides(method))], cwd=str(root / method), env=env,
                             stdout=f, stderr=subprocess.STDOUT)
        procs.append(p)
        try:
          p.wait(timeout=1200)
        except subprocess.TimeoutExpired:
          p.kill()
          p.wait()
      results[method] = (p.returncode, wd, out, log)
      done[method].set()

  slots = [threading.Thread(target=slot, daemon=True) for _ in range(PARALLEL_FITS)]
  for t in slots:
    t.start()
  runs = {}

  def get(method):
    if method not in runs:
      if method not in queued:  # not foreseen: train it now
        queued.add(method)
        todo.put(method)
        if not any(t.is_alive() for t in slots):
          slot()
      assert done[method].wait(timeout=1500), f"{method}: training did not finish"
      rc, wd, out, log = results[method]
      assert rc == 0, f"maskjax.fit({method}:demo) failed:\n" + log.read_text()[-3000:]
      with open(out) as f:
        runs[method] = (wd, maskjax.Run(**json.load(f)))
    return runs[method]

  yield get
  stop.set()  # trainings no test asked for (a failure, -x) are stopped
  while any(t.is_alive() for t in slots):
    for p in list(procs):
      if p.poll() is None:
        p.kill()
    for t in slots:
      t.join(timeout=0.5)


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
