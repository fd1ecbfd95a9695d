"""Subprocess tests of the loop: SIGKILL + resume, two `jax.distributed` processes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "helpers_toy_method.py")


def _env(**extra):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  for k in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES", "MASKJAX_COORDINATOR", "MASKJAX_NUM_PROCESSES",
            "MASKJAX_PROCESS_ID"):
    env.pop(k, None)
  env.update(extra)
  return env


def _worker(workdir, out, *args, env=None, **popen):
  return subprocess.Popen([sys.executable, WORKER, "--workdir", str(workdir), "--out", str(out),
                           *map(str, args)], env=env or _env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, **popen)


def _finish(p, timeout=180):
  out, _ = p.communicate(timeout=timeout)
  assert p.returncode == 0, out[-3000:]
  return out


def _assert_same(a_path, b_path):
  a, b = np.load(a_path), np.load(b_path)
  assert sorted(a.files) == sorted(b.files)
  for k in a.files:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_sigkill_and_resume_is_bit_identical(tmp_path):
  steps = ["--steps", 16, "--checkpoint_every", 4]
  ref = _worker(tmp_path / "ref", tmp_path / "ref.npz", *steps)
  # 8 examples x 0.06 s per step: the run takes ~8 s, killed after its first checkpoint
  victim = _worker(tmp_path / "kill", tmp_path / "never.npz", *steps, "--delay", 0.06)
  ckdir = tmp_path / "kill" / "checkpoints" / "train"
  deadline = time.time() + 150
  while time.time() < deadline and victim.poll() is None:
    if ckdir.is_dir() and any(n.isdigit() and int(n) >= 4 for n in os.listdir(ckdir)):
      break
    time.sleep(0.05)
  assert victim.poll() is None, "the run ended before it could be killed: " + victim.stdout.read()
  os.kill(victim.pid, signal.SIGKILL)
  victim.wait()
  assert victim.returncode == -signal.SIGKILL
  saved = sorted(int(n) for n in os.listdir(ckdir) if n.isdigit())
  assert saved and max(saved) < 16, saved
  assert not (tmp_path / "never.npz").exists()
  out = _finish(_worker(tmp_path / "kill", tmp_path / "resumed.npz", *steps))
  assert f"resuming from step {max(saved)}" in out, out[-2000:]
  _finish(ref)
  _assert_same(tmp_path / "ref.npz", tmp_path / "resumed.npz")


def _two_processes(tmp_path, tag, *args):
  import portpicker
  port = portpicker.pick_unused_port()
  procs = [_worker(tmp_path / "w", tmp_path / f"{tag}{i}.npz", *args,
                   env=_env(MASKJAX_COORDINATOR=f"localhost:{port}", MASKJAX_NUM_PROCESSES="2",
                            MASKJAX_PROCESS_ID=str(i)))
           for i in range(2)]
  outs = []
  try:
    for p in procs:
      outs.append(_finish(p, timeout=240))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return outs


def _check_two_process_run(tmp_path, stage_dir, *args, resume=True):
  _two_processes(tmp_path, "p", *args)
  import json
  infos = [json.load(open(tmp_path / f"p{i}.npz.json")) for i in range(2)]
  assert [i["process_index"] for i in infos] == [0, 1]
  assert all(i["process_count"] == 2 and i["devices"] == 2 for i in infos)
  _assert_same(tmp_path / "p0.npz", tmp_path / "p1.npz")
  ck = tmp_path / "w" / "checkpoints" / stage_dir
  steps = sorted(n for n in os.listdir(ck) if n.isdigit())
  assert len(steps) == 1, steps
  assert sorted(os.listdir(ck / steps[0] / "data")) == [
      "commit_success.txt", "process_0-of-2.json", "process_1-of-2.json"]
  if not resume:
    return
  # a second launch resumes from that checkpoint (complete: restored, not retrained)
  outs = _two_processes(tmp_path, "r", *args)
  assert sum("complete" in o for o in outs) >= 1
  _assert_same(tmp_path / "p0.npz", tmp_path / "r0.npz")
  _assert_same(tmp_path / "r0.npz", tmp_path / "r1.npz")


def test_two_processes_toy(tmp_path):
  _check_two_process_run(tmp_path, "train", "--steps", 4, "--checkpoint_every", 100)


@pytest.mark.slow
def test_two_processes_riad_demo(tmp_path):
  """configs/riad.py:demo shrunk (32 px, widths 8, 2 steps) on the real data
  pipeline; resume is covered by the toy test (the U-Net compile dominates)."""
  pytest.importorskip("maskjax.methods.riad")
  pytest.importorskip("maskjax.data.pipeline")
  _check_two_process_run(tmp_path, "train", "--method", "riad", "--steps", 2,
                         "--checkpoint_every", 100, "--batch_size", 2, resume=False)
