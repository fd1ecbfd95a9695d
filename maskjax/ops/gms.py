"""Gradient magnitude similarity (GMS) and its multi-scale form (MSGMS).

Common definitions (taikiinoue45/RIAD, the version EAR cites):
  * Prewitt kernels divided by 3, applied by cross-correlation per channel:
      hx = [[1, 0, -1], [1, 0, -1], [1, 0, -1]] / 3,  hy = hx^T
    (the sign is irrelevant: only squares enter);
  * g = sqrt(gx^2 + gy^2 + 1e-12);
  * GMS = (2 g1 g2 + c) / (g1^2 + g2^2 + c + 1e-12), c = 0.0026.
Arithmetic is float32 (bf16 inputs are upcast); maps are float32.

Variants of the multi-scale map (`msgms_map(variant=...)`):
  "riad" (default): colour channels kept; Prewitt with zero padding 1 (same
    size); scales = the input and repeated 2x2 average pools (stride 2, odd
    sizes floored); each scale's GMS map is resized to the input size with
    `jax.image.resize(..., "linear")` (half-pixel centres, equal to
    `F.interpolate(mode="bilinear", align_corners=False)` when upsampling);
    map = 1 - sum_s(map_s) / n_scales, then averaged over channels.
  "gray_median": the plutoyuxie port (copied by SSM's official code): the
    image is converted to gray as the channel mean, median-blurred 3x3 with
    zero padding (kornia `MedianBlur`), and the Prewitt correlation uses
    padding 0 (valid, each scale's map is 2 pixels smaller before the resize).
    Gray conversion and median are applied at every scale, after pooling.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from maskjax.ops import filters

PREWITT_X = np.array([[1., 0., -1.], [1., 0., -1.], [1., 0., -1.]], np.float32) / 3.0
PREWITT_Y = PREWITT_X.T.copy()
VARIANTS = ("riad", "gray_median")


def gradient_magnitude(x: jax.Array, padding: int | str = 1) -> jax.Array:
  """sqrt(gx^2 + gy^2 + 1e-12) per channel of [B,H,W,C] with the Prewitt/3
  kernels; `padding` 1 = zero padding (same size), "VALID" = no padding."""
  gx = filters.depthwise_conv(x, PREWITT_X, padding)
  gy = filters.depthwise_conv(x, PREWITT_Y, padding)
  return jnp.sqrt(gx * gx + gy * gy + 1e-12)


def _gms(x: jax.Array, y: jax.Array, c: float, padding) -> jax.Array:
  g1 = gradient_magnitude(x, padding)
  g2 = gradient_magnitude(y, padding)
  return (2.0 * g1 * g2 + c) / (g1 * g1 + g2 * g2 + c + 1e-12)


def gms_map(x: jax.Array, y: jax.Array, c: float = 0.0026) -> jax.Array:
  """Single-scale GMS similarity, SSM eq. 6-8: per-channel GMS averaged over
  channels -> [B,H,W] float32 (1 = identical gradients). SSM's loss (eq. 5)
  is `mean(1 - gms_map)` and its score term is `1 - gms_map`. The paper's
  constant `a` and the Prewitt scaling are not given; we use the RIAD values
  (c = 0.0026, Prewitt/3, zero padding 1)."""
  if x.shape != y.shape:
    raise ValueError(f"gms_map: shapes differ: {x.shape} vs {y.shape}")
  x = x.astype(jnp.float32)
  y = y.astype(jnp.float32)
  return jnp.mean(_gms(x, y, c, 1), axis=-1)


def _scale_gms(x: jax.Array, y: jax.Array, c: float, variant: str) -> jax.Array:
  """GMS map of one scale, [B,h,w,C] ("riad") or [B,h-2,w-2,1] ("gray_median")."""
  if variant == "gray_median":
    x = filters.median_filter(jnp.mean(x, axis=-1, keepdims=True), 3, "zero")
    y = filters.median_filter(jnp.mean(y, axis=-1, keepdims=True), 3, "zero")
    return _gms(x, y, c, "VALID")
  return _gms(x, y, c, 1)


def msgms_map(x: jax.Array, y: jax.Array, num_scales: int = 4, variant: str = "riad",
              c: float = 0.0026) -> jax.Array:
  """Multi-scale GMS *distance* map [B,H,W] float32 in [0, 1] (0 = identical);
  see the module docstring for the variants. RIAD uses 4 scales, EAR 3."""
  if x.shape != y.shape:
    raise ValueError(f"msgms_map: shapes differ: {x.shape} vs {y.shape}")
  if variant not in VARIANTS:
    raise ValueError(f"msgms_map: variant must be one of {VARIANTS}, got {variant!r}")
  if num_scales < 1:
    raise ValueError(f"msgms_map: num_scales must be >= 1, got {num_scales}")
  x = x.astype(jnp.float32)
  y = y.astype(jnp.float32)
  b, h, w, _ = x.shape
  total = None
  for s in range(num_scales):
    if s > 0:
      x = filters.avg_pool2(x)
      y = filters.avg_pool2(y)
    m = _scale_gms(x, y, c, variant)
    if m.shape[1:3] != (h, w):
      m = jax.image.resize(m, (b, h, w, m.shape[-1]), method="linear")
    total = m if total is None else total + m
  return jnp.mean(1.0 - total / num_scales, axis=-1)


def msgms_loss(x: jax.Array, y: jax.Array, num_scales: int = 4, variant: str = "riad",
               c: float = 0.0026, reduction: str = "map") -> jax.Array:
  """Scalar MSGMS loss.

  reduction:
    "map" (default, REFERENCE): mean of `msgms_map`;
    "per_scale": mean over scales of mean(1 - GMS_s) computed at each scale's
      own resolution (the taikiinoue45 training loss, no resizing).
  """
  if reduction == "map":
    return jnp.mean(msgms_map(x, y, num_scales, variant, c))
  if reduction != "per_scale":
    raise ValueError(f"msgms_loss: reduction must be 'map' or 'per_scale', got {reduction!r}")
  if variant not in VARIANTS:
    raise ValueError(f"msgms_loss: variant must be one of {VARIANTS}, got {variant!r}")
  x = x.astype(jnp.float32)
  y = y.astype(jnp.float32)
  total = 0.0
  for s in range(num_scales):
    if s > 0:
      x = filters.avg_pool2(x)
      y = filters.avg_pool2(y)
    total = total + jnp.mean(1.0 - _scale_gms(x, y, c, variant))
  return total / num_scales


def riad_score_filter(m: jax.Array, size: int = 21) -> jax.Array:
  """RIAD test-score post-filter: `size x size` box mean with zero padding
  `size // 2`, every pixel divided by size^2 ([B,H,W] -> [B,H,W])."""
  return filters.box_filter(m, size)
