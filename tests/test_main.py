"""The command line: --help, and one-line errors with exit status 2."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, cwd=ROOT, timeout=120):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "maskjax.main", *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def fake_config(tmp_path_factory):
  p = tmp_path_factory.mktemp("cfg") / "fake.py"
  p.write_text(textwrap.dedent("""
      from maskjax.config_base import base_config
      def get_config(arg=None):
        c = base_config()
        c.method.name = arg or "nosuchmethod"
        return c
  """))
  return str(p)


def _one_line_error(res):
  assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
  assert "Traceback" not in res.stderr
  err = [l for l in res.stderr.splitlines() if l.startswith("maskjax: error:")]
  assert len(err) == 1, res.stderr
  return err[0]


def test_help_lists_modes_and_flags():
  res = _run("--help")
  assert res.returncode == 0
  for word in ("--config", "--workdir", "--mode", "train", "eval", "predict", "--predict_dir",
               "--coordinator_address", "--num_processes", "--process_id"):
    assert word in res.stdout, word


def test_unknown_method(fake_config, tmp_path):
  line = _one_line_error(_run(f"--config={fake_config}:nosuchmethod", f"--workdir={tmp_path}"))
  assert "nosuchmethod" in line and "riad" in line  # names the value and the known ones


def test_unknown_config_key(fake_config, tmp_path):
  line = _one_line_error(_run(f"--config={fake_config}", f"--workdir={tmp_path}",
                              "--config.input.nosuchkey=3"))
  assert "nosuchkey" in line


def test_bad_config_value(fake_config, tmp_path):
  line = _one_line_error(_run(f"--config={fake_config}", f"--workdir={tmp_path}",
                              "--config.input.image_size=big"))
  assert "image_size" in line


def test_missing_config_file(tmp_path):
  line = _one_line_error(_run(f"--config={tmp_path}/nope.py", f"--workdir={tmp_path}"))
  assert "nope.py" in line


def test_unknown_variant_of_real_config(tmp_path):
  line = _one_line_error(_run("--config=configs/riad.py:nosuchvariant", f"--workdir={tmp_path}"))
  assert "nosuchvariant" in line


def test_missing_workdir(fake_config):
  line = _one_line_error(_run(f"--config={fake_config}:riad"))
  assert "--workdir" in line


def test_accumulation_that_does_not_divide_a_stage_batch_is_one_line(tmp_path):
  line = _one_line_error(_run("--config=configs/aca.py:demo", f"--workdir={tmp_path}",
                              "--config.optim.accum_steps=3"))
  assert "accum_steps=3" in line and "pretrain" in line and "32" in line


def test_mistyped_config_key_is_one_clean_line_with_the_closest_key(tmp_path):
  line = _one_line_error(_run("--config=riad:demo", f"--workdir={tmp_path}",
                              "--config.train.stepz=3"))
  assert line == ("maskjax: error: unknown config key 'train.stepz' (--config.train.stepz=3); "
                  "did you mean 'train.steps'?")
  line = _one_line_error(_run("--config=riad:demo", "--config.trainz.steps=3"))
  assert line.endswith("(--config.trainz.steps=3); did you mean 'train.steps'?")


PACKAGED = [f"{m}{v}" for m in ("riad", "ssm", "ear", "aca", "mala") for v in ("", ":demo")]


@pytest.mark.parametrize("spec", PACKAGED)
def test_print_config_gives_every_key_a_comment(spec):
  res = _run(f"--config={spec}", "--config.train.steps=7", "--print_config", timeout=60)
  assert res.returncode == 0, res.stderr[-2000:]
  lines = res.stdout.splitlines()
  assert "train.steps = 7  # >0 overrides the epochs-derived step count (of every stage)" in lines
  assert any(l.startswith(f"method.name = {spec.split(':')[0]!r}  # ") for l in lines)
  keys = [l.split(" = ", 1)[0] for l in lines]
  assert len(keys) == len(set(keys)) > 40 and keys == sorted(keys)
  uncommented = [l for l in lines if not l.partition("  # ")[2].strip()]
  assert not uncommented, f"{spec}: keys without a comment in config_base.py or the config file"


def test_print_config_of_a_run_recorded_before_a_key_existed(tmp_path):
  from maskjax import configs
  old = json.loads(configs.get_config("riad:demo").to_json())
  del old["input"]["decode_threads"]  # as written before the key was defined
  (tmp_path / "config.json").write_text(json.dumps(old))
  res = _run(f"--workdir={tmp_path}", "--print_config", timeout=60)
  assert res.returncode == 0, res.stderr[-2000:]
  assert any(l.startswith("input.decode_threads = 4  # ") for l in res.stdout.splitlines())
