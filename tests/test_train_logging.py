"""metrics.jsonl / TensorBoard event files of maskjax.logging_utils."""
from __future__ import annotations

import glob
import importlib
import json
import struct
import sys
import types

from maskjax import logging_utils


def _load_event_pb2():
  """tensorboardX's own Event proto, without running its package __init__
  (which imports PyTorch); sys.modules is restored afterwards."""
  import importlib.util
  spec = importlib.util.find_spec("tensorboardX")
  root = spec.submodule_search_locations[0]
  saved = {k: v for k, v in sys.modules.items() if k.startswith("tensorboardX")}
  stub = types.ModuleType("tensorboardX")
  stub.__path__ = [root]
  sys.modules["tensorboardX"] = stub
  try:
    return importlib.import_module("tensorboardX.proto.event_pb2")
  finally:
    for k in [k for k in sys.modules if k.startswith("tensorboardX")]:
      del sys.modules[k]
    sys.modules.update(saved)


def test_metrics_jsonl_and_tensorboard_events(tmp_path):
  with logging_utils.MetricLogger(str(tmp_path), stage="s1", total_steps=4,
                                  progress_bar=False, write=True) as lg:
    lg.log(2, {"loss": 0.5, "loss/a": 0.25}, batch_size=8)
    lg.log(4, {"loss": 0.125, "loss/a": 0.0625}, batch_size=8, lr=1e-3)
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [(l["stage"], l["step"], l["loss"]) for l in lines] == [("s1", 2, 0.5), ("s1", 4, 0.125)]
  assert lines[1]["lr"] == 1e-3 and lines[0]["images_per_s"] > 0

  (path,) = glob.glob(str(tmp_path / "tb" / "events.out.tfevents.*"))
  data = open(path, "rb").read()
  event_pb2 = _load_event_pb2()
  events, pos = [], 0
  while pos < len(data):
    (n,) = struct.unpack("<Q", data[pos:pos + 8])
    rec = data[pos + 12:pos + 12 + n]
    events.append(event_pb2.Event.FromString(rec))
    pos += 12 + n + 4
  assert events[0].file_version == "brain.Event:2"
  scalars = {(e.step, v.tag): v.simple_value for e in events[1:] for v in e.summary.value}
  assert scalars[(2, "s1/loss")] == 0.5
  assert scalars[(4, "s1/loss/a")] == 0.0625
  assert scalars[(4, "s1/lr")] == 1e-3 or abs(scalars[(4, "s1/lr")] - 1e-3) < 1e-9


def test_evaluation_metrics_and_figures_reach_tensorboard(tmp_path):
  from PIL import Image
  fig = tmp_path / "fig.png"
  Image.new("RGB", (8, 6), (255, 0, 0)).save(fig)
  logging_utils.log_evaluation(str(tmp_path), {"image_auroc": 0.75, "aupro": None},
                               {"cat": {"image_auroc": 0.5}}, step=12, images=[str(fig)])
  (path,) = glob.glob(str(tmp_path / "tb" / "events.out.tfevents.*"))
  data = open(path, "rb").read()
  event_pb2 = _load_event_pb2()
  events, pos = [], 0
  while pos < len(data):
    (n,) = struct.unpack("<Q", data[pos:pos + 8])
    events.append(event_pb2.Event.FromString(data[pos + 12:pos + 12 + n]))
    pos += 12 + n + 4
  values = {(e.step, v.tag): v for e in events for v in e.summary.value}
  assert values[(12, "eval/image_auroc")].simple_value == 0.75
  assert values[(12, "eval_cat/image_auroc")].simple_value == 0.5
  assert (12, "eval/aupro") not in values  # undefined metrics are left out
  img = values[(12, "eval/fig")].image
  assert (img.width, img.height) == (8, 6)


def test_progress_lines_of_training_evaluation_and_predict(tmp_path, caplog):
  """Every phase says how far it is: training ETA naming the evaluation that
  follows, per-batch progress of calibration, evaluation and predict."""
  import logging

  from absl import logging as absl_logging
  caplog.set_level(logging.INFO, logger="absl")
  before = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.INFO)
  try:
    _progress_lines(tmp_path, caplog)
  finally:
    absl_logging.set_verbosity(before)


def _progress_lines(tmp_path, caplog):
  import os

  import numpy as np
  from PIL import Image

  sys.path.insert(0, os.path.dirname(__file__))
  import helpers_toy_method as toy
  from maskjax import runner

  def lines():
    return [r.getMessage() for r in caplog.records if r.name == "absl"]
  cfg = toy.toy_config(**{"train.steps": 4, "eval.baseline": False, "eval.plots": False,
                          "eval.num_heatmaps": 0})
  runner.run(cfg, str(tmp_path / "w"), data=toy.ToyData())
  assert any("training ETA" not in ln and "ETA" in ln and "[train] step 2/4" in ln
             and "(then evaluation of 8 validation + 16 test images)" in ln for ln in lines()), lines()
  assert any(ln.startswith("evaluation (test split): 2 batches") for ln in lines()), lines()
  imgs = tmp_path / "imgs"
  imgs.mkdir()
  for i in range(3):
    Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(imgs / f"{i}.png")
  caplog.clear()
  runner.run(cfg, str(tmp_path / "w"), mode="predict", predict_dir=str(imgs),
             data=toy.ToyData())
  assert any(ln.startswith("predict (scoring): 1 batches") for ln in lines()), lines()
  assert any(ln.startswith("predict (overlays): 3 images in") for ln in lines()), lines()
