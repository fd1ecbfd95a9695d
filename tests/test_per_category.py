"""The per-category protocol (`train.protocol = "per_category"`,
`maskjax.per_category`) on the toy method: one sub-run per category, each a
complete resumable run, one merged report, and the parent refusing what only
a single model can do."""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import helpers_toy_method as toy  # noqa: E402

from maskjax import api, runner  # noqa: E402
from maskjax.errors import WorkdirError  # noqa: E402


def _cfg(**kw):
  base = {"train.protocol": "per_category", "train.steps": 4, "eval.baseline": False,
          "eval.plots": False, "eval.num_heatmaps": 0}
  base.update(kw)
  return toy.toy_config(**base)


def _run(cfg, wd, mode="train"):
  return runner.run(cfg, str(wd), mode=mode, data=toy.ToyData())


@pytest.fixture(scope="module")
def per_category_run(tmp_path_factory):
  wd = tmp_path_factory.mktemp("pc")
  return wd, _run(_cfg(), wd)


def _json(path):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def test_one_complete_run_per_category(per_category_run):
  wd, res = per_category_run
  subs = _json(wd / "sub_runs.json")
  assert subs["categories"] == ["a", "b"]
  for cat in ("a", "b"):
    sub = wd / cat
    assert _json(sub / "config.json")["input"]["categories"] == [cat]
    assert _json(sub / "data_info.json")["categories"] == [cat]
    assert (sub / "eval" / "results.json").exists()
    assert os.path.isdir(sub / "checkpoints")
  assert not os.path.exists(wd / "checkpoints")  # the parent holds no model
  assert _json(wd / "config.json")["train"]["protocol"] == "per_category"


def test_merged_report_holds_every_sub_run(per_category_run):
  wd, res = per_category_run
  merged = _json(wd / "eval" / "results.json")
  assert res["report_json"] == str(wd / "eval" / "results.json")
  assert set(merged["per_category"]) == {"a", "b"}
  subs = {c: _json(wd / c / "eval" / "results.json")["per_category"][c] for c in ("a", "b")}
  for c in ("a", "b"):
    assert merged["per_category"][c]["image_auroc"] == subs[c]["image_auroc"]
    assert merged["per_category"][c]["pixel_auroc"] == subs[c]["pixel_auroc"]
  want = np.mean([subs[c]["pixel_auroc"] for c in ("a", "b")])
  assert merged["mean"]["pixel_auroc"]["mean"] == pytest.approx(want, abs=1e-12)
  md = (wd / "eval" / "results.md").read_text()
  assert "one model per category (2 sub-runs)" in md
  assert "a/train 4 of 4 steps" in md and "b/train 4 of 4 steps" in md


def test_eval_of_the_parent_merges_again(per_category_run, tmp_path):
  wd, _ = per_category_run
  res = runner.run(_cfg(), str(wd), mode="eval", data=toy.ToyData(), output_dir=str(tmp_path))
  assert set(_json(tmp_path / "results.json")["per_category"]) == {"a", "b"}
  assert (tmp_path / "a" / "results.json").exists()
  assert res["per_category"]["a"]["image_auroc"] == \
      _json(wd / "eval" / "results.json")["per_category"]["a"]["image_auroc"]


def test_resume_trains_nothing_more_and_a_recipe_change_is_refused(per_category_run):
  wd, _ = per_category_run
  before = _json(wd / "a" / "eval" / "results.json")["run_info"]["stages_trained"]
  _run(_cfg(), wd)
  after = _json(wd / "a" / "eval" / "results.json")["run_info"]["stages_trained"]
  assert before == after
  with pytest.raises(WorkdirError, match="optim.lr"):
    _run(_cfg(**{"optim.lr": 0.5}), wd)


def test_the_parent_refuses_single_model_uses(per_category_run):
  wd, _ = per_category_run
  with pytest.raises(WorkdirError, match=r"one model per category.*--workdir=.*/a "):
    runner.run(_cfg(), str(wd), mode="predict", predict_dir=str(wd), data=toy.ToyData())
  with pytest.raises(WorkdirError, match="load one of them"):
    api.Detector.load(str(wd))


def test_one_category_or_unified_is_a_plain_run(tmp_path):
  _run(_cfg(**{"input.categories": ("a",)}), tmp_path / "one")
  assert not (tmp_path / "one" / "sub_runs.json").exists()
  assert (tmp_path / "one" / "checkpoints").exists()
  _run(_cfg(**{"train.protocol": "unified"}), tmp_path / "uni")
  assert _json(tmp_path / "uni" / "data_info.json")["categories"] == ["a", "b"]
