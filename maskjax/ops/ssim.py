"""Structural similarity (SSIM) map and loss on NHWC batches.

Definition (RIAD / DRAEM `pytorch_ssim` code): an 11x11 normalised Gaussian
window (sigma 1.5) applied per channel with zero padding 5 (same-size output,
`F.conv2d(padding=5)`, scipy `correlate(mode="constant", cval=0)`), and

  mu_x = G*x, mu_y = G*y,
  s_xx = G*(x^2) - mu_x^2, s_yy = G*(y^2) - mu_y^2, s_xy = G*(xy) - mu_x mu_y,
  ssim = ((2 mu_x mu_y + C1)(2 s_xy + C2)) / ((mu_x^2 + mu_y^2 + C1)(s_xx + s_yy + C2)),

with C1 = (0.01 L)^2, C2 = (0.03 L)^2 and L = `data_range` (1 for [0, 1]
images, 2 for [-1, 1]). Arithmetic is float32 (bf16 inputs are upcast: the
variance terms cancel catastrophically in bf16) and results are float32.
The bf16 tolerance is then only that of the rounded inputs: |ssim(bf16(x)) -
ssim(x)| <= 2e-2 per pixel on [0, 1] images (tested).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from maskjax.ops import filters

CONVENTIONS = ("one_minus", "kornia")


def ssim_map(x: jax.Array, y: jax.Array, data_range: float = 1.0, win: int = 11,
             sigma: float = 1.5) -> jax.Array:
  """Per-pixel, per-channel SSIM of two `[B,H,W,C]` batches -> `[B,H,W,C]` float32."""
  if x.shape != y.shape:
    raise ValueError(f"ssim_map: shapes differ: {x.shape} vs {y.shape}")
  x = x.astype(jnp.float32)
  y = y.astype(jnp.float32)
  c1 = (0.01 * data_range) ** 2
  c2 = (0.03 * data_range) ** 2
  # One filter call on the five stacked moments.
  c = x.shape[-1]
  stats = filters.gaussian_filter(jnp.concatenate([x, y, x * x, y * y, x * y], axis=-1),
                                  win, sigma)
  mu_x, mu_y, e_xx, e_yy, e_xy = (stats[..., i * c:(i + 1) * c] for i in range(5))
  s_xx = e_xx - mu_x * mu_x
  s_yy = e_yy - mu_y * mu_y
  s_xy = e_xy - mu_x * mu_y
  num = (2.0 * mu_x * mu_y + c1) * (2.0 * s_xy + c2)
  den = (mu_x * mu_x + mu_y * mu_y + c1) * (s_xx + s_yy + c2)
  return num / den


def ssim_loss(x: jax.Array, y: jax.Array, data_range: float = 1.0,
              convention: str = "one_minus", win: int = 11, sigma: float = 1.5) -> jax.Array:
  """Scalar SSIM loss.

  convention:
    "one_minus": 1 - mean(ssim_map) over batch, pixels and channels (RIAD, DRAEM);
    "kornia": mean(clamp((1 - ssim_map) / 2, 0, 1)) (torchgeometry/kornia `SSIM`
      loss), i.e. half the first one except where clamping bites.
  """
  m = ssim_map(x, y, data_range, win, sigma)
  if convention == "one_minus":
    return 1.0 - jnp.mean(m)
  if convention == "kornia":
    return jnp.mean(jnp.clip((1.0 - m) / 2.0, 0.0, 1.0))
  raise ValueError(f"ssim_loss: convention must be one of {CONVENTIONS}, got {convention!r}")
