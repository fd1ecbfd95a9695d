"""maskjax.ops.conv_transpose: the forward pass is nnx.ConvTranspose's, and
both gradients equal a direct float64 NumPy computation of the 4x4 stride-2
transposed convolution (PyTorch padding=1 geometry, unflipped kernel)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from maskjax.models.unet import Up
from maskjax.ops.conv_transpose import conv_transpose_4x4_s2


def _taps(h: int):
  """(input row i, window row r, output row) of every tap: out = 2i + 2 - r - 1
  for window row r of the unflipped lax kernel, i.e. PyTorch tap a = 3 - r."""
  for i in range(h):
    for r in range(4):
      o = 2 * i + (3 - r) - 1
      if 0 <= o < 2 * h:
        yield i, r, o


def _numpy_forward(x, k):
  n, h, w, _ = x.shape
  y = np.zeros((n, 2 * h, 2 * w, k.shape[-1]))
  for i, r, oi in _taps(h):
    for j, s, oj in _taps(w):
      y[:, oi, oj] += x[:, i, j] @ k[r, s]
  return y


def _numpy_grads(x, k, dy):
  n, h, w, _ = x.shape
  dx, dk = np.zeros_like(x), np.zeros_like(k)
  for i, r, oi in _taps(h):
    for j, s, oj in _taps(w):
      dx[:, i, j] += dy[:, oi, oj] @ k[r, s].T
      dk[r, s] += x[:, i, j].T @ dy[:, oi, oj]
  return dx, dk


def test_forward_and_gradients_equal_numpy():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 5, 6, 3))
  k = rng.standard_normal((4, 4, 3, 4))
  dy = rng.standard_normal((2, 10, 12, 4))
  xj, kj, dyj = (jnp.asarray(a, jnp.float32) for a in (x, k, dy))
  y, vjp = jax.vjp(conv_transpose_4x4_s2, xj, kj)
  dx, dk = vjp(dyj)
  ref_dx, ref_dk = _numpy_grads(x, k, dy)
  for got, ref in ((y, _numpy_forward(x, k)), (dx, ref_dx), (dk, ref_dk)):
    assert got.shape == ref.shape
    np.testing.assert_allclose(np.asarray(got), ref, rtol=0, atol=2e-6 * np.abs(ref).max())


def test_matches_autodiff_of_nnx_conv_transpose():
  up = Up(8, 6, mode="transpose", block="conv", rngs=nnx.Rngs(0))
  up.conv.bias[...] = jax.random.normal(jax.random.PRNGKey(1), (6,))
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 16, 16, 8))
  assert bool(jnp.all(up(x, False) == up.conv(x)))  # forward bit-identical
  ours = nnx.grad(lambda m: jnp.sum(jnp.sin(m(x, False))))(up)
  ref = nnx.grad(lambda m: jnp.sum(jnp.sin(m.conv(x))))(up)
  for name in ("kernel", "bias"):
    a, b = np.asarray(ours.conv[name][...]), np.asarray(ref.conv[name][...])
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())
