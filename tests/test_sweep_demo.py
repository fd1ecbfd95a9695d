"""The demo sweep end to end at reduced steps: RIAD + SSM x all demo categories
(one model per method and seed) x 2 seeds; interrupted and rerun without redoing
finished runs; then the aggregated report."""
from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_demo_sweep_interrupt_resume_and_report(tmp_path):
  root = str(tmp_path / "sweep")
  env = dict(os.environ, JAX_PLATFORMS="cpu", HOME=str(tmp_path))  # demo data cached under HOME
  cmd = [sys.executable, "-m", "maskjax.sweep", "--sweep=configs/sweeps/demo.py:quick", "--parallel=2",
         f"--root={root}"]
  results = lambda: sorted(glob.glob(os.path.join(root, "**", "eval", "results.json"),
                                     recursive=True))
  # 1) start the sweep and interrupt it once the first run has finished
  p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, start_new_session=True)
  deadline = time.time() + 600
  while not results() and p.poll() is None and time.time() < deadline:
    time.sleep(1)
  assert results(), "no run finished: " + (p.stdout.read() if p.poll() is not None else "timeout")
  os.killpg(p.pid, signal.SIGKILL)
  p.wait()
  first = results()
  assert len(first) < 4, "the sweep finished before it could be interrupted"
  mtimes = {f: os.path.getmtime(f) for f in first}
  # 2) rerun: finished runs are skipped, the rest run (interrupted ones resume)
  res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
  assert f"{len(first)} finished" in res.stdout + res.stderr
  assert len(results()) == 4
  for f, t in mtimes.items():
    assert os.path.getmtime(f) == t, f"{f} was redone"
  # 3) aggregated report over methods and seeds
  rep = subprocess.run([sys.executable, "-m", "maskjax.sweep_report", f"--root={root}"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=300)
  assert rep.returncode == 0, rep.stderr[-3000:]
  md = open(os.path.join(root, "report", "demo_image_auroc.md")).read()
  assert "riad" in md and "ssm" in md
  from maskjax.data.demo import DEMO_CATEGORIES
  for cat in DEMO_CATEGORIES:
    assert f"| {cat} |" in md
  assert "(n=2)" in md                                       # mean +- std over the 2 seeds
  assert os.path.getsize(os.path.join(root, "report", "demo_image_auroc.png")) > 0
