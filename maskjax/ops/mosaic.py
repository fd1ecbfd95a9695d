"""EAR's mosaic hint and the Hessian edge response of its mosaic-scale estimator.

mosaic(x, m): m x m average pooling with stride m, then nearest upsampling back
to the input size (every pixel of a cell takes the cell mean). When H or W is
not a multiple of m, the last row/column of cells is partial and its mean is
taken over the pixels that exist (avg-pool with ceil mode and no padding in the
count); the output always has the input shape.

hessian_edge_response(gray): second derivatives by finite differences on the
edge-padded image (numpy pad "edge", i.e. replicate):
  Ixx = I[y, x+1] - 2 I[y, x] + I[y, x-1]        (kernel [1, -2, 1] along x)
  Iyy = I[y+1, x] - 2 I[y, x] + I[y-1, x]        (kernel [1, -2, 1] along y)
  Ixy = (I[y+1, x+1] - I[y+1, x-1] - I[y-1, x+1] + I[y-1, x-1]) / 4
        (kernel [[1, 0, -1], [0, 0, 0], [-1, 0, 1]] / 4, up to sign convention)
  Tr = Ixx + Iyy, Det = Ixx Iyy - Ixy^2, r = Tr^2 / Det (EAR eq. 2, SIFT).
Det is guarded away from zero keeping its sign: Det' = Det where |Det| >= eps,
else +eps (Det >= 0) or -eps (Det < 0), eps = 1e-6 by default. r is then finite,
>= 0 on blob-like points, < 0 on saddles and large on edges (tiny Det).
Arithmetic in float32.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def mosaic(x: jax.Array, m: int) -> jax.Array:
  """[B,H,W,C] or [B,H,W] -> same shape: m x m block means, nearest upsampled."""
  if m < 1:
    raise ValueError(f"mosaic: scale m must be >= 1, got {m}")
  squeeze = x.ndim == 3
  xf = (x[..., None] if squeeze else x).astype(jnp.float32)
  b, h, w, c = xf.shape
  gh, gw = math.ceil(h / m), math.ceil(w / m)
  pad = ((0, 0), (0, gh * m - h), (0, gw * m - w), (0, 0))
  sums = jnp.pad(xf, pad).reshape(b, gh, m, gw, m, c).sum(axis=(2, 4))
  ones = jnp.pad(jnp.ones((1, h, w, 1), jnp.float32), pad)
  counts = ones.reshape(1, gh, m, gw, m, 1).sum(axis=(2, 4))
  means = sums / counts
  up = jnp.repeat(jnp.repeat(means, m, axis=1), m, axis=2)[:, :h, :w, :]
  up = up.astype(x.dtype)
  return up[..., 0] if squeeze else up


def hessian_edge_response(gray: jax.Array, eps: float = 1e-6) -> jax.Array:
  """r = Tr(H)^2 / Det(H) per pixel of gray [B,H,W] -> [B,H,W] float32
  (finite differences and guard in the module docstring)."""
  if gray.ndim != 3:
    raise ValueError(f"hessian_edge_response: expected gray [B,H,W], got shape {gray.shape}")
  g = jnp.pad(gray.astype(jnp.float32), ((0, 0), (1, 1), (1, 1)), mode="edge")
  c = g[:, 1:-1, 1:-1]
  ixx = g[:, 1:-1, 2:] - 2.0 * c + g[:, 1:-1, :-2]
  iyy = g[:, 2:, 1:-1] - 2.0 * c + g[:, :-2, 1:-1]
  ixy = (g[:, 2:, 2:] - g[:, 2:, :-2] - g[:, :-2, 2:] + g[:, :-2, :-2]) / 4.0
  tr = ixx + iyy
  det = ixx * iyy - ixy * ixy
  det = jnp.where(jnp.abs(det) >= eps, det, jnp.where(det >= 0, eps, -eps))
  return tr * tr / det


def top_fraction_mean(r: jax.Array, region_mask: jax.Array, fraction: float = 0.1
                      ) -> jax.Array:
  """Mean of the top `fraction` of r inside the region, per image -> [B].

  r, region_mask: [B,H,W] (region = mask > 0.5). With n region pixels the top
  k = max(1, floor(fraction * n)) values are averaged (EAR's r10 for fraction
  0.1). An empty region falls back to the whole image. Static shapes: the
  values are sorted with non-region pixels set to -inf.
  """
  b = r.shape[0]
  rf = r.astype(jnp.float32).reshape(b, -1)
  region = region_mask.reshape(b, -1) > 0.5
  n = jnp.sum(region, axis=1)
  region = jnp.where((n > 0)[:, None], region, True)
  n = jnp.sum(region, axis=1)
  k = jnp.maximum(1, jnp.floor(fraction * n).astype(jnp.int32))
  vals = jnp.sort(jnp.where(region, rf, -jnp.inf), axis=1)[:, ::-1]
  take = jnp.arange(rf.shape[1])[None, :] < k[:, None]
  return jnp.sum(jnp.where(take, vals, 0.0), axis=1) / k
