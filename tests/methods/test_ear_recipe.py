"""EAR full recipe against the author's code conventions (YeongHyeon/RIAD-PyTorch,
the U-Net and loss code the paper's description follows):

* U-Net skips before the stride (model.skips): a PyTorch twin with the same
  weights, both layouts, eval and train BatchNorm;
* loss weights 1 each and torchgeometry's SSIM loss: the method's LAMP loss
  against NumPy (L2, SSIM with an 11x11 Gaussian, MSGMS with 3 scales);
* the SSIM conventions against NumPy, and the demo keeping the previous ones.
"""
from __future__ import annotations

import os as _os
import sys as _sys

_sys.path.insert(0, _os.path.join(_os.path.dirname(__file__), ".."))
import stage_helpers  # noqa: E402

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
from flax import nnx

from maskjax.errors import ConfigError
from maskjax.methods.ear import core
from maskjax.methods.ear.unet import EarUNet

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cfg_module():
  spec = importlib.util.spec_from_file_location("ear_cfg_recipe",
                                                os.path.join(ROOT, "configs", "ear.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


# ----------------------------------------------------------------------------
# U-Net vs a PyTorch twin
# ----------------------------------------------------------------------------
def _randomise_bn(module, seed):
  """Non-trivial BatchNorm affine parameters and running statistics, conv
  biases, and an output conv scaled so the output is O(0.1-1), not ~0."""
  rng = np.random.default_rng(seed)
  for _, m in module.iter_modules():
    if isinstance(m, nnx.Conv):
      m.bias.value = jnp.asarray(rng.normal(0, 0.1, m.bias.value.shape), jnp.float32)
  module.out.kernel.value = module.out.kernel.value * 4.0
  for _, m in module.iter_modules():
    if isinstance(m, nnx.BatchNorm):
      n = m.scale.value.shape[0]
      m.scale.value = jnp.asarray(rng.uniform(0.5, 1.5, n), jnp.float32)
      m.bias.value = jnp.asarray(rng.normal(0, 0.2, n), jnp.float32)
      m.mean.value = jnp.asarray(rng.normal(0, 0.3, n), jnp.float32)
      m.var.value = jnp.asarray(rng.uniform(0.5, 2.0, n), jnp.float32)


@pytest.mark.parametrize("skips,k", [("before_stride", 3), ("before_stride", 5),
                                     ("after_stride", 3)])
def test_unet_matches_torch_twin(skips, k):
  import torch
  from torch_reference import ear_unet
  widths = (3, 4, 5, 6, 7)
  jm = EarUNet(widths, k, skips=skips, rngs=nnx.Rngs(0))
  _randomise_bn(jm, 1)
  tm = ear_unet.copy_from_maskjax(ear_unet.EarUNetTwin(widths, k, skips=skips), jm)
  x = np.random.default_rng(2).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  tm.eval()
  with torch.no_grad():
    want = tm(xt).numpy().transpose(0, 2, 3, 1)
  got = np.asarray(jm(jnp.asarray(x), train=False))
  assert np.max(np.abs(got - want)) < 1e-5, np.max(np.abs(got - want))
  # batch statistics (biased variance) in both; 64 px x 4 images so that the
  # deepest BatchNorm sees 16 values per channel (2 values are ill-conditioned)
  x = np.random.default_rng(3).uniform(-1, 1, (4, 64, 64, 3)).astype(np.float32)
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  tm.train()
  with torch.no_grad():
    want_t = tm(xt).numpy().transpose(0, 2, 3, 1)
  got_t = np.asarray(jm(jnp.asarray(x), train=True))
  # 30 batch-normalised layers amplify float32 reduction-order differences
  # (measured: max 1.5e-4, median 5e-7); the layout itself is pinned by eval mode
  assert np.max(np.abs(got_t - want_t)) < 1e-3, np.max(np.abs(got_t - want_t))
  assert np.median(np.abs(got_t - want_t)) < 1e-5
  assert 0.05 < np.std(want) and np.mean(np.abs(want) > 0.99) < 0.2   # neither flat nor saturated
  print(f"{skips} k={k}: max |diff| eval {np.max(np.abs(got - want)):.2e}, "
        f"train {np.max(np.abs(got_t - want_t)):.2e}")


def test_before_stride_has_a_full_resolution_skip():
  """Changing one full-resolution input pixel with the bottleneck path cut
  still moves the output there only through the full-resolution skip."""
  widths = (3, 4, 5, 6, 7)
  full = EarUNet(widths, 3, skips="before_stride", rngs=nnx.Rngs(0))
  legacy = EarUNet(widths, 3, skips="after_stride", rngs=nnx.Rngs(0))
  # skip tensor widths seen by the decoder's concatenations
  assert full.decoder[4][1].conv.in_features == 2 * widths[0]
  assert full.decoder[0][1].conv.in_features == 2 * widths[4]
  assert legacy.decoder[4][0].conv.in_features == widths[0] + widths[0]
  # zero the deepest encoder block's last conv: only skips carry the input
  for net in (full, legacy):
    blk = net.encoder[4][2]
    blk.conv.kernel.value = jnp.zeros_like(blk.conv.kernel.value)
    blk.conv.bias.value = jnp.zeros_like(blk.conv.bias.value)
  x = np.random.default_rng(3).uniform(-1, 1, (1, 32, 32, 3)).astype(np.float32)
  x2 = x.copy()
  x2[0, 16, 16] += 1.0
  def moved(net):
    d = np.abs(np.asarray(net(jnp.asarray(x2), train=False) - net(jnp.asarray(x), train=False)))
    return d[0, 16, 16].max(), d[0, 15:18, 15:18].sum() / max(d.sum(), 1e-12)
  m_full, local_full = moved(full)
  m_legacy, local_legacy = moved(legacy)
  assert m_full > 0 and m_legacy > 0
  # the full-resolution skip keeps the response local; the legacy one is spread by strides
  assert local_full > local_legacy


def test_unet_rejects_unknown_skips():
  with pytest.raises(ValueError, match="skips"):
    EarUNet((2, 2, 2, 2, 2), skips="middle", rngs=nnx.Rngs(0))


# ----------------------------------------------------------------------------
# NumPy references for the loss
# ----------------------------------------------------------------------------
def np_ssim_map(x, y):
  """x, y [B,H,W,C] float64; 11x11 Gaussian sigma 1.5, zero padding, L = 1."""
  g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5 ** 2))
  g = np.outer(g, g)
  g /= g.sum()
  def f(a):
    return np.stack([np.stack([scipy.ndimage.correlate(a[b, :, :, c], g, mode="constant")
                               for c in range(a.shape[-1])], -1) for b in range(a.shape[0])])
  c1, c2 = 0.01 ** 2, 0.03 ** 2
  mx, my = f(x), f(y)
  sxx, syy, sxy = f(x * x) - mx * mx, f(y * y) - my * my, f(x * y) - mx * my
  return ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))


