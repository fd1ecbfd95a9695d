"""The config schema: mistyped-key suggestions, the comments `--print_config`
shows, and recorded configs that predate a key."""
from __future__ import annotations

import json
import textwrap

import pytest

from maskjax import config_base, configs
from maskjax import workdir as workdir_lib
from maskjax.errors import WorkdirError


def test_closest_key():
  c = configs.get_config("riad:demo")
  assert config_base.has_key(c, "train.steps") and not config_base.has_key(c, "train.stepz")
  assert not config_base.has_key(c, "seed.x")
  assert config_base.closest_key(c, "train.stepz") == "train.steps"
  assert config_base.closest_key(c, "trainz.stepz") == "train.steps"
  assert config_base.closest_key(c, "batch_size") == "input.batch_size"   # section left out
  assert config_base.closest_key(c, "method.loss_weights.ssimm") == "method.loss_weights.ssim"
  assert config_base.closest_key(c, "seed.x") == "seed"
  assert config_base.closest_key(c, "train.qqqqqq") is None


def test_key_comments_follow_assignments_aliases_and_literals(tmp_path):
  p = tmp_path / "cfg.py"
  p.write_text(textwrap.dedent('''
      import ml_collections
      from maskjax import config_base

      def get_config(arg=None):
        c = config_base.base_config()
        # -- model ---------------------------------------------------------
        c.model.width = 8            # channels of the first level
        # how the map is scored,
        # over two lines
        c.method.score = "max"
        c.method.bare = 1

        c.method.bare = 2            # the second assignment carries it
        p = c.method.stage = ml_collections.ConfigDict()
        p.lr = 0.1                   # lr of the stage
        c.method.weights = ml_collections.ConfigDict({"a": 1.0, "b": 2.0})  # loss weights
        if arg == "demo":
          c.model.width = 4          # a variant's own note is not the key's
        return c
  '''))
  got = config_base.key_comments(str(p))
  assert got["model.width"] == "channels of the first level"
  assert got["method.score"] == "how the map is scored, over two lines"
  assert got["method.bare"] == "the second assignment carries it"
  assert got["method.stage.lr"] == "lr of the stage"
  assert got["method.weights.a"] == got["method.weights.b"] == "loss weights"
  assert "-- model" not in " ".join(got.values())
  lines = config_base.describe(configs.load_module(str(p)).get_config(), str(p))
  assert "model.width = 8  # channels of the first level" in lines
  assert "input.batch_size = 8  # global training batch (all devices and hosts together)" in lines


def test_a_recorded_config_without_a_newer_key_is_the_same_run(tmp_path):
  config = configs.get_config("riad:demo")
  old = json.loads(config.to_json())
  del old["input"]["decode_threads"], old["optim"]["momentum"]  # written before they existed
  text = json.dumps(old)
  (tmp_path / "config.json").write_text(text)
  loaded = workdir_lib.load_run_config(str(tmp_path))
  assert loaded.input.decode_threads == 4 and loaded.optim.momentum == 0.9
  workdir_lib.check(config, str(tmp_path))  # no recipe change to refuse
  assert (tmp_path / "config.json").read_text() == text  # nor a new phase
  assert not (tmp_path / "config.1.json").exists()
  assert workdir_lib.config_phases(str(tmp_path)) == [{"file": "config.json", "changed": {}}]


def _delete(tree: dict, dotted: str) -> None:
  *parents, leaf = dotted.split(".")
  for part in parents:
    tree = tree[part]
  del tree[leaf]


def test_method_keys_newer_than_a_recorded_run_read_as_the_previous_code(tmp_path):
  """A run recorded before a method-config key existed behaved as that key's
  RECORDED_DEFAULTS value says (the demo variants still set those values); the
  filled-in config builds the same method as the demo and is no recipe change."""
  import importlib
  for name in ("riad", "ssm", "ear", "aca", "mala"):
    recorded = importlib.import_module(f"maskjax.configs.{name}").RECORDED_DEFAULTS
    assert recorded, name
    config = configs.get_config(f"{name}:demo")
    old = json.loads(config.to_json())
    for dotted in recorded:
      _delete(old, dotted)                                 # written before the keys existed
    run = tmp_path / name
    run.mkdir()
    (run / "config.json").write_text(json.dumps(old))
    loaded = workdir_lib.load_run_config(str(run))
    for dotted, value in recorded.items():
      node = loaded
      for part in dotted.split("."):
        node = node[part]
      assert node == value, (name, dotted, node, value)
    # the demo keeps the previous behaviour, except where its recipe moved on after the
    # key existed: the recorded run reads as the demo config outside those keys
    moved = DEMO_MOVED_ON.get(name, set())
    for dotted in moved:
      node = config
      for part in dotted.split("."):
        node = node[part]
      assert node != recorded[dotted], (name, dotted, "no longer differs from the recorded value")
    want, got = json.loads(config.to_json()), json.loads(loaded.to_json())
    for dotted in moved:
      _delete(want, dotted)
      _delete(got, dotted)
    assert got == want, name
    if not moved:
      workdir_lib.check(config, str(run), write=False)   # no recipe change to refuse
    else:
      with pytest.raises(WorkdirError, match=sorted(moved)[0]):
        workdir_lib.check(config, str(run), write=False)


# demo values that differ from what a run recorded before the key did (the key came first,
# the demo took a new value later): such a run is refused by `workdir.check` as a change
DEMO_MOVED_ON = {"mala": {"method.map_sigma"}}
