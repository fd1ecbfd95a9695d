"""Filters against scipy.ndimage with the same padding conventions."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from maskjax.ops import filters


def _rand(shape, seed=0):
  return np.random.default_rng(seed).random(shape).astype(np.float32)


def test_gaussian_kernel_matches_formula():
  k = filters.gaussian_kernel(11, 1.5)
  t = np.arange(11) - 5
  g = np.exp(-t ** 2 / (2 * 1.5 ** 2))
  ref = np.outer(g, g) / np.outer(g, g).sum()
  np.testing.assert_allclose(k, ref, rtol=1e-6, atol=1e-8)
  assert k.shape == (11, 11)


def test_gaussian_filter_vs_scipy_correlate_zero_padding():
  x = _rand((2, 17, 13, 3))
  out = np.asarray(jax.jit(filters.gaussian_filter)(x))
  k = filters.gaussian_kernel(11, 1.5).astype(np.float64)
  ref = np.stack([np.stack([ndimage.correlate(x[b, :, :, c].astype(np.float64), k,
                                              mode="constant", cval=0.0)
                            for c in range(3)], -1) for b in range(2)])
  np.testing.assert_allclose(out, ref, atol=2e-6)


def test_box_filter_vs_uniform_filter_zeros_and_edge_divisor():
  x = _rand((2, 30, 25))
  out = np.asarray(jax.jit(filters.box_filter)(x))
  ref = np.stack([ndimage.uniform_filter(x[b].astype(np.float64), 21, mode="constant", cval=0.0)
                  for b in range(2)])
  np.testing.assert_allclose(out, ref, atol=2e-6)
  # corner pixel: sum over the 11x11 in-image window divided by 441, not by 121
  np.testing.assert_allclose(out[0, 0, 0], x[0, :11, :11].sum() / 441.0, rtol=1e-5)


@pytest.mark.parametrize("padding,mode", [("reflect", "reflect"), ("zero", "constant")])
def test_median_filter_vs_scipy(padding, mode):
  x = _rand((2, 12, 9, 2))
  out = np.asarray(filters.median_filter(x, 3, padding))
  ref = ndimage.median_filter(x, size=(1, 3, 3, 1), mode=mode, cval=0.0)
  np.testing.assert_array_equal(out, ref)


def test_median_filter_valid():
  x = _rand((1, 10, 8, 1))
  out = np.asarray(filters.median_filter(x, 5, "none"))
  ref = ndimage.median_filter(x, size=(1, 5, 5, 1))[:, 2:-2, 2:-2]
  assert out.shape == (1, 6, 4, 1)
  np.testing.assert_array_equal(out, ref)


def test_bf16_within_tolerance():
  x = _rand((2, 16, 16, 3))
  for fn in (filters.gaussian_filter, filters.box_filter):
    f32 = np.asarray(fn(jnp.asarray(x)))
    b16 = fn(jnp.asarray(x, jnp.bfloat16))
    assert b16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(b16, np.float32), f32, atol=1e-2)


@pytest.mark.parametrize("impl", ["conv", "shift"])
def test_depthwise_conv_both_impls_vs_scipy(impl):
  x = _rand((2, 11, 9, 2), seed=5)
  k = np.random.default_rng(6).standard_normal((3, 5)).astype(np.float32)
  out = np.asarray(filters.depthwise_conv(jnp.asarray(x), k, ((1, 1), (2, 2)), impl=impl))
  ref = ndimage.correlate(x.astype(np.float64), k[None, :, :, None].astype(np.float64),
                          mode="constant", cval=0.0)
  np.testing.assert_allclose(out, ref, atol=1e-5)
  valid = np.asarray(filters.depthwise_conv(jnp.asarray(x), k, "VALID", impl=impl))
  np.testing.assert_allclose(valid, ref[:, 1:-1, 2:-2], atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 32, 32), (1, 20, 24)])
def test_gaussian_filter_reflect_equals_scipy(shape):
  """Radius 28 > the map size at (20, 24): scipy reflects repeatedly."""
  a = np.random.default_rng(6).uniform(size=shape).astype(np.float32)
  got = np.asarray(filters.gaussian_filter_reflect(jnp.asarray(a), 7.0))
  want = np.stack([ndimage.gaussian_filter(p.astype(np.float64), sigma=7) for p in a])
  np.testing.assert_allclose(got, want, atol=1e-6)
