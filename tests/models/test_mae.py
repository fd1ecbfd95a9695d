"""MAE encoder/decoder vs an independent PyTorch MAE with the official key names."""
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
from maskjax.models import mae, vit  # noqa: E402
from maskjax.weights import convert  # noqa: E402

TINY = dict(dim=64, depth=2, heads=4, decoder_dim=32, decoder_depth=2, decoder_heads=4)


def assert_close(a, b, rel=1e-5):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert a.shape == b.shape, (a.shape, b.shape)
  np.testing.assert_allclose(a, b, rtol=rel, atol=rel * np.max(np.abs(b)))


def nhwc(x):
  return jnp.asarray(x.permute(0, 2, 3, 1).numpy())


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
  torch.manual_seed(0)
  ref = tr.MaskedAutoencoder(patch=16, **TINY).eval()
  d = tmp_path_factory.mktemp("mae")
  torch.save({"model": ref.state_dict()}, d / "full.pth")
  convert.convert(str(d / "full.pth"), str(d / "full"), "mae_vit_large_patch16", overrides=TINY)
  enc_sd = {k: v for k, v in ref.state_dict().items()
            if not k.startswith("decoder") and k != "mask_token"}
  torch.save({"model": enc_sd}, d / "enc.pth")
  return ref, W.build(str(d / "full")), d


@pytest.mark.parametrize("size", [224, 320])
def test_mae_reconstruction_matches_torch(pair, size):
  ref, model, _ = pair
  n = (size // 16) ** 2
  keep = int(n * 0.25)
  ids_keep, ids_restore, _ = tr.random_masking_ids(2, n, keep, seed=size)
  torch.manual_seed(size)
  x = torch.randn(2, 3, size, size)
  with torch.no_grad():
    lat, blocks, _ = ref.forward_encoder(x, ids_keep)
    rec = ref.forward_decoder(lat, ids_restore, grid=(size // 16, size // 16))
  enc = model.forward_encoder(nhwc(x), jnp.asarray(ids_keep.numpy()), return_blocks=True)
  assert_close(enc["tokens"], lat)
  for a, b in zip(enc["blocks"], blocks):
    assert_close(a, b)
  ours = model.forward_decoder(enc["tokens"], jnp.asarray(ids_restore.numpy()))
  assert ours.shape == (2, n, 16 * 16 * 3)
  assert_close(ours, rec)


def test_patchify_and_loss_match_mae_definitions():
  torch.manual_seed(3)
  imgs = torch.rand(2, 3, 32, 48)
  p = 16
  # MAE's patchify on NCHW: n c h p w q -> n h w p q c
  t = imgs.reshape(2, 3, 2, p, 3, p).permute(0, 2, 4, 3, 5, 1).reshape(2, 6, p * p * 3)
  ours = mae.patchify(nhwc(imgs), p)
  assert_close(ours, t)
  np.testing.assert_array_equal(np.asarray(mae.unpatchify(ours, p, 2, 3)),
                                imgs.permute(0, 2, 3, 1).numpy())
  pred = torch.randn(2, 6, p * p * 3)
  mask = torch.tensor([[1., 0, 1, 0, 0, 1], [0, 0, 0, 1, 1, 1]])
  for norm in (False, True):
    tgt = t
    if norm:
      tgt = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6) ** .5
    ref = (((pred - tgt) ** 2).mean(-1) * mask).sum() / mask.sum()
    got = mae.mae_loss(nhwc(imgs), jnp.asarray(pred.numpy()), jnp.asarray(mask.numpy()), p,
                       norm_pix_loss=norm)
    assert_close(got, ref)


def test_encoder_only_checkpoint(pair):
  ref, _, d = pair
  with pytest.raises(CheckpointError, match="decoder_blocks.0.attn.qkv.kernel.*_encoder"):
    convert.convert(str(d / "enc.pth"), str(d / "bad"), "mae_vit_large_patch16", overrides=TINY)
  enc_cfg = {k: TINY[k] for k in ("dim", "depth", "heads")}
  convert.convert(str(d / "enc.pth"), str(d / "enc"), "mae_vit_large_patch16_encoder",
                  overrides=enc_cfg)
  model = mae.MAE(vit.ViT(patch=16, pos_embed="sincos", rngs=nnx.Rngs(4), **enc_cfg), decoder_dim=32,
                  decoder_depth=2, decoder_heads=4, rngs=nnx.Rngs(5))
  with pytest.raises(CheckpointError, match="prefix='encoder'"):
    W.load_into(model, str(d / "enc"))
  rep = W.load_into(model, str(d / "enc"), prefix="encoder")
  assert "decoder_pred.kernel" in rep["left_at_init"] and "mask_token" in rep["left_at_init"]
  np.testing.assert_array_equal(np.asarray(model.encoder.blocks[1].mlp.fc2.kernel[...]),
                                ref.blocks[1].mlp.fc2.weight.detach().numpy().T)


def test_learned_pos_embed_rejected_for_mae_arch(tmp_path):
  ref = tr.VisionTransformer(patch=16, dim=64, depth=2, heads=4)
  torch.save(ref.state_dict(), tmp_path / "dino.pth")
  with pytest.raises(CheckpointError, match="pos_embed is not MAE's fixed sin-cos"):
    convert.convert(str(tmp_path / "dino.pth"), str(tmp_path / "o"),
                    "mae_vit_large_patch16_encoder", overrides=dict(dim=64, depth=2, heads=4))
