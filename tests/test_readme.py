"""Every command in the README refers to something that exists and starts.

The commands themselves are exercised for real elsewhere (the demo configs by
the method tests, sweep/report by test_sweep_report and the demo-sweep test,
dataset check by tests/data, conversion by tests/weights, launch scripts by
test_train*); this test keeps the README honest when names change.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _commands():
  text = open(os.path.join(ROOT, "README.md")).read()
  cmds = []
  for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
    joined = block.replace("\\\n", " ")
    for line in joined.splitlines():
      line = line.split("  #")[0].strip()
      if line and not line.startswith("#"):
        cmds.append(line)
  return cmds


COMMANDS = _commands()


def test_readme_has_the_two_setup_commands():
  assert "make demo" in COMMANDS[:2] and "make test" in COMMANDS[:2]
  makefile = open(os.path.join(ROOT, "Makefile")).read()
  assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
  ci = open(os.path.join(ROOT, ".ci", "run")).read()
  assert "make test" in ci


def _modules():
  mods = set()
  for c in COMMANDS:
    m = re.search(r"python -m (maskjax[\w.]*)", c)
    if m:
      mods.add(m.group(1))
  return sorted(mods)


@pytest.mark.parametrize("module", _modules())
def test_module_commands_start(module):
  assert importlib.util.find_spec(module) is not None, module
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  res = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
  assert res.returncode == 0, res.stderr[-2000:]


def test_config_files_and_scripts_exist():
  from ml_collections import config_flags  # noqa: F401  (loader used by main)
  seen = 0
  for c in COMMANDS:
    for tok in shlex.split(c):
      if "<" in tok:  # a placeholder such as configs/<method>.py
        continue
      for prefix in ("--config=", "--sweep="):
        if tok.startswith(prefix):
          path = tok[len(prefix):].split(":")[0]
          assert os.path.isfile(os.path.join(ROOT, path)), (c, path)
          seen += 1
      if tok.startswith("launch/") or tok.startswith("benchmarks/"):
        assert os.path.isfile(os.path.join(ROOT, tok)), (c, tok)
        seen += 1
  assert seen > 5


def test_config_variants_in_readme_load():
  import importlib.util as iu
  for c in COMMANDS:
    for tok in shlex.split(c):
      if "<" in tok:
        continue
      if tok.startswith("--config=configs/"):
        path, _, arg = tok[len("--config="):].partition(":")
        spec = iu.spec_from_file_location("cfg", os.path.join(ROOT, path))
        mod = iu.module_from_spec(spec)
        spec.loader.exec_module(mod)
        cfg = mod.get_config(arg or None)
        assert cfg.method.name


def test_config_keys_in_readme_and_docs_exist():
  from maskjax import config_base, configs
  known = set()
  for name in configs.METHOD_CONFIGS:
    for variant in configs.load_module(os.path.join(configs.CONFIG_DIR, f"{name}.py")).VARIANTS:
      known.update(k for k, _ in config_base.flat_keys(configs.get_config(f"{name}:{variant}")))
  docs = [os.path.join(ROOT, "README.md")] + [
      os.path.join(ROOT, "docs", f) for f in os.listdir(os.path.join(ROOT, "docs"))
      if f.endswith(".md")]
  named = set()
  for path in docs:
    with open(path, encoding="utf-8") as f:
      named.update(re.findall(r"--config\.([a-z_][\w.]*[a-z0-9_])", f.read()))
  assert named, "no --config.<key> in the docs"
  not_keys = {"key", "train.stepz"}  # the --config.key=value placeholder, the mistyped-key example
  assert sorted(k for k in named - not_keys if k not in known) == []
