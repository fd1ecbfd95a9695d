"""The command line and the README's Python example, run from a directory
outside the checkout: configs come from the package, eval / predict read the
run's own config.json, predict takes an image, a folder or a glob."""
from __future__ import annotations

import csv
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from helpers_xla_cache import cli_cache_flag

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--config.train.steps=2", "--config.train.progress_bar=False",
         "--config.eval.plots=False", "--config.input.categories=('fabric',)",
         "--config.input.demo_source=synthetic"]


def _run(args, cwd, timeout=600):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("PYTHONPATH", None)  # the installed package, not the checkout on the path
  # the session's compilation cache (conftest), not the default under ~/.cache
  r = subprocess.run([sys.executable, "-m", "maskjax.main", *args, cli_cache_flag()], cwd=cwd,
                     env=env, capture_output=True, text=True, timeout=timeout)
  return r.returncode, r.stdout, r.stderr


def _readme_code():
  text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
  block = re.search(r"### Python API.*?```python\n(.*?)```", text, re.S)
  return block.group(1) if block else None


@pytest.fixture(scope="module")
def readme_example(request, tmp_path_factory):
  """The README's Python example in a process of its own, started once: by
  `cli_run` when its training is done (the example trains the same model, so it
  finds its compiled programs in the session's cache, and it runs beside the
  eval and predict tests), else by its test."""
  state = {}
  selected = any(item.module is request.module and item.name == "test_readme_python_example_runs"
                 for item in request.session.items)

  def start():
    code = _readme_code()
    if "proc" not in state and code is not None:
      logs = tmp_path_factory.mktemp("readme")
      cwd = logs / "cwd"
      cwd.mkdir()
      env = dict(os.environ, JAX_PLATFORMS="cpu")
      env.pop("PYTHONPATH", None)
      out, err = open(logs / "stdout", "w"), open(logs / "stderr", "w")
      state.update(cwd=cwd, err=logs / "stderr", proc=subprocess.Popen(
          [sys.executable, "-c", code], cwd=cwd, env=env, stdout=out, stderr=err))
      out.close()
      err.close()
    return state

  start.selected = selected
  yield start
  proc = state.get("proc")
  if proc is not None and proc.poll() is None:
    proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, readme_example):
  cwd = tmp_path_factory.mktemp("elsewhere")
  wd = cwd / "run"
  try:
    rc, out, err = _run(["--config=riad:demo", f"--workdir={wd}", *SMALL], cwd)
  finally:
    if readme_example.selected:
      readme_example()
  assert rc == 0, err[-3000:]
  assert "report:" in out
  return cwd, wd


def _img(path, seed=0, size=(48, 40)):
  rng = np.random.default_rng(seed)
  Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)


@pytest.mark.slow
def test_eval_without_config_and_steps_named(cli_run):
  cwd, wd = cli_run
  rc, out, err = _run([f"--workdir={wd}", "--mode=eval"], cwd)
  assert rc == 0, err[-3000:]
  rows = list(csv.DictReader(open(wd / "eval" / "scores.csv")))
  assert rows and set(rows[0]) == {"path", "category", "defect", "label", "score",
                                   "normalized_score", "anomalous"}
  # the packaged config with another train.steps: the message names the key
  rc, out, err = _run(["--config=riad:demo", f"--workdir={wd}", "--mode=eval", *SMALL[1:],
                       "--config.train.steps=5"], cwd)
  assert rc == 2 and "train.steps=2" in err and "train.steps=5" in err, err[-2000:]


@pytest.mark.slow
def test_predict_image_folder_glob_and_errors(cli_run):
  cwd, wd = cli_run
  pics = cwd / "pics"
  pics.mkdir()
  _img(pics / "a.png", 0)
  _img(pics / "b.png", 1, (64, 64))
  common = [f"--workdir={wd}", "--mode=predict"]
  rc, out, err = _run(common + [f"--predict_dir={pics / 'a.png'}", f"--predict_out={cwd / 'p1'}"],
                      cwd)
  assert rc == 0, err[-3000:]
  one = list(csv.DictReader(open(cwd / "p1" / "scores.csv")))
  assert len(one) == 1 and one[0]["category"] == "fabric"
  assert os.path.exists(cwd / "p1" / "a.png_overlay.png")
  rc, out, err = _run(common + [f"--predict_dir={pics}"], cwd)  # default: a new directory
  assert rc == 0, err[-3000:]
  rc, out, err = _run(common + [f"--predict_dir={pics / '*.png'}"], cwd)
  assert rc == 0, err[-3000:]
  firsts, seconds = (list(csv.DictReader(open(wd / "predict" / n / "scores.csv")))
                     for n in ("001", "002"))
  assert [r["path"] for r in firsts] == [r["path"] for r in seconds] and len(firsts) == 2
  # adding images changes nothing for the others
  assert firsts[0]["score"] == one[0]["score"]
  (cwd / "empty").mkdir()
  rc, out, err = _run(common + [f"--predict_dir={cwd / 'empty'}"], cwd)
  assert rc == 2 and len(err.strip().splitlines()) == 1 and "empty" in err, err[-2000:]
  (cwd / "texts").mkdir()
  (cwd / "texts" / "readme.txt").write_text("x")
  (cwd / "texts" / "labels.csv").write_text("x")
  rc, out, err = _run(common + [f"--predict_dir={cwd / 'texts'}"], cwd)
  assert rc == 2 and "readme.txt" in err and "labels.csv" in err, err[-2000:]


@pytest.mark.slow
def test_readme_python_example_runs(readme_example):
  assert _readme_code() is not None, "README has no Python API example"
  state = readme_example()
  proc = state["proc"]
  proc.wait(timeout=900)
  assert proc.returncode == 0, state["err"].read_text()[-3000:]
  assert (state["cwd"] / "runs" / "api_riad_export" / "detector.jaxexport").exists()
