"""Mosaic, Hessian edge response and the top-fraction summary vs numpy."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from maskjax.ops import mosaic


def test_mosaic_vs_reshape_mean():
  x = np.random.default_rng(0).random((2, 16, 24, 3)).astype(np.float32)
  out = np.asarray(jax.jit(mosaic.mosaic, static_argnums=1)(x, 4))
  means = x.reshape(2, 4, 4, 6, 4, 3).mean(axis=(2, 4))
  ref = np.repeat(np.repeat(means, 4, 1), 4, 2)
  np.testing.assert_allclose(out, ref, atol=1e-6)


def test_mosaic_partial_cells_and_gray():
  x = np.random.default_rng(1).random((1, 10, 7)).astype(np.float32)
  out = np.asarray(mosaic.mosaic(x, 4))
  assert out.shape == x.shape
  np.testing.assert_allclose(out[0, 8, 4], x[0, 8:10, 4:7].mean(), rtol=1e-6)
  np.testing.assert_allclose(out[0, 0, 0], x[0, :4, :4].mean(), rtol=1e-6)
  b16 = mosaic.mosaic(jnp.asarray(x, jnp.bfloat16), 4)
  assert b16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(b16, np.float32), out, atol=1e-2)


def _hessian_numpy(g, eps=1e-6):
  b, h, w = g.shape
  r = np.zeros_like(g, dtype=np.float64)
  for n in range(b):
    for i in range(h):
      for j in range(w):
        at = lambda di, dj: float(g[n, min(max(i + di, 0), h - 1), min(max(j + dj, 0), w - 1)])
        ixx = at(0, 1) - 2 * at(0, 0) + at(0, -1)
        iyy = at(1, 0) - 2 * at(0, 0) + at(-1, 0)
        ixy = (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1)) / 4
        det = ixx * iyy - ixy ** 2
        if abs(det) < eps:
          det = eps if det >= 0 else -eps
        r[n, i, j] = (ixx + iyy) ** 2 / det
  return r


def test_hessian_edge_response_vs_loops():
  rng = np.random.default_rng(2)
  g = rng.random((2, 9, 11)).astype(np.float32)
  out = np.asarray(jax.jit(mosaic.hessian_edge_response)(g))
  ref = _hessian_numpy(g)
  np.testing.assert_allclose(out, ref, rtol=2e-3, atol=1e-3)
  # a blob (paraboloid) gives r = 4 exactly (Ixx = Iyy, Ixy = 0)
  i, j = np.mgrid[0:9, 0:9]
  blob = ((i - 4.0) ** 2 + (j - 4.0) ** 2)[None].astype(np.float32) / 10
  np.testing.assert_allclose(np.asarray(mosaic.hessian_edge_response(blob))[0, 2:-2, 2:-2],
                             4.0, rtol=1e-4)


def test_top_fraction_mean():
  rng = np.random.default_rng(3)
  r = rng.standard_normal((3, 10, 10)).astype(np.float32)
  region = (rng.random((3, 10, 10)) < 0.4).astype(np.float32)
  region[2] = 0  # empty region -> whole image
  out = np.asarray(jax.jit(mosaic.top_fraction_mean)(r, region))
  for b in range(3):
    vals = r[b][region[b] > 0.5] if region[b].any() else r[b].ravel()
    k = max(1, int(np.floor(0.1 * vals.size)))
    np.testing.assert_allclose(out[b], np.sort(vals)[::-1][:k].mean(), rtol=1e-5)
