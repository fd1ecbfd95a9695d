"""`--mode=plan` (`maskjax.plan`): the full configs' recipes resolved on a
generated MVTec-layout dataset (20 / 30 / 40 training images in three
categories) and on an MVTec AD + VisA layout, nothing trained; and the
refusal to train from random weights where the paper starts from
pretrained ones."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import stage_helpers  # noqa: E402

from maskjax import configs, runner  # noqa: E402
from maskjax.data import demo  # noqa: E402
from maskjax.errors import ConfigError  # noqa: E402

COUNTS = {"a": 20, "b": 30, "c": 40}
# the papers' epochs per stage and batch (full configs)
PAPER = {"riad": {"train": (300, 8)}, "ssm": {"train": (300, 8)}, "ear": {"train": (300, 8)},
         "aca": {"pretrain": (300, 16), "finetune": (100, 16)}}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
  return stage_helpers.write_counts_dataset(tmp_path_factory.mktemp("mvtec"), COUNTS)


def _plan(name, root, workdir, **overrides):
  c = configs.get_config(name)
  c.input.data_dir = root
  for k, v in overrides.items():
    section, key = k.split(".")
    c[section][key] = v
  return runner.run(c, str(workdir), mode="plan")


def _trained_images(config, n: int) -> int:
  """Training images of a category of n normals under the config's split."""
  if config.input.train_on_val:
    return n
  return n - min(max(1, round(float(config.input.val_fraction) * n)), n - 1)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_epochs_become_steps_per_category(name, dataset, tmp_path):
  res = _plan(name, dataset, tmp_path)
  plan = res["plan"]
  c = configs.get_config(name)
  assert plan["protocol"].startswith("per_category: 3 models")
  assert [u["unit"] for u in plan["units"]] == ["a", "b", "c"]
  for unit in plan["units"]:
    n = _trained_images(c, COUNTS[unit["unit"]])
    assert unit["train_images"] == {unit["unit"]: n}
    for stage in unit["stages"]:
      epochs, batch = PAPER[name][stage["stage"]]
      assert (stage["epochs"], stage["batch"]) == (epochs, batch)
      assert stage["steps_per_epoch"] == math.ceil(n / batch)
      assert stage["steps"] == epochs * math.ceil(n / batch)
      assert stage["images_per_epoch_per_category"] == {unit["unit"]: n}
  # RIAD's published numbers, spelled out: 300 epochs of 20 / 30 / 40 images at batch 8
  if name == "riad":
    assert [u["stages"][0]["steps"] for u in plan["units"]] == [900, 1200, 1500]
  with open(res["plan_json"], encoding="utf-8") as f:
    assert json.load(f)["units"] == json.loads(json.dumps(plan["units"]))
  assert sorted(os.listdir(tmp_path)) == ["plan.json"]  # a plan writes nothing else


def test_plan_states_schedule_optimizer_and_init(dataset, tmp_path):
  plan = _plan("ssm", dataset, tmp_path / "ssm")["plan"]
  stage = plan["units"][0]["stages"][0]
  spe = stage["steps_per_epoch"]
  points = dict((t, lr) for t, lr in stage["schedule"]["points"])
  assert stage["schedule"]["name"] == "step"
  assert points[0] == pytest.approx(1e-4) and points[50 * spe] == pytest.approx(5e-5)
  assert plan["init"]["pretrained"].startswith("none")
  plan = _plan("aca", dataset, tmp_path / "aca")["plan"]
  assert plan["init"]["pretrained"] == {"ViT-S/16 encoder": "random init"}
  assert "model.allow_random_init" in plan["init"]["refused"]
  assert plan["input"]["normalization"].startswith("ImageNet")


def test_mala_balanced_quota_over_mvtec_and_visa(tmp_path):
  root = demo.generate_multi(str(tmp_path / "multi"), seed=0, image_size=16, num_train=3,
                             num_test_good=1, num_test_defect=1)
  plan = _plan("mala", root, tmp_path / "w", **{"input.texture_dir": "",
                                                 "method.builtin_textures": True})["plan"]
  assert plan["protocol"].startswith("unified: one model over 4 categories")
  (unit,) = plan["units"]
  s1, s2 = unit["stages"]
  assert unit["categories"] == ["mvtec/fabric", "mvtec/pill", "visa/tiles", "visa/washer"]
  assert s1["images_per_epoch_per_category"] == dict.fromkeys(unit["categories"], 200)
  assert (s1["epochs"], s1["batch"], s1["steps"]) == (2000, 128, 2000 * math.ceil(800 / 128))
  assert (s2["epochs"], s2["batch"], s2["steps"]) == (700, 32, 700 * math.ceil(320 / 32))


@pytest.mark.parametrize("name,key", [("ear", "model.saliency_init_from"),
                                      ("aca", "model.init_from"), ("mala", "model.init_from")])
def test_full_variants_refuse_random_init(name, key, dataset, tmp_path):
  c = configs.get_config(name)
  c.input.data_dir = dataset
  with pytest.raises(ConfigError, match=rf"config\.{key} is empty.*allow_random_init=True"):
    runner.run(c, str(tmp_path), mode="train")
  assert not os.listdir(tmp_path)  # refused before anything was written


def test_cli_plan_and_refusal(dataset, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  p = subprocess.run([sys.executable, "-m", "maskjax.main", "--config=riad", "--mode=plan",
                      f"--workdir={tmp_path / 'p'}", f"--config.input.data_dir={dataset}"],
                     capture_output=True, text=True, env=env, timeout=300)
  assert p.returncode == 0, p.stderr[-2000:]
  assert "per_category: 3 models" in p.stdout and "steps/epoch" in p.stdout
  assert (tmp_path / "p" / "plan.json").exists()
  p = subprocess.run([sys.executable, "-m", "maskjax.main", "--config=ear",
                      f"--workdir={tmp_path / 't'}", f"--config.input.data_dir={dataset}"],
                     capture_output=True, text=True, env=env, timeout=300)
  assert p.returncode == 2
  err = [ln for ln in p.stderr.splitlines() if ln.startswith("maskjax: error:")]
  assert len(err) == 1 and "dino_deitsmall8_pretrain.pth" in err[0], p.stderr[-2000:]
  assert "Traceback" not in p.stderr
