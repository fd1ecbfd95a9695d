"""Checkpoint layouts (raw, 'model', DINO teacher/student wrappers) and the CLI."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch_reference as tr  # noqa: E402

from maskjax import weights as W  # noqa: E402
from maskjax.errors import CheckpointError  # noqa: E402
from maskjax.weights import convert  # noqa: E402

SMALL = dict(dim=32, depth=1, heads=2)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _expected(ref):
  return {"blocks.0.attn.qkv.kernel": ref.blocks[0].attn.qkv.weight.detach().numpy().T,
          "patch_embed.proj.kernel":
              ref.patch_embed.proj.weight.detach().numpy().transpose(2, 3, 1, 0),
          "norm.scale": ref.norm.weight.detach().numpy(),
          "pos_embed": ref.pos_embed.detach().numpy()}


def test_dino_training_checkpoint_wrappers(tmp_path):
  torch.manual_seed(0)
  teacher, student = tr.VisionTransformer(16, **SMALL), tr.VisionTransformer(16, **SMALL)
  ckpt = {"teacher": {f"backbone.{k}": v for k, v in teacher.state_dict().items()},
          "student": {f"module.backbone.{k}": v for k, v in student.state_dict().items()},
          "epoch": 3}
  ckpt["teacher"]["head.mlp.0.weight"] = torch.zeros(4, 32)
  torch.save(ckpt, tmp_path / "c.pth")
  metas = {}
  for which, ref in (("teacher", teacher), ("student", student)):
    metas[which] = meta = convert.convert(str(tmp_path / "c.pth"), str(tmp_path / which), "vit_small_patch16",
                           which=which, overrides=SMALL)
    flat, meta2 = W.read(str(tmp_path / which))
    assert meta2["source_sha256"] == meta["source_sha256"] and len(meta["source_sha256"]) == 64
    for k, v in _expected(ref).items():
      np.testing.assert_array_equal(flat[k], v)
  assert any("head.mlp.0.weight" in n for n in metas["teacher"]["notes"])
  with pytest.raises(CheckpointError, match="--overwrite"):
    convert.convert(str(tmp_path / "c.pth"), str(tmp_path / "teacher"), "vit_small_patch16",
                    overrides=SMALL)


def test_cli_success_and_failure(tmp_path):
  ref = tr.VisionTransformer(8, **SMALL)
  torch.save(ref.state_dict(), tmp_path / "in.pth")
  base = [sys.executable, "-m", "maskjax.weights.convert", str(tmp_path / "in.pth")]
  ok = subprocess.run(base + [str(tmp_path / "ok"), "--arch", "vit_small_patch8", "--dim", "32",
                              "--depth", "1", "--heads", "2"],
                      capture_output=True, text=True, cwd=ROOT)
  assert ok.returncode == 0, ok.stderr
  assert os.path.isfile(tmp_path / "ok" / "maskjax_weights.json")
  flat, meta = W.read(str(tmp_path / "ok"))
  assert meta["arch"] == "vit_small_patch8"
  np.testing.assert_array_equal(flat["pos_embed"], ref.pos_embed.detach().numpy())
  bad = subprocess.run(base + [str(tmp_path / "bad"), "--arch", "vit_small_patch16", "--dim",
                               "32", "--depth", "1", "--heads", "2"],
                       capture_output=True, text=True, cwd=ROOT)
  assert bad.returncode == 2
  assert "shape mismatches" in bad.stderr and "patch_embed.proj.weight" in bad.stderr
