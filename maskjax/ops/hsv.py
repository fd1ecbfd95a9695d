"""RGB <-> HSV in [0, 1] as Python's `colorsys` defines them, vectorised over
[..., 3] arrays and written once for both array modules: `xp=numpy` on the
host (the grain workers' cut-paste synthesis) and `xp=jax.numpy` on the device
(the augmentations in `maskjax.ops.augment`). This module imports no JAX."""
from __future__ import annotations

import numpy as np


def rgb_to_hsv(img, xp=np):
  """[..., 3] RGB in [0, 1] -> HSV in [0, 1], h in [0, 1): h = 0 and s = 0 for
  greys, the red branch first on ties of the maximum (as `colorsys`)."""
  r, g, b = img[..., 0], img[..., 1], img[..., 2]
  maxc = xp.max(img, axis=-1)
  minc = xp.min(img, axis=-1)
  cr = maxc - minc
  flat = cr == 0
  s = xp.where(maxc > 0, cr / xp.where(maxc > 0, maxc, 1.0), 0.0)
  crd = xp.where(flat, 1.0, cr)
  rc, gc, bc = (maxc - r) / crd, (maxc - g) / crd, (maxc - b) / crd
  h = xp.where(maxc == r, bc - gc, xp.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
  h = xp.where(flat, 0.0, xp.mod(h / 6.0, 1.0))
  return xp.stack([h, s, maxc], axis=-1)


def hsv_to_rgb(hsv, xp=np):
  """Inverse of `rgb_to_hsv` (`colorsys.hsv_to_rgb`): sector i = floor(6 h)
  mod 6, fraction f = 6 h - floor(6 h), p = v (1 - s), q = v (1 - s f),
  t = v (1 - s (1 - f)); (r, g, b) = (v,t,p) (q,v,p) (p,v,t) (p,q,v) (t,p,v)
  (v,p,q) for i = 0..5."""
  h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
  h6 = h * 6.0
  i = xp.mod(xp.floor(h6), 6.0).astype(xp.int32)
  f = h6 - xp.floor(h6)
  p = v * (1.0 - s)
  q = v * (1.0 - s * f)
  t = v * (1.0 - s * (1.0 - f))
  sector = [i == k for k in range(5)]           # i == 5: the default
  r = xp.select(sector, [v, q, p, p, t], v)
  g = xp.select(sector, [t, v, v, q, p], p)
  b = xp.select(sector, [p, p, t, v, v], q)
  return xp.stack([r, g, b], axis=-1)
