"""Stage durations resolved by the loop from the data (`maskjax.durations`).

A generated MVTec-layout dataset with 20 / 30 / 40 training images in three
categories goes through the loop's data path (`load_splits` ->
`data_info.from_splits`), and every method's full config resolves its stages
to the steps that its epochs (or balanced quota) and batch imply.
"""
from __future__ import annotations

import math
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import stage_helpers  # noqa: E402

from maskjax import configs, data_info, durations, train_state  # noqa: E402
from maskjax.data import sources  # noqa: E402
from maskjax.errors import ConfigError  # noqa: E402
from maskjax.methods import build_method  # noqa: E402

COUNTS = {"a": 20, "b": 30, "c": 40}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
  return stage_helpers.write_counts_dataset(tmp_path_factory.mktemp("mvtec"), COUNTS)


def _info(config, root):
  if config.method.name == "mala":
    config.method.builtin_textures = True  # no DTD here (durations do not depend on it)
  config.input.data_dir = root
  config.input.format = "mvtec"
  config.input.categories = ("*",)
  config.input.val_fraction = 0.0
  return data_info.from_splits(sources.load_splits(config.input, 0), config)


def _resolved(name, root, **train):
  c = configs.get_config(name)
  info = _info(c, root)
  for k, v in train.items():
    c.train[k] = v
  return c, info, train_state.resolve_stages(build_method(c, info), c)


def test_data_info_from_the_loaded_splits(dataset):
  c = configs.get_config("riad")
  info = _info(c, dataset)
  assert info.categories == ("a", "b", "c")
  assert dict(info.num_train) == COUNTS and info.total_train == 90
  assert info.image_size == 256 and set(info.datasets.values()) == {"mvtec"}


@pytest.mark.parametrize("name", ["riad", "ssm", "ear"])
def test_epochs_over_the_training_split(name, dataset):
  c, info, (stage,) = _resolved(name, dataset)
  per_epoch = math.ceil(90 / int(c.input.batch_size))           # 90 images, batch 8: 12
  assert stage.steps_per_epoch == per_epoch == 12
  assert stage.steps == int(c.train.epochs) * per_epoch == 300 * 12
  if name == "ssm":   # lr halved every 50 epochs
    assert durations.optimizer_config(stage, c).decay_every == 50 * 12


def test_aca_epochs_and_warmup_epochs(dataset):
  c, _, (pre, fine) = _resolved("aca", dataset)
  assert pre.steps_per_epoch == math.ceil(90 / 16) == 6
  assert (pre.steps, fine.steps) == (300 * 6, 100 * 6)
  assert durations.optimizer_config(pre, c).warmup_steps == 10 * 6


def test_mala_balanced_quota(dataset):
  _, _, (s1, s2) = _resolved("mala", dataset)
  assert s1.steps == 2000 * math.ceil(200 * 3 / 128) and s1.samples_per_epoch == 200
  assert s2.steps == 700 * math.ceil(80 * 3 / 32) and s2.samples_per_epoch == 80


@pytest.mark.parametrize("name", ["riad", "aca", "mala"])
def test_train_steps_overrides_every_stage(name, dataset):
  c, _, stages = _resolved(name, dataset, steps=7)
  assert all(s.steps == 7 for s in stages)
  if name == "aca":   # a fixed-step stage warms up for its warmup_fraction of the steps
    assert durations.optimizer_config(stages[0], c).warmup_steps == round(
        7 * c.method.pretrain.warmup_fraction)


def test_no_duration_names_the_keys():
  c = configs.get_config("riad")
  c.train.epochs = 0
  info = stage_helpers.data_info(c)
  with pytest.raises(ConfigError, match=r"train\.steps.*epochs"):
    train_state.resolve_stages(build_method(c, info), c)


@pytest.mark.parametrize("name", ["riad", "ssm", "ear", "aca", "mala"])
def test_global_overrides_reach_every_stage(name, dataset):
  """optim.lr, input.batch_size, train.epochs set globally apply to every stage,
  also of the methods whose stages have their own keys."""
  c = configs.get_config(name)
  info = _info(c, dataset)
  c.optim.lr, c.input.batch_size, c.train.epochs = 0.0123, 6, 3
  stages = train_state.resolve_stages(build_method(c, info), c)
  for s in stages:
    assert s.batch_size == 6
    assert durations.optimizer_config(s, c).lr == pytest.approx(0.0123)
    per_epoch = math.ceil((s.duration.samples_per_category * 3 or 90) / 6)
    assert s.steps == 3 * per_epoch, s.name
