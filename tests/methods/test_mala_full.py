"""MALA's full configuration (unified MVTec AD + VisA, ViT-L/16 encoder, MAE
decoder, PLPM, TBM) at reduced width and depth ("reduced" variant): both stages
train a couple of steps through the generic loop on demo data laid out as
MVTec + VisA."""
from __future__ import annotations

import json
import os

import numpy as np

from configs import mala as mala_config
from maskjax import runner
from maskjax.data import demo


def test_full_architecture_reduced_width_on_multi_layout(tmp_path):
  data = str(tmp_path / "data")
  demo.generate_multi(data, seed=0, image_size=64, num_train=6, num_test_good=1,
                      num_test_defect=1)
  c = mala_config.get_config("reduced")
  full = mala_config.get_config()
  # the full configuration's structure: same data layout, encoder, depths
  assert (c.input.format, c.input.categories) == (full.input.format, full.input.categories)
  assert c.model.encoder == full.model.encoder == "vit_large_patch16"
  assert c.model.encoder_overrides.dim == 64
  c.input.data_dir = data
  c.train.progress_bar = False
  c.train.async_checkpoint = False
  workdir = str(tmp_path / "run")
  res = runner.run(c, workdir, evaluate_after_train=False)
  state = res["state"]
  assert set(state) == {"params", "model_state", "opt_state", "step", "extras"}
  assert "encoder" in state["model_state"]
  assert len(state["model_state"]["encoder"]["blocks"]) == 4
  assert len(state["params"]["decoder"]["decoder_blocks"]) == 2
  assert state["model_state"]["encoder"]["blocks"][0]["attn"]["qkv"]["kernel"].shape == (64, 192)
  for stage in ("stage1", "stage2"):
    assert os.path.isdir(os.path.join(workdir, "checkpoints", stage))
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["input"]["categories"] == ["mvtec/*", "visa/*"]
  assert all(np.all(np.isfinite(np.asarray(x))) for x in
             __import__("jax").tree.leaves(state["params"]))