def np_bilinear_up(a, out):
  """[B,h,w,C] -> [B,out,out,C], half-pixel centres (align_corners=False), edge clamp."""
  h = a.shape[1]
  src = np.clip((np.arange(out) + 0.5) * h / out - 0.5, 0, h - 1)
  i0 = np.floor(src).astype(int)
  i1 = np.minimum(i0 + 1, h - 1)
  t = src - i0
  a = a[:, i0] * (1 - t)[None, :, None, None] + a[:, i1] * t[None, :, None, None]
  return a[:, :, i0] * (1 - t)[None, None, :, None] + a[:, :, i1] * t[None, None, :, None]


def np_msgms_map(x, y, scales=3):
  px = np.array([[1, 0, -1]] * 3, np.float64) / 3.0
  py = np.array([[1, 1, 1], [0, 0, 0], [-1, -1, -1]], np.float64) / 3.0
  def gm(a):
    gx = np.zeros_like(a)
    gy = np.zeros_like(a)
    for b in range(a.shape[0]):
      for c in range(a.shape[-1]):
        # cross-correlation (F.conv2d), zero padding 1
        gx[b, :, :, c] = scipy.ndimage.correlate(a[b, :, :, c], px, mode="constant")
        gy[b, :, :, c] = scipy.ndimage.correlate(a[b, :, :, c], py, mode="constant")
    return np.sqrt(gx ** 2 + gy ** 2 + 1e-12)
  h = x.shape[1]
  total = 0.0
  for s in range(scales):
    if s:
      x = x.reshape(x.shape[0], x.shape[1] // 2, 2, x.shape[2] // 2, 2, -1).mean((2, 4))
      y = y.reshape(y.shape[0], y.shape[1] // 2, 2, y.shape[2] // 2, 2, -1).mean((2, 4))
    g1, g2 = gm(x), gm(y)
    gms = (2 * g1 * g2 + 0.0026) / (g1 ** 2 + g2 ** 2 + 0.0026 + 1e-12)
    total = total + np_bilinear_up(gms, h)
  return np.mean(1 - total / scales, axis=-1)


def np_ssim_loss(x, y, convention):
  m = np_ssim_map(x, y)
  if convention == "torchgeometry":
    return np.mean(np.clip(1 - m, 0, 1) / 2)
  if convention == "kornia":
    return np.mean(np.clip((1 - m) / 2, 0, 1))
  return 1 - np.mean(m)


def _pair(seed=0, size=32, noise=0.08):
  rng = np.random.default_rng(seed)
  x = scipy.ndimage.gaussian_filter(rng.uniform(size=(2, size, size, 3)), (0, 1.5, 1.5, 0))
  x = (x - x.min()) / (x.max() - x.min())
  r = np.clip(x + rng.normal(0, noise, x.shape), 0, 1)
  return r.astype(np.float32), x.astype(np.float32)


def _full_method(size=32):
  c = _cfg_module().get_config("full")
  c.input.data_dir = ""
  c.input.image_size = size
  c.input.categories = ("*",)
  c.model.unet_widths = (4, 4, 4, 4, 4)
  c.method.saliency_source = "spectral_residual"
  c.method.mosaic = "fixed"
  c.model.allow_random_init = True
  c.train.protocol = "unified"
  c.input.train_on_val = False
  return c


@pytest.mark.parametrize("convention", ["torchgeometry", "kornia", "one_minus"])
def test_ssim_conventions_against_numpy(convention):
  r, x = _pair(1, noise=0.4)   # noisy enough for some negative-SSIM pixels
  m = np_ssim_map(r.astype(np.float64), x.astype(np.float64))
  assert (m < 0).mean() > 0.01
  got = float(core.ssim_loss(jnp.asarray(r), jnp.asarray(x), convention))
  want = np_ssim_loss(r.astype(np.float64), x.astype(np.float64), convention)
  assert abs(got - want) < 1e-5, (got, want)


def test_torchgeometry_and_kornia_differ_only_on_negative_ssim():
  r, x = _pair(1, noise=0.4)
  tg = float(core.ssim_loss(jnp.asarray(r), jnp.asarray(x), "torchgeometry"))
  ko = float(core.ssim_loss(jnp.asarray(r), jnp.asarray(x), "kornia"))
  om = float(core.ssim_loss(jnp.asarray(r), jnp.asarray(x), "one_minus"))
  assert tg < ko - 1e-4                  # capped at 0.5 per pixel where SSIM < 0
  np.testing.assert_allclose(ko, om / 2, rtol=1e-5)
  r, x = _pair(2, noise=0.02)            # no negative SSIM: all three agree up to the factor 2
  tg = float(core.ssim_loss(jnp.asarray(r), jnp.asarray(x), "torchgeometry"))
  ko = float(core.ssim_loss(jnp.asarray(r), jnp.asarray(x), "kornia"))
  np.testing.assert_allclose(tg, ko, rtol=1e-6)
  with pytest.raises(ValueError, match="convention"):
    core.ssim_loss(jnp.asarray(r), jnp.asarray(x), "pytorch_ssim")


@pytest.mark.parametrize("variant", ["full", "demo"])
def test_lamp_loss_against_numpy(variant):
  """The method's training loss on a (recon, image) pair vs NumPy:
  full = -log(1 - (L2 + SSIM_tgm + MSGMS)), demo = -log(1 - (L2 + (1 - SSIM) + MSGMS) / 3)."""
  c = _full_method()
  if variant == "demo":
    demo = _cfg_module().get_config("demo")
    c.method.ssim_loss = demo.method.ssim_loss
    c.method.loss_weights = demo.method.loss_weights
    c.model.skips = demo.model.skips
  method = stage_helpers.build(c)
  r, x = _pair(3)
  loss, terms, comb = method.objective(jnp.asarray(r), jnp.asarray(x))
  r64, x64 = r.astype(np.float64), x.astype(np.float64)
  l2 = np.mean((r64 - x64) ** 2)
  msgms = np.mean(np_msgms_map(r64, x64, 3))
  if variant == "full":
    comb_np = l2 + np_ssim_loss(r64, x64, "torchgeometry") + msgms
  else:
    comb_np = (l2 + np_ssim_loss(r64, x64, "one_minus") + msgms) / 3
  assert 0.05 < comb_np < 0.95   # inside LAMP's domain, away from the clamp
  want = -np.log(1 - comb_np)
  assert abs(float(comb) - comb_np) < 1e-5, (float(comb), comb_np)
  assert abs(float(loss) - want) < 1e-5, (float(loss), want)
  assert abs(float(terms["msgms"]) - msgms) < 1e-5


# ----------------------------------------------------------------------------
# config switches
# ----------------------------------------------------------------------------
def test_full_uses_the_authors_conventions_demo_the_previous_ones():
  mod = _cfg_module()
  for v in ("full", "m_star", "wo_obf", "wo_attn"):
    c = mod.get_config(v)
    assert c.model.skips == "before_stride"
    assert c.method.ssim_loss == "torchgeometry"
    assert dict(c.method.loss_weights) == {"l2": 1.0, "ssim": 1.0, "msgms": 1.0}
  for v in ("demo", "demo_vit"):
    c = mod.get_config(v)
    assert c.model.skips == "after_stride"
    assert c.method.ssim_loss == "one_minus"
    assert dict(c.method.loss_weights) == {"l2": 1 / 3, "ssim": 1 / 3, "msgms": 1 / 3}


@pytest.mark.parametrize("key,value", [("model.skips", "middle"),
                                       ("method.ssim_loss", "pytorch_ssim")])
def test_unknown_switch_values_raise_config_error(key, value):
  c = _full_method()
  sect, name = key.split(".")
  c[sect][name] = value
  with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
    stage_helpers.build(c)


def test_full_train_step_runs_and_is_finite():
  c = _full_method()
  method = stage_helpers.build(c)
  stage = stage_helpers.stages(method)[0]
  params, rest, extras = stage.init_model(jax.random.PRNGKey(0), None)
  x, _ = _pair(4)
  batch = {"image": jnp.asarray(np.concatenate([x, x])), "category_id": jnp.zeros(4, jnp.int32)}
  state = {"params": params, "model_state": rest, "extras": extras}
  prepared, _ = stage.prepare(state, batch, jax.random.PRNGKey(1), 0)
  (loss, aux), g = jax.value_and_grad(stage.loss_fn, has_aux=True)(
      params, state, prepared, jax.random.PRNGKey(2), 0)
  assert np.isfinite(float(loss))
  gn = sum(float(jnp.sum(jnp.square(v))) for v in jax.tree_util.tree_leaves(g))
  assert gn > 0, "zero gradient (combined loss at LAMP's clamp?)"
