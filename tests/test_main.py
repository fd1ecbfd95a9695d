"""The command line: --help, and one-line errors with exit status 2."""
from __future__ import annotations

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


def test_accumulation_refused_by_a_method_without_it(tmp_path):
  line = _one_line_error(_run("--config=configs/aca.py:demo", f"--workdir={tmp_path}",
                              "--config.optim.accum_steps=2"))
  assert "accum_steps=2" in line and "aca" in line
