"""The generic loop on the toy method (in-process, one CPU device)."""
from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import stage_helpers  # noqa: E402
import helpers_toy_method as toy  # noqa: E402

from maskjax import checkpoint as ckpt_lib  # noqa: E402
from maskjax import mesh as mesh_lib  # noqa: E402
from maskjax import runner, train  # noqa: E402
from maskjax import workdir as workdir_lib  # noqa: E402
from maskjax.errors import NonFiniteLossError, WorkdirError  # noqa: E402


def _train(cfg, workdir):
  return runner.run(cfg, str(workdir), data=toy.ToyData(), evaluate_after_train=False)["state"]


def _leaves(state):
  return toy._flat_params(state)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
  """A complete 12-step toy run (checkpoints at 4, 8, 12)."""
  wd = tmp_path_factory.mktemp("full")
  return wd, _leaves(_train(toy.toy_config(), wd))


def test_same_seed_bit_identical_and_complete_run_skips(full_run, tmp_path):
  wd, a = full_run
  b = _leaves(_train(toy.toy_config(), tmp_path / "b"))
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert int(a["['step']"]) == 12
  lines = [json.loads(l) for l in open(wd / "metrics.jsonl")]
  assert [l["step"] for l in lines] == [2, 4, 6, 8, 10, 12]
  assert lines[-1]["loss"] < lines[0]["loss"]
  assert {"loss/recon", "loss/reg", "images_per_s"} <= lines[0].keys()
  assert os.listdir(wd / "tb")
  # keep_checkpoints=3 of saves at 4, 8, 12
  assert sorted(os.listdir(wd / "checkpoints" / "train")) == ["12", "4", "8"]
  # a second run in the same workdir restores the complete stage, no training
  c = _leaves(_train(toy.toy_config(), wd))
  for k in a:
    np.testing.assert_array_equal(a[k], c[k], err_msg=k)
  assert len(open(wd / "metrics.jsonl").readlines()) == 6


def test_resume_after_more_steps_matches_uninterrupted(full_run, tmp_path):
  """Stop at step 8 (final save), raise train.steps to 12, resume: equals the
  12-step run (constant lr, so the schedule does not depend on the total)."""
  _, full = full_run
  _train(toy.toy_config(**{"train.steps": 8}), tmp_path)
  resumed = _leaves(_train(toy.toy_config(), tmp_path))
  for k in full:
    np.testing.assert_array_equal(full[k], resumed[k], err_msg=k)


def test_eval_and_predict_modes(full_run, tmp_path):
  from PIL import Image
  wd, _ = full_run
  cfg = toy.toy_config(**{"eval.plots": False})
  res = runner.run(cfg, str(wd), mode="eval", data=toy.ToyData())
  assert set(res["per_category"]) == {"a", "b"}
  assert res["per_category"]["a"]["image_auroc"] is not None
  assert 0.0 <= res["mean"]["pixel_auroc"] <= 1.0
  assert os.path.exists(res["report_md"]) and os.path.exists(res["report_json"])
  cal = json.load(open(wd / "calibration.json"))
  assert cal["calibration"]["num_val"] == 8 and cal["threshold"]["count"] == 8
  # predict: a folder of images -> scores.csv + heatmaps, decision = score > threshold
  rng = np.random.default_rng(0)
  for i in range(3):
    Image.fromarray((rng.uniform(0, 0.5, (8, 8, 3)) * 255).astype(np.uint8)).save(
        tmp_path / f"img{i}.png")
  pred = runner.run(cfg, str(wd), mode="predict", predict_dir=str(tmp_path))
  rows = open(os.path.join(pred["out_dir"], "scores.csv")).read().splitlines()
  assert rows[0] == "path,category,threshold,score,normalized_score,anomalous" and len(rows) == 4
  # the folder's name is no category of the model: the global threshold decides, and says so
  assert all(r.split(",")[1:3] == ["", "global"] for r in rows[1:])
  np.testing.assert_array_equal(pred["decisions"], pred["scores"] > cal["threshold"]["threshold"])
  assert sorted(n for n in os.listdir(pred["out_dir"]) if n.endswith(".png")) == [
      "img0.png_overlay.png", "img1.png_overlay.png", "img2.png_overlay.png"]
  assert pred["out_dir"] == str(wd / "predict" / "001")  # a new directory per call
  again = runner.run(cfg, str(wd), mode="predict", predict_dir=str(tmp_path / "img1.png"))
  assert again["out_dir"] == str(wd / "predict" / "002")
  assert again["scores"][0] == pred["scores"][1]  # one image's score ignores its neighbours'
  # per-category thresholds: a sub-folder named after a category uses that category's
  sub = tmp_path / "a"
  sub.mkdir()
  Image.open(tmp_path / "img0.png").save(sub / "img0.png")
  by_cat = runner.run(cfg, str(wd), mode="predict", predict_dir=str(sub))
  assert by_cat["categories"] == ["a"]
  thr_a = cal["threshold"]["per_category"]["a"]["threshold"]
  np.testing.assert_array_equal(by_cat["decisions"], by_cat["scores"] > thr_a)


