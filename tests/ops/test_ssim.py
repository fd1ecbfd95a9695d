"""SSIM against a scipy implementation and against the torch conv2d formula."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from maskjax.ops import filters, ssim


def _pair(shape=(2, 20, 18, 3), seed=0):
  rng = np.random.default_rng(seed)
  x = rng.random(shape).astype(np.float32)
  y = np.clip(x + 0.2 * rng.standard_normal(shape), 0, 1).astype(np.float32)
  return x, y


def _ssim_scipy(x, y, data_range=1.0):
  k = filters.gaussian_kernel(11, 1.5).astype(np.float64)
  x = x.astype(np.float64)
  y = y.astype(np.float64)

  def g(a):
    out = np.empty_like(a)
    for b in range(a.shape[0]):
      for c in range(a.shape[3]):
        out[b, :, :, c] = ndimage.correlate(a[b, :, :, c], k, mode="constant", cval=0.0)
    return out

  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  mx, my = g(x), g(y)
  sxx = g(x * x) - mx ** 2
  syy = g(y * y) - my ** 2
  sxy = g(x * y) - mx * my
  return ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))


def test_ssim_map_vs_scipy():
  x, y = _pair()
  out = np.asarray(jax.jit(ssim.ssim_map)(x, y))
  np.testing.assert_allclose(out, _ssim_scipy(x, y), atol=5e-5)


def test_ssim_data_range_two():
  x, y = _pair(seed=1)
  x2, y2 = 2 * x - 1, 2 * y - 1
  out = np.asarray(ssim.ssim_map(x2, y2, data_range=2.0))
  np.testing.assert_allclose(out, _ssim_scipy(x2, y2, 2.0), atol=5e-5)


def test_ssim_vs_torch_formula():
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  x, y = _pair(seed=2)
  k = torch.tensor(filters.gaussian_kernel(11, 1.5), dtype=torch.float64)
  w = k[None, None].repeat(3, 1, 1, 1)
  tx = torch.tensor(x, dtype=torch.float64).permute(0, 3, 1, 2)
  ty = torch.tensor(y, dtype=torch.float64).permute(0, 3, 1, 2)
  conv = lambda a: F.conv2d(a, w, padding=5, groups=3)
  mx, my = conv(tx), conv(ty)
  sxx, syy, sxy = conv(tx * tx) - mx ** 2, conv(ty * ty) - my ** 2, conv(tx * ty) - mx * my
  c1, c2 = 0.01 ** 2, 0.03 ** 2
  ref = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))
  ref = ref.permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(np.asarray(ssim.ssim_map(x, y)), ref, atol=5e-5)
  np.testing.assert_allclose(float(ssim.ssim_loss(x, y)), 1 - ref.mean(), atol=1e-5)
  kornia = np.clip((1 - ref) / 2, 0, 1).mean()
  np.testing.assert_allclose(float(ssim.ssim_loss(x, y, convention="kornia")), kornia, atol=1e-5)


def test_ssim_identical_is_one_and_bad_convention():
  x, _ = _pair(seed=3)
  np.testing.assert_allclose(np.asarray(ssim.ssim_map(x, x)), 1.0, atol=1e-5)
  with pytest.raises(ValueError, match="convention"):
    ssim.ssim_loss(x, x, convention="nope")


def test_ssim_bf16_within_documented_tolerance():
  x, y = _pair(seed=4)
  f32 = np.asarray(ssim.ssim_map(x, y))
  b16 = ssim.ssim_map(jnp.asarray(x, jnp.bfloat16), jnp.asarray(y, jnp.bfloat16))
  assert b16.dtype == jnp.float32
  assert np.abs(np.asarray(b16) - f32).max() <= 2e-2
