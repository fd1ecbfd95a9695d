"""ViT vs an independent PyTorch module with the official DINO/MAE key names:
random weights -> .pth -> maskjax.weights.convert -> compare outputs."""
from __future__ import annotations

import os
import sys

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch_reference as tr  # noqa: E402

from flax import nnx  # noqa: E402

from maskjax import weights as W  # noqa: E402
from maskjax.errors import CheckpointError  # noqa: E402
from maskjax.models import vit  # noqa: E402
from maskjax.weights import convert  # noqa: E402

SMALL = ["--dim", "64", "--depth", "2", "--heads", "4"]


def assert_close(a, b, rel=1e-5):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert a.shape == b.shape, (a.shape, b.shape)
  scale = np.max(np.abs(b))
  np.testing.assert_allclose(a, b, rtol=rel, atol=rel * scale)


def nhwc(x):
  return jnp.asarray(x.permute(0, 2, 3, 1).numpy())


@pytest.mark.parametrize("n_in,n_out", [(14, 20), (28, 40), (14, 9)])
def test_bicubic_matches_torch(n_in, n_out):
  g = torch.randn(1, 3, n_in, n_in, dtype=torch.float64)
  scale = (n_out + 0.1) / n_in
  ref = torch.nn.functional.interpolate(g, scale_factor=(scale, scale), mode="bicubic")
  m = vit.torch_bicubic_matrix(n_in, n_out, scale)
  ours = np.einsum("hi,cij,wj->chw", m, g[0].numpy(), m)
  np.testing.assert_allclose(ours, ref[0].numpy(), rtol=1e-10, atol=1e-10)


def test_sincos_matches_reference_table():
  np.testing.assert_allclose(vit.sincos_2d(32, (5, 7)), tr.sincos_table(32, 5, 7).numpy(),
                             atol=1e-6)


@pytest.fixture(scope="module", params=[16, 8])
def converted(request, tmp_path_factory):
  patch = request.param
  torch.manual_seed(patch)
  ref = tr.VisionTransformer(patch=patch, dim=64, depth=2, heads=4).eval()
  d = tmp_path_factory.mktemp(f"vit{patch}")
  torch.save(ref.state_dict(), d / "in.pth")
  rc = convert.main([str(d / "in.pth"), str(d / "out"), "--arch", f"vit_small_patch{patch}",
                     *SMALL])
  assert rc == 0
  return ref, W.build(str(d / "out")), patch


@pytest.mark.parametrize("size", [224, 320])
def test_converted_vit_matches_torch(converted, size):
  ref, model, patch = converted
  torch.manual_seed(1)
  x = torch.randn(1 if patch == 8 else 2, 3, size, size)
  with torch.no_grad():
    feats, blocks, attn = ref(x)
  out = model(nhwc(x), return_blocks=True, return_attention=True)
  assert_close(out["tokens"], feats)
  assert len(out["blocks"]) == len(blocks)
  for a, b in zip(out["blocks"], blocks):
    assert_close(a, b)
  assert_close(out["attention"], attn)


def test_keep_ids_and_saliency_match_torch(converted):
  ref, model, patch = converted
  if patch != 16:
    pytest.skip("one patch size is enough")
  torch.manual_seed(2)
  x = torch.randn(2, 3, 224, 224)
  ids = torch.stack([torch.randperm(196)[:50] for _ in range(2)])
  with torch.no_grad():
    feats, _, _ = ref(x, ids_keep=ids)
    _, _, attn = ref(x)
  out = model(nhwc(x), keep_ids=jnp.asarray(ids.numpy()))
  assert out["tokens"].shape == (2, 51, 64)
  assert_close(out["tokens"], feats)
  # saliency: CLS row, head mean, bilinear upsample (torch align_corners=False)
  cls = attn[:, :, 0, 1:].mean(1).reshape(2, 1, 14, 14)
  up = torch.nn.functional.interpolate(cls, size=(224, 224), mode="bilinear",
                                       align_corners=False)[:, 0]
  sal = vit.saliency_jit(model, nhwc(x), out_hw=(224, 224))
  assert_close(sal, up)


def test_real_vit_s8_key_and_shape_coverage():
  with torch.device("meta"):
    ref = tr.VisionTransformer(patch=8, dim=384, depth=12, heads=6)
  sd = {k: np.empty(v.shape, np.float32) for k, v in ref.state_dict().items()}
  flat, _ = convert.torch_to_flat(sd, "vit", convert.ARCHS["vit_small_patch8"]["config"])
  exp = convert.expected_shapes("vit", convert.ARCHS["vit_small_patch8"]["config"])
  assert W.compare_keys(exp, {k: v.shape for k, v in flat.items()}) == ([], [], [])
  assert exp["pos_embed"] == (1, 785, 384) and exp["blocks.11.attn.qkv.kernel"] == (384, 1152)


def test_mismatched_checkpoint_lists_keys(tmp_path):
  ref = tr.VisionTransformer(patch=16, dim=64, depth=2, heads=4)
  sd = ref.state_dict()
  sd["extra.weight"] = torch.zeros(3)
  sd["norm.bias"] = torch.zeros(65)
  torch.save(sd, tmp_path / "bad.pth")
  with pytest.raises(CheckpointError) as e:
    convert.convert(str(tmp_path / "bad.pth"), str(tmp_path / "o"), "vit_small_patch16",
                    overrides=dict(dim=64, depth=3, heads=4))
  msg = str(e.value)
  assert "missing keys" in msg and "blocks.2.attn.qkv.kernel" in msg
  assert "unexpected keys" in msg and "extra.weight" in msg
  assert "norm.bias" in msg and "expected (64,) got (65,)" in msg
  assert not (tmp_path / "o").exists()


def test_load_into_rejects_other_architecture(tmp_path):
  ref = tr.VisionTransformer(patch=16, dim=64, depth=2, heads=4)
  torch.save(ref.state_dict(), tmp_path / "in.pth")
  convert.convert(str(tmp_path / "in.pth"), str(tmp_path / "o"), "vit_small_patch16",
                  overrides=dict(dim=64, depth=2, heads=4))
  other = vit.ViT(patch=16, dim=64, depth=3, heads=4, rngs=nnx.Rngs(0))
  with pytest.raises(CheckpointError, match="blocks.2.norm1.scale"):
    W.load_into(other, str(tmp_path / "o"))
  assert "random init" in W.init_from_or_random(other, "")