def test_eval_without_checkpoint_fails(tmp_path):
  from maskjax.errors import CheckpointError
  cfg = toy.toy_config()
  with pytest.raises(WorkdirError, match="no config.json"):
    runner.run(cfg, str(tmp_path), mode="eval", data=toy.ToyData())
  workdir_lib.check_for_mode(cfg, str(tmp_path))
  with pytest.raises(CheckpointError, match="not trained to its end"):
    runner.run(cfg, str(tmp_path), mode="eval", data=toy.ToyData())


def test_workdir_mismatch(tmp_path):
  workdir_lib.check_for_mode(toy.toy_config(), str(tmp_path))
  with pytest.raises(WorkdirError, match=r"input\.image_size: workdir has 8, config has 16"):
    runner.run(toy.toy_config(**{"input.image_size": 16}), str(tmp_path), data=toy.ToyData(),
              evaluate_after_train=False)
  with pytest.raises(WorkdirError, match=r"seed"):
    workdir_lib.check_for_mode(toy.toy_config(seed=3), str(tmp_path), write=False)
  # non-identity keys may change
  workdir_lib.check_for_mode(toy.toy_config(**{"train.steps": 5, "train.log_every": 1}), str(tmp_path))


def test_nan_names_step_and_term_and_keeps_last_good(tmp_path):
  cfg = toy.toy_config(**{"method.nan_at_step": 7, "train.log_every": 5})
  with pytest.raises(NonFiniteLossError) as e:
    _train(cfg, tmp_path)
  msg = str(e.value)
  assert "step 7" in msg and "loss/reg=nan" in msg and "stage train" in msg
  assert "last good checkpoint: step 4" in msg
  d = tmp_path / "checkpoints" / "train"
  assert sorted(os.listdir(d)) == ["4"]
  # the last good checkpoint restores and is finite
  method = stage_helpers.build(cfg)
  mesh = mesh_lib.make_mesh(cfg.mesh)
  cs = train.CompiledStage(stage_helpers.stages(method)[0], mesh, cfg.mesh)
  c = ckpt_lib.StageCheckpointer(str(d), async_save=False)
  state, meta = c.restore(4, cs.abstract_with_shardings)
  c.close()
  assert meta["step"] == 4 and not meta["final"]
  assert int(state["step"]) == 4
  assert all(np.all(np.isfinite(v)) for v in jax.tree.leaves(state["params"]))


def test_two_stages_frozen_subtree_and_accumulation(tmp_path):
  cfg = toy.toy_config(**{"method.two_stages": True, "train.steps": 4,
                          "optim.accum_steps": 2})
  final = _train(cfg, tmp_path)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["fine", "pre"]
  method = stage_helpers.build(cfg)
  mesh = mesh_lib.make_mesh(cfg.mesh)
  pre, _ = train._restore_final(str(tmp_path), stage_helpers.stages(method)[0], 0, mesh, cfg.mesh, None)
  assert int(pre["step"]) == 4 and int(final["step"]) == 4
  np.testing.assert_array_equal(np.asarray(final["params"]["w1"]),
                                np.asarray(pre["params"]["w1"]))   # frozen in "fine"
  assert not np.array_equal(np.asarray(final["params"]["w2"]), np.asarray(pre["params"]["w2"]))


def test_batch_not_divisible_names_key(tmp_path):
  from maskjax.errors import ConfigError
  with pytest.raises(ConfigError, match="input.batch_size=3"):
    mesh_lib.per_host_batch_size(3, 2, 1)


def test_first_non_finite_names_the_term_before_its_consequences():
  pending = [(1, {"loss": 1.0, "grad_norm": 2.0}),
             (2, {"grad_norm": np.nan, "loss": np.nan, "loss/b": np.inf, "loss/a": 1.0}),
             (3, {"loss": np.nan})]
  assert train._first_non_finite(pending) == (2, "loss/b", float("inf"))
  assert train._first_non_finite(pending[:1]) is None
