"""GMS / MSGMS against scipy and against the same formulas written in torch."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from maskjax.ops import gms

PX = np.array([[1., 0., -1.], [1., 0., -1.], [1., 0., -1.]]) / 3.0


def _pair(shape=(2, 24, 20, 3), seed=0):
  rng = np.random.default_rng(seed)
  x = rng.random(shape).astype(np.float32)
  y = np.clip(x + 0.3 * rng.standard_normal(shape), 0, 1).astype(np.float32)
  return x, y


def _gms_scipy(x, y, c=0.0026):
  def grad(a):
    gx = ndimage.correlate(a, PX, mode="constant", cval=0.0)
    gy = ndimage.correlate(a, PX.T, mode="constant", cval=0.0)
    return np.sqrt(gx ** 2 + gy ** 2 + 1e-12)
  out = np.zeros(x.shape[:3])
  for b in range(x.shape[0]):
    for ch in range(x.shape[3]):
      g1 = grad(x[b, :, :, ch].astype(np.float64))
      g2 = grad(y[b, :, :, ch].astype(np.float64))
      out[b] += (2 * g1 * g2 + c) / (g1 ** 2 + g2 ** 2 + c + 1e-12) / x.shape[3]
  return out


def test_gms_map_vs_scipy():
  x, y = _pair()
  out = np.asarray(jax.jit(gms.gms_map)(x, y))
  assert out.shape == (2, 24, 20)
  np.testing.assert_allclose(out, _gms_scipy(x, y), atol=2e-5)


def _torch_msgms(torch, x, y, num_scales, variant, c=0.0026):
  F = torch.nn.functional
  a = torch.tensor(x, dtype=torch.float64).permute(0, 3, 1, 2)
  b = torch.tensor(y, dtype=torch.float64).permute(0, 3, 1, 2)
  h, w = a.shape[2:]

  def median3(t):
    p = F.pad(t, (1, 1, 1, 1))
    cols = F.unfold(p, 3)  # [B, 9, h*w] for one channel
    return cols.median(dim=1).values.reshape(t.shape)

  def one_scale(a, b):
    if variant == "gray_median":
      a = median3(a.mean(1, keepdim=True))
      b = median3(b.mean(1, keepdim=True))
      pad = 0
    else:
      pad = 1
    ch = a.shape[1]
    kx = torch.tensor(PX)[None, None].repeat(ch, 1, 1, 1)
    ky = torch.tensor(PX.T.copy())[None, None].repeat(ch, 1, 1, 1)
    g = lambda t: torch.sqrt(F.conv2d(t, kx, padding=pad, groups=ch) ** 2
                             + F.conv2d(t, ky, padding=pad, groups=ch) ** 2 + 1e-12)
    g1, g2 = g(a), g(b)
    return (2 * g1 * g2 + c) / (g1 ** 2 + g2 ** 2 + c + 1e-12)

  total = 0
  per_scale = 0
  for s in range(num_scales):
    if s > 0:
      a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
    m = one_scale(a, b)
    per_scale = per_scale + (1 - m).mean()
    total = total + F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
  return (1 - total / num_scales).mean(1).numpy(), float(per_scale / num_scales)


@pytest.mark.parametrize("variant,scales", [("riad", 4), ("riad", 3), ("gray_median", 4)])
def test_msgms_vs_torch(variant, scales):
  torch = pytest.importorskip("torch")
  x, y = _pair((2, 32, 28, 3), seed=1)
  ref_map, ref_ps = _torch_msgms(torch, x, y, scales, variant)
  fn = jax.jit(gms.msgms_map, static_argnames=("num_scales", "variant"))
  out = np.asarray(fn(x, y, num_scales=scales, variant=variant))
  np.testing.assert_allclose(out, ref_map, atol=2e-5)
  if (variant, scales) != ("riad", 3):   # the losses: once per variant
    loss = jax.jit(lambda a, b: (gms.msgms_loss(a, b, scales, variant),
                                 gms.msgms_loss(a, b, scales, variant, reduction="per_scale")))
    from_map, per_scale = loss(x, y)
    np.testing.assert_allclose(float(from_map), ref_map.mean(), atol=1e-5)
    np.testing.assert_allclose(float(per_scale), ref_ps, atol=1e-5)


def test_msgms_identical_is_zero_and_bf16():
  x, y = _pair(seed=2)
  fn = jax.jit(gms.msgms_map)
  np.testing.assert_allclose(np.asarray(fn(x, x)), 0.0, atol=1e-5)
  f32 = np.asarray(fn(x, y))
  b16 = np.asarray(fn(jnp.asarray(x, jnp.bfloat16), jnp.asarray(y, jnp.bfloat16)))
  assert np.abs(b16 - f32).max() <= 3e-2


def test_riad_score_filter_vs_uniform_filter():
  m = np.random.default_rng(3).random((2, 26, 30)).astype(np.float32)
  out = np.asarray(gms.riad_score_filter(m))
  ref = np.stack([ndimage.uniform_filter(m[b].astype(np.float64), 21, mode="constant")
                  for b in range(2)])
  np.testing.assert_allclose(out, ref, atol=2e-6)
