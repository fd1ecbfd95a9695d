"""Fault injection on tiny runs: every fault ends in its documented result.

Each case asserts the exit code (2 for a user-facing error), that the one-line
message names the cause, and that nothing outside the workdir / cache changed.
Runs use the toy method (tests/helpers_toy_method.py) in a subprocess where a
process must die or hit an OS limit, in-process otherwise.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile

import numpy as np
import pytest

import helpers_toy_method as toy
from maskjax import checkpoint as ckpt_lib
from maskjax import fileio, runner
from maskjax import workdir as workdir_lib
from maskjax.data import archives
from maskjax.errors import CheckpointError, ConfigError, DataError, WorkdirError

from test_train_multiprocess import WORKER, _env  # the toy worker and its clean environment
from helpers_xla_cache import read_only  # processes killed or denied writes: no cache writes


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------

def _worker(workdir, *args, out=None, env=None, wait=True, timeout=240):
  cmd = [sys.executable, WORKER, "--workdir", str(workdir),
         "--out", str(out or os.path.join(str(workdir) + ".npz")), *map(str, args)]
  p = subprocess.Popen(cmd, env=env or _env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True)
  if not wait:
    return p
  out, err = p.communicate(timeout=timeout)
  return p.returncode, out, err


def _error_line(err: str) -> str:
  lines = [ln for ln in err.splitlines() if ln.startswith("maskjax: error:")]
  assert len(lines) == 1, err[-3000:]
  return lines[0]


def _snapshot(root) -> dict:
  """{relative path: (size, mtime_ns)} of every file under `root`."""
  out = {}
  for dirpath, _, files in os.walk(root):
    for f in files:
      p = os.path.join(dirpath, f)
      try:
        st = os.lstat(p)
      except OSError:
        continue
      out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns)
  return out


def _outside(before: dict, after: dict, inside: tuple[str, ...]) -> list[str]:
  """Files created or changed under the snapshot root but not under `inside`."""
  changed = [k for k in after if before.get(k) != after[k]]
  return [k for k in changed if not k.startswith(inside)]


def _toy(**kw):
  kw.setdefault("eval.plots", False)
  return toy.toy_config(**kw)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """A trained and evaluated toy run (12 steps, checkpoints at 4, 8, 12)."""
  wd = tmp_path_factory.mktemp("finished") / "run"
  runner.run(_toy(), str(wd), data=toy.ToyData())
  return wd


# ----------------------------------------------------------------------------
# 1. concurrent use of a workdir
# ----------------------------------------------------------------------------
def test_second_train_run_fails_at_once_naming_the_holder(tmp_path):
  wd = tmp_path / "run"
  holder = _worker(wd, "--steps", 2000, "--checkpoint_every", 8, "--delay", 0.05, wait=False,
                   out=tmp_path / "holder.npz", env=read_only(_env()))  # killed below
  lock = wd / workdir_lib.LOCK_NAME
  deadline = time.time() + 120
  # the holder takes the lock, then writes its config.json: wait for both (a
  # slow machine can take seconds in between)
  while time.time() < deadline and holder.poll() is None:
    if lock.exists() and lock.read_text().strip() and (wd / "config.json").exists():
      break
    time.sleep(0.05)
  assert holder.poll() is None, "the first run ended before the second started"
  before = _snapshot(tmp_path)
  t0 = time.perf_counter()
  rc, _, err = _worker(wd, "--steps", 2000, "--checkpoint_every", 8, out=tmp_path / "second.npz")
  took = time.perf_counter() - t0
  still_running = holder.poll() is None
  holder.kill()
  holder.wait()
  assert still_running, "the first run ended before the second was refused"
  line = _error_line(err)
  assert rc == 2 and "in use by another maskjax run" in line
  assert f"pid {holder.pid}" in line and "mode train" in line, line
  # the second run wrote nothing (no config.json, metrics, checkpoints of its own)
  after = _snapshot(tmp_path)
  assert not _outside(before, after, ("run" + os.sep,)), "wrote outside the workdir"
  assert after["run/config.json"] == before["run/config.json"], "config.json overwritten"
  assert took < 60


def test_eval_refused_while_a_run_holds_the_workdir(finished_run):
  with workdir_lib.WorkdirLock(str(finished_run), mode="train"):
    with pytest.raises(WorkdirError, match=f"pid {os.getpid()}"):
      runner.run(_toy(), str(finished_run), mode="eval", data=toy.ToyData())


def test_lock_released_when_the_holder_is_killed(tmp_path):
  wd = tmp_path / "run"
  holder = _worker(wd, "--steps", 200, "--checkpoint_every", 1000, "--delay", 0.05, wait=False,
                   env=read_only(_env()))
  lock = wd / workdir_lib.LOCK_NAME
  deadline = time.time() + 120
  while time.time() < deadline and not (lock.exists() and lock.read_text().strip()):
    time.sleep(0.05)
  os.kill(holder.pid, signal.SIGKILL)
  holder.wait()
  with workdir_lib.WorkdirLock(str(wd), mode="train"):  # the kernel dropped the lock
    pass


def test_read_only_opens_keep_a_live_save(finished_run):
  """Eval, predict and completeness checks never clean up a save in flight."""
  ck = finished_run / "checkpoints" / "train"
  live = ck / "16.orbax-checkpoint-tmp"
  (live / "state").mkdir(parents=True)
  (live / "state" / "part").write_bytes(b"in flight")
  try:
    runner.run(_toy(), str(finished_run), mode="eval", data=toy.ToyData())
    c = ckpt_lib.StageCheckpointer(str(ck), read_only=True)
    assert c.latest_step() == 12
    c.close()
    assert (live / "state" / "part").read_bytes() == b"in flight"
  finally:
    shutil.rmtree(live, ignore_errors=True)


# ----------------------------------------------------------------------------
# kill -9 at save points, bit-identical resume, metrics.jsonl without repeats
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("point", ["during_save", "after_commit"])
def test_kill_at_save_point_resumes_bit_identical(tmp_path, point):
  args = ("--steps", 12, "--checkpoint_every", 4)
  # the uninterrupted reference run is independent of the victim: it runs beside it
  with open(tmp_path / "ref.log", "w") as log:
    ref = subprocess.Popen([sys.executable, WORKER, "--workdir", str(tmp_path / "ref"), "--out",
                            str(tmp_path / "ref.npz"), *map(str, args)], env=_env(),
                           stdout=log, stderr=subprocess.STDOUT, text=True)
  try:
    victim = _worker(tmp_path / "kill", *args, "--delay", 0.04, wait=False,
                     env=read_only(_env()))
    ck = tmp_path / "kill" / "checkpoints" / "train"
    deadline = time.time() + 150
    while time.time() < deadline and victim.poll() is None:
      names = os.listdir(ck) if ck.is_dir() else []
      if point == "during_save" and any("tmp" in n for n in names):
        break
      if point == "after_commit" and any(n.isdigit() for n in names):
        break
      time.sleep(0.005)
    assert victim.poll() is None, "the run ended before it could be killed"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    rc, _, err = _worker(tmp_path / "kill", *args, out=tmp_path / "resumed.npz")
    assert rc == 0, err[-3000:]
    assert ref.wait(timeout=240) == 0, (tmp_path / "ref.log").read_text()[-2000:]
  finally:
    if ref.poll() is None:
      ref.kill()
      ref.wait()
  a, b = np.load(tmp_path / "ref.npz"), np.load(tmp_path / "resumed.npz")
  for k in a.files:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  steps = [json.loads(ln)["step"] for ln in open(tmp_path / "kill" / "metrics.jsonl")]
  assert steps == sorted(set(steps)), steps


# ----------------------------------------------------------------------------
# disk full, read-only directories
# ----------------------------------------------------------------------------
def test_disk_full_on_save_is_one_line_with_the_last_good_step(tmp_path):
  """A file-size limit makes the checkpoint's data files fail with EFBIG, as a
  full disk fails with ENOSPC (config.json and the logs stay under it)."""
  wd = tmp_path / "run"
  # ulimit -f counts 512-byte blocks; SIGXFSZ ignored so write() returns EFBIG
  cmd = ["sh", "-c", 'ulimit -f 40 && trap "" XFSZ && exec "$@"', "sh", sys.executable, WORKER,
         "--workdir", str(wd), "--out", str(tmp_path / "o.npz"), "--steps", "8",
         "--checkpoint_every", "4"]
  p = subprocess.run(cmd, env=read_only(_env()), capture_output=True, text=True, timeout=240)
  rc, err = p.returncode, p.stderr
  line = _error_line(err)
  assert rc == 2, err[-2000:]
  assert "saving step 4" in line and "File too large" in line, line
  assert "last good checkpoint: none" in line
  assert err.strip().splitlines()[-1] == line  # the cause is the last thing said
  # nothing committed; the next run (no limit) trains from scratch and finishes
  rc, _, err = _worker(wd, "--steps", 8, "--checkpoint_every", 4)
  assert rc == 0, err[-2000:]


def _read_only_mount(path):
  """Command prefix that runs a command with `path` bind-mounted read-only in a
  private mount namespace (permission bits do not stop root; a read-only
  mount stops everyone, and it vanishes with the process)."""
  if shutil.which("unshare") is None:
    pytest.skip("needs util-linux unshare for a read-only mount")
  user_ns = [] if os.geteuid() == 0 else ["-r"]
  probe = subprocess.run(["unshare", *user_ns, "-m", "true"], capture_output=True)
  if probe.returncode != 0:
    pytest.skip(f"cannot create a mount namespace here: {probe.stderr.decode().strip()}")
  script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" "$1" && shift && exec "$@"'
  return ["unshare", *user_ns, "-m", "sh", "-c", script, "sh", str(path)]


def _worker_read_only(workdir, *args, out):
  cmd = [*_read_only_mount(workdir), sys.executable, WORKER, "--workdir", str(workdir),
         "--out", str(out), *map(str, args)]
  p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
  return p.returncode, p.stdout, p.stderr


def test_read_only_workdir_train_and_eval(tmp_path):
  wd = tmp_path / "run"
  rc, _, err = _worker(wd, "--steps", 4, "--checkpoint_every", 4, "--evaluate")
  assert rc == 0, err[-2000:]
  before = _snapshot(wd)
  o = tmp_path / "o.npz"
  rc, _, err = _worker_read_only(wd, "--steps", 4, "--checkpoint_every", 4, out=o)
  line = _error_line(err)
  assert rc == 2 and "--workdir" in line and "not writable" in line, line
  assert "Read-only file system" in line
  rc, out, err = _worker_read_only(wd, "--mode", "eval", "--steps", 4, out=o)
  line = _error_line(err)
  assert rc == 2 and "not writable" in line, line
  assert "report:" not in out  # refused before any work
  # with an output directory elsewhere, eval of a read-only run works
  rc, out, err = _worker_read_only(wd, "--mode", "eval", "--steps", 4, "--output_dir",
                                   tmp_path / "eval_elsewhere", out=o)
  assert rc == 0, err[-2000:]
  assert (tmp_path / "eval_elsewhere" / "results.json").exists()
  assert (tmp_path / "eval_elsewhere" / "calibration.json").exists()
  assert _snapshot(wd) == before


def test_output_dir_that_is_a_file_is_refused_before_work(finished_run, tmp_path):
  f = tmp_path / "taken"
  f.write_text("x")
  with pytest.raises(WorkdirError, match="is a file"):
    runner.run(_toy(), str(finished_run), mode="eval", data=toy.ToyData(), output_dir=str(f))


# ----------------------------------------------------------------------------
# resume with a changed recipe
# ----------------------------------------------------------------------------
def test_recipe_change_on_resume_refuses_or_keeps_history(tmp_path):
  wd = tmp_path / "run"
  runner.run(_toy(**{"train.steps": 4}), str(wd), data=toy.ToyData(), evaluate_after_train=False)
  before = (wd / "config.json").read_text()
  changed = _toy(**{"train.steps": 8, "optim.lr": 5e-3, "input.batch_size": 4})
  with pytest.raises(WorkdirError) as e:
    runner.run(changed, str(wd), data=toy.ToyData())
  msg = str(e.value)
  assert "optim.lr" in msg and "input.batch_size" in msg and "--allow_config_change" in msg
  assert "train.steps" not in msg  # extending a run is not a recipe change
  assert (wd / "config.json").read_text() == before  # nothing overwritten
  res = runner.run(changed, str(wd), data=toy.ToyData(), allow_config_change=True)
  assert (wd / "config.1.json").exists()
  assert json.loads((wd / "config.1.json").read_text())["optim"]["lr"] == 1e-2
  assert json.loads((wd / "config.json").read_text())["optim"]["lr"] == 5e-3
  md = open(res["report_md"]).read()
  assert "Config phases" in md and "optim.lr 0.01 -> 0.005" in md
  phases = json.load(open(res["report_json"]))["run_info"]["config_phases"]
  assert [p["file"] for p in phases] == ["config.1.json", "config.json"]


def test_identity_change_is_always_refused(tmp_path):
  wd = tmp_path / "run"
  runner.run(_toy(**{"train.steps": 2}), str(wd), data=toy.ToyData(), evaluate_after_train=False)
  with pytest.raises(WorkdirError, match="different run.*seed"):
    runner.run(_toy(**{"train.steps": 2, "seed": 5}), str(wd), data=toy.ToyData(),
              allow_config_change=True)


# ----------------------------------------------------------------------------
# config values checked at load time
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("key,value,words", [
    ("eval.threshold_quantile", 1.5, "eval.threshold_quantile=1.5 must be in (0.0, 1.0]"),
    ("input.val_fraction", 1.0, "input.val_fraction=1.0"),
    ("train.compute_dtype", "fp16", "train.compute_dtype='fp16'"),
    ("input.mask_values", "gray", "input.mask_values='gray'"),
])
def test_bad_config_value_fails_before_any_work(tmp_path, key, value, words):
  wd = tmp_path / "run"
  with pytest.raises(ConfigError) as e:
    runner.run(_toy(**{key: value}), str(wd), data=toy.ToyData())
  assert words in str(e.value)
  assert not wd.exists()


def test_empty_validation_split_fails_before_training(tmp_path):
  wd = tmp_path / "run"
  with pytest.raises(ConfigError, match="validation split is empty"):
    runner.run(_toy(), str(wd), data=toy.ToyData(num_val=0))
  assert not (wd / "checkpoints").exists()


# ----------------------------------------------------------------------------
# archives
# ----------------------------------------------------------------------------
def _tar(path, members):
  """members: (name, kind, payload): kind file | dir | sym."""
  with tarfile.open(path, "w") as tf:
    for name, kind, payload in members:
      ti = tarfile.TarInfo(name)
      if kind == "file":
        data = payload.encode()
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
      elif kind == "dir":
        ti.type = tarfile.DIRTYPE
        tf.addfile(ti)
      else:
        ti.type, ti.linkname = tarfile.SYMTYPE, payload
        tf.addfile(ti)


def _extract(tmp_path, arc):
  cache = tmp_path / "cache"
  before = _snapshot(tmp_path)
  try:
    archives.extract(str(arc), str(cache))
  finally:
    assert not _outside(before, _snapshot(tmp_path), ("cache" + os.sep,)), "escaped the cache"


def test_symlink_chain_is_refused_before_extraction(tmp_path):
  arc = tmp_path / "chain.tar"
  _tar(arc, [("a", "dir", None), ("a/l", "sym", ".."), ("a/l/l2", "sym", ".."),
             ("a/l/l2/escaped.txt", "file", "pwned")])
  with pytest.raises(DataError, match="lies under the link member 'a/l'"):
    _extract(tmp_path, arc)
  assert not (tmp_path / "escaped.txt").exists() and not (tmp_path.parent / "escaped.txt").exists()
  assert not any(n.startswith(".extract-") for n in os.listdir(tmp_path / "cache" / "archives"))


def test_tar_refused_without_the_data_filter(tmp_path, monkeypatch):
  arc = tmp_path / "ok.tar"
  _tar(arc, [("x/a.txt", "file", "a")])
  monkeypatch.delattr(tarfile, "data_filter")
  with pytest.raises(DataError, match="no tarfile 'data' extraction filter"):
    _extract(tmp_path, arc)


@pytest.mark.parametrize("kind", ["tar", "tar.xz"])
def test_truncated_tar_is_a_data_error(tmp_path, kind):
  arc = tmp_path / f"ds.{kind}"
  mode = "w:xz" if kind == "tar.xz" else "w"
  rng = np.random.default_rng(0)
  with tarfile.open(arc, mode) as tf:
    for i in range(3):
      data = rng.integers(0, 255, 20_000, dtype=np.uint8).tobytes()
      ti = tarfile.TarInfo(f"ds/f{i}.bin")
      ti.size = len(data)
      tf.addfile(ti, io.BytesIO(data))
  data = arc.read_bytes()
  arc.write_bytes(data[: len(data) // 2])
  with pytest.raises(DataError) as e:
    _extract(tmp_path, arc)
  assert str(arc) in str(e.value) and "truncated" in str(e.value).lower()


def test_zip_with_bad_crc_names_the_member(tmp_path):
  arc = tmp_path / "ds.zip"
  with zipfile.ZipFile(arc, "w", zipfile.ZIP_STORED) as zf:
    zf.writestr("ds/a.txt", "hello world, " * 50)
  data = bytearray(arc.read_bytes())
  i = data.find(b"hello world")
  data[i] ^= 0xFF  # stored payload changed, CRC kept
  arc.write_bytes(bytes(data))
  with pytest.raises(DataError, match=r"member 'ds/a.txt'.*(CRC|crc)"):
    _extract(tmp_path, arc)


def test_zip_with_a_file_where_a_directory_must_be(tmp_path):
  arc = tmp_path / "ds.zip"
  with zipfile.ZipFile(arc, "w") as zf:
    zf.writestr("ds/train", "a file")
    zf.writestr("ds/train/good/0.png", "x")
  with pytest.raises(DataError, match="member 'ds/train/good/0.png'"):
    _extract(tmp_path, arc)


def test_extraction_checks_free_space(tmp_path, monkeypatch):
  arc = tmp_path / "ds.tar"
  _tar(arc, [("ds/a.txt", "file", "a" * 1000)])
  real = shutil.disk_usage
  monkeypatch.setattr(archives.shutil, "disk_usage",
                      lambda p: real(p)._replace(free=archives.FREE_SPACE_MARGIN + 10))
  with pytest.raises(DataError, match="GiB free"):
    _extract(tmp_path, arc)


def test_bad_archive_through_the_cli_is_one_line_exit_2(tmp_path):
  arc = tmp_path / "ds.tar.xz"
  arc.write_bytes(b"\xfd7zXZ\x00" + b"\x00" * 40)
  r = subprocess.run([sys.executable, "-m", "maskjax.data.check", str(arc)], env=_env(),
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 2, r.stdout + r.stderr
  assert len(r.stderr.strip().splitlines()) == 1 and str(arc) in r.stderr


# ----------------------------------------------------------------------------
# silently wrong data
# ----------------------------------------------------------------------------
def _mvtec(root, *, mask: np.ndarray):
  from PIL import Image
  rng = np.random.default_rng(0)
  for split, names in (("train/good", range(4)), ("test/good", range(2)), ("test/crack", [0])):
    d = root / "cat" / split
    d.mkdir(parents=True, exist_ok=True)
    for i in names:
      Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(d / f"{i:03d}.png")
  g = root / "cat" / "ground_truth" / "crack"
  g.mkdir(parents=True)
  Image.fromarray(mask).save(g / "000_mask.png")
  return root


def _input(root, **kw):
  from maskjax.config_base import base_config
  c = base_config().input
  c.update({"format": "mvtec", "data_dir": str(root), "categories": ("*",), "val_fraction": 0.25})
  c.update(kw)
  return c


@pytest.mark.parametrize("name", ["gradient", "mask_plus_noise"])
def test_non_binary_masks_are_reported(tmp_path, name):
  from maskjax.data import check, sources
  if name == "gradient":
    mask = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))
  else:
    mask = np.zeros((16, 16), np.uint8)
    mask[4:8, 4:8] = 255
    mask += np.random.default_rng(0).integers(0, 4, (16, 16), dtype=np.uint8) * (mask == 0)
  root = _mvtec(tmp_path / "ds", mask=mask)
  with pytest.raises(DataError, match="not a binary mask"):
    sources.load_splits(_input(root), 0)
  assert check.main([str(root)]) == 1
  s = sources.load_splits(_input(root, skip_bad_files=True), 0)  # skipped and counted
  assert all(r.defect == "good" for r in s.test)
  s = sources.load_splits(_input(root, mask_values="labels"), 0)  # declared label maps
  assert any(r.defect == "crack" for r in s.test)


@pytest.mark.parametrize("kind", ["dangling", "loop"])
def test_broken_links_are_reported(tmp_path, kind, caplog):
  import logging

  from maskjax.data import check, sources
  mask = np.zeros((16, 16), np.uint8)
  mask[2:5, 2:5] = 255
  root = _mvtec(tmp_path / "ds", mask=mask)
  link = root / "cat" / "train" / "good" / "009.png"
  if kind == "dangling":
    os.symlink(tmp_path / "nowhere.png", link)
  else:
    os.symlink(link, link)
  with pytest.raises(DataError) as e:
    sources.load_splits(_input(root), 0)
  assert str(link) in str(e.value)
  assert ("dangling symbolic link" if kind == "dangling" else "symbolic link loop") in str(e.value)
  assert check.main([str(root)]) == 1
  with caplog.at_level(logging.WARNING):
    s = sources.load_splits(_input(root, skip_bad_files=True), 0)
  assert len(s.train) + len(s.val) == 4
  assert "skipped 1 of 8 images" in caplog.text


def test_category_with_one_training_image_fails_at_load(tmp_path):
  from maskjax.data import sources
  mask = np.zeros((16, 16), np.uint8)
  mask[2:5, 2:5] = 255
  root = _mvtec(tmp_path / "ds", mask=mask)
  for i in range(1, 4):
    os.remove(root / "cat" / "train" / "good" / f"{i:03d}.png")
  with pytest.raises(DataError, match="'cat' has 1 training image; at least 2"):
    sources.load_splits(_input(root), 0)


# ----------------------------------------------------------------------------
# small losses
# ----------------------------------------------------------------------------
def test_predict_keeps_one_heatmap_per_file_and_writes_where_asked(finished_run, tmp_path):
  from PIL import Image
  imgs = tmp_path / "imgs"
  imgs.mkdir()
  rng = np.random.default_rng(0)
  for name in ("a.png", "a.jpg"):
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(imgs / name)
  out = tmp_path / "pred"
  res = runner.run(_toy(), str(finished_run), mode="predict", predict_dir=str(imgs),
                  output_dir=str(out))
  assert sorted(os.listdir(out)) == ["a.jpg_overlay.png", "a.png_overlay.png", "scores.csv"]
  assert res["out_dir"] == str(out)


def test_init_from_on_a_method_without_pretrained_parts(tmp_path):
  from maskjax.methods import DataInfo, build_method
  from configs import riad
  cfg = riad.get_config("demo")
  cfg.model.init_from = str(tmp_path / "garbage")
  with pytest.raises(ConfigError, match="no pretrained part"):
    build_method(cfg, DataInfo.uniform(("dahlia",), 8, 64))


def test_corrupt_weights_metadata(tmp_path):
  from maskjax import weights
  (tmp_path / "maskjax_weights.json").write_text("{not json")
  with pytest.raises(CheckpointError, match="maskjax_weights.json is not readable JSON"):
    weights.read_meta(str(tmp_path))


@pytest.mark.parametrize("bad", ["nan", "int", "complex"])
def test_convert_refuses_damaged_tensors(tmp_path, bad):
  torch = pytest.importorskip("torch")
  from maskjax.weights import convert
  t = {"nan": torch.tensor([1.0, float("nan")]), "int": torch.tensor([1, 2]),
       "complex": torch.tensor([1 + 2j])}[bad]
  path = tmp_path / "w.pth"
  torch.save({"blocks.0.w": t}, path)
  with pytest.raises(CheckpointError, match="blocks.0.w"):
    convert.load_torch_state_dict(str(path))


def test_atomic_writes_leave_no_partial_file(tmp_path):
  target = tmp_path / "calibration.json"
  fileio.write_json(str(target), {"a": 1})
  with pytest.raises(RuntimeError):
    with fileio.atomic_open(str(target)) as f:
      f.write('{"a": 2, "half')
      raise RuntimeError("killed mid-write")
  assert json.loads(target.read_text()) == {"a": 1}
  assert os.listdir(tmp_path) == ["calibration.json"]
