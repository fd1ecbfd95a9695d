"""Depthwise image filters on NHWC batches: Gaussian, box, median, 3x3 kernels.

Conventions (all filters):
  * input `x` is `[B, H, W, C]` (or `[B, H, W]`, treated as one channel and
    returned without the channel axis);
  * the same 2-D kernel is applied to every channel independently (depthwise:
    `lax.conv_general_dilated` with `feature_group_count = C` on accelerators,
    fused shifted sums on CPU, see `depthwise_conv`);
  * the operation is a cross-correlation, as `torch.nn.functional.conv2d` and
    `scipy.ndimage.correlate` compute it (it only matters for asymmetric kernels);
  * zero padding of `size // 2` on each side gives a same-size output; this is
    `F.conv2d(x, w, padding=size // 2)` in PyTorch and
    `scipy.ndimage.correlate(x, w, mode="constant", cval=0)` in scipy.
    Pixels near the border therefore see zeros, and the box filter divides by
    `size * size` everywhere, edge pixels included;
  * arithmetic is float32 (bf16 inputs are upcast) and the result is cast back
    to the input dtype; on accelerators the convolutions run at
    `Precision.HIGHEST` so float32 results match PyTorch/scipy to ~1e-6.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_DN = ("NHWC", "HWIO", "NHWC")


def gaussian_kernel(size: int = 11, sigma: float = 1.5) -> np.ndarray:
  """Normalised 2-D Gaussian kernel `[size, size]` (float32, sums to 1).

  Built as the outer product of the 1-D window
  `g[i] = exp(-(i - size // 2)^2 / (2 sigma^2)) / sum(g)`, the window of the
  RIAD/DRAEM `pytorch_ssim` code.
  """
  if size < 1 or size % 2 == 0:
    raise ValueError(f"gaussian_kernel: size must be a positive odd int, got {size}")
  if sigma <= 0:
    raise ValueError(f"gaussian_kernel: sigma must be > 0, got {sigma}")
  t = np.arange(size, dtype=np.float64) - size // 2
  g = np.exp(-(t ** 2) / (2.0 * sigma ** 2))
  g /= g.sum()
  return np.outer(g, g).astype(np.float32)


def _as_nhwc(x: jax.Array) -> tuple[jax.Array, bool]:
  if x.ndim == 3:
    return x[..., None], True
  if x.ndim == 4:
    return x, False
  raise ValueError(f"expected an image batch [B,H,W] or [B,H,W,C], got shape {x.shape}")


def depthwise_conv(x: jax.Array, kernel, padding, impl: str = "auto") -> jax.Array:
  """Correlates every channel of `x` [B,H,W,C] with the 2-D `kernel` [kh,kw].

  `padding` is a `lax` padding spec: an int p (zero padding p on all sides),
  "VALID", or ((top, bottom), (left, right)). Computes in float32, returns
  float32 (callers cast back).

  impl: "conv" = `lax.conv_general_dilated` with `feature_group_count = C`
  (used on GPU/TPU); "shift" = the same sum written as weighted shifted
  slices of the zero-padded input, which XLA fuses into one loop (used on
  CPU, where grouped convolutions are ~10x slower); "auto" picks by
  `jax.default_backend()`. Both give the same values up to float rounding.
  """
  x = x.astype(jnp.float32)
  k = np.asarray(kernel, np.float32)
  if impl == "auto":
    impl = "shift" if jax.default_backend() == "cpu" else "conv"
  if isinstance(padding, int):
    padding = ((padding, padding), (padding, padding))
  elif isinstance(padding, str):
    if padding.upper() != "VALID":
      raise ValueError(f"depthwise_conv: padding must be an int, 'VALID' or pairs, got {padding!r}")
    padding = ((0, 0), (0, 0))
  if impl == "shift":
    kh, kw = k.shape
    xp = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    h = xp.shape[1] - kh + 1
    w = xp.shape[2] - kw + 1
    out = None
    for i in range(kh):
      for j in range(kw):
        if k[i, j] == 0.0:
          continue
        term = float(k[i, j]) * xp[:, i:i + h, j:j + w, :]
        out = term if out is None else out + term
    return jnp.zeros(x.shape[:1] + (h, w) + x.shape[3:], jnp.float32) if out is None else out
  if impl != "conv":
    raise ValueError(f"depthwise_conv: impl must be 'auto', 'conv' or 'shift', got {impl!r}")
  c = x.shape[-1]
  rhs = jnp.broadcast_to(jnp.asarray(k)[:, :, None, None], k.shape + (1, c))
  return lax.conv_general_dilated(
      x, rhs, window_strides=(1, 1), padding=padding, dimension_numbers=_DN,
      feature_group_count=c, precision=lax.Precision.HIGHEST)


def gaussian_filter(x: jax.Array, size: int = 11, sigma: float = 1.5) -> jax.Array:
  """Gaussian blur with the normalised `gaussian_kernel(size, sigma)`.

  Zero padding `size // 2` (same-size output) = `F.conv2d(padding=size//2)` =
  `scipy.ndimage.correlate(mode="constant", cval=0)` with the same 2-D kernel
  (note: *not* `scipy.ndimage.gaussian_filter`, whose truncation differs).
  Separable: a column pass then a row pass, identical up to rounding.
  """
  x4, squeeze = _as_nhwc(x)
  k1 = np.sqrt(np.diag(gaussian_kernel(size, sigma)))  # the 1-D window
  p = size // 2
  y = depthwise_conv(x4, k1[:, None], ((p, p), (0, 0)))
  y = depthwise_conv(y, k1[None, :], ((0, 0), (p, p)))
  y = y.astype(x.dtype)
  return y[..., 0] if squeeze else y


def gaussian_filter_reflect(m: jax.Array, sigma: float, truncate: float = 4.0) -> jax.Array:
  """`scipy.ndimage.gaussian_filter(m[i], sigma)` for every map of [B,H,W]:
  the normalised 1-D window exp(-t^2 / (2 sigma^2)), t = -r..r with
  r = int(truncate * sigma + 0.5), applied along H then W on borders padded by
  reflection including the edge pixel (scipy "reflect" = numpy "symmetric").
  float32 result (scipy accumulates each line in float64)."""
  radius = int(truncate * float(sigma) + 0.5)
  t = np.arange(-radius, radius + 1, dtype=np.float64)
  g = np.exp(-0.5 * t * t / float(sigma) ** 2)
  g = (g / g.sum()).astype(np.float32)
  x = jnp.pad(m.astype(jnp.float32)[..., None],
              ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="symmetric")
  x = depthwise_conv(x, g[:, None], "VALID")
  x = depthwise_conv(x, g[None, :], "VALID")
  return x[..., 0]


def box_filter(x: jax.Array, size: int = 21) -> jax.Array:
  """Mean over a `size x size` window, zero padding `size // 2`, divisor `size**2`.

  Edge pixels are also divided by `size * size` (zeros count), as
  `F.avg_pool2d(x, size, stride=1, padding=size//2, count_include_pad=True)`
  and `scipy.ndimage.uniform_filter(mode="constant", cval=0)` do. This is the
  21x21 post-filter of the RIAD test score. Separable.
  """
  if size < 1 or size % 2 == 0:
    raise ValueError(f"box_filter: size must be a positive odd int, got {size}")
  x4, squeeze = _as_nhwc(x)
  p = size // 2
  k1 = np.full((size,), 1.0 / size, np.float32)
  y = depthwise_conv(x4, k1[:, None], ((p, p), (0, 0)))
  y = depthwise_conv(y, k1[None, :], ((0, 0), (p, p)))
  y = y.astype(x.dtype)
  return y[..., 0] if squeeze else y


def _window_stack(x: jax.Array, size: int, padding: str) -> jax.Array:
  """All `size*size` shifted views of x [B,H,W,C] stacked on a new last axis."""
  p = size // 2
  if padding == "reflect":
    # scipy.ndimage mode="reflect": (d c b a | a b c d | d c b a) = numpy "symmetric".
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="symmetric")
  elif padding == "zero":
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  elif padding == "none":
    xp = x
  else:
    raise ValueError(f"median_filter: padding must be 'reflect', 'zero' or 'none', got {padding!r}")
  h = xp.shape[1] - 2 * p
  w = xp.shape[2] - 2 * p
  views = [xp[:, i:i + h, j:j + w, :] for i in range(size) for j in range(size)]
  return jnp.stack(views, axis=-1)


@functools.partial(jax.jit, static_argnames=("size", "padding"))
def median_filter(x: jax.Array, size: int = 3, padding: str = "reflect") -> jax.Array:
  """Median over a `size x size` window (size odd), per channel.

  padding:
    "reflect": same-size output, border mirrored including the edge pixel,
      `scipy.ndimage.median_filter(mode="reflect")` (numpy pad "symmetric");
    "zero": same-size output, zeros outside, as kornia's `median_blur` and
      `scipy.ndimage.median_filter(mode="constant", cval=0)`;
    "none": valid output `[B, H - size + 1, W - size + 1, C]`.
  """
  if size < 1 or size % 2 == 0:
    raise ValueError(f"median_filter: size must be a positive odd int, got {size}")
  x4, squeeze = _as_nhwc(x)
  stack = _window_stack(x4.astype(jnp.float32), size, padding)
  if size == 3:
    y = _median9([stack[..., i] for i in range(9)])
  else:
    y = jnp.sort(stack, axis=-1)[..., (size * size) // 2]
  y = y.astype(x.dtype)
  return y[..., 0] if squeeze else y


# Median of 9 values by a 19 compare-exchange selection network (elementwise
# min/max: fuses into one loop and compiles much faster than a sort).
_MED9 = ((1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8),
         (0, 3), (5, 8), (4, 7), (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2))


def _median9(p: list) -> jax.Array:
  p = list(p)
  for a, b in _MED9:
    p[a], p[b] = jnp.minimum(p[a], p[b]), jnp.maximum(p[a], p[b])
  return p[4]


def avg_pool2(x: jax.Array) -> jax.Array:
  """2x2 average pooling, stride 2, on [B,H,W,C]; odd trailing rows/cols are
  dropped (`F.avg_pool2d(x, 2)` floor behaviour)."""
  b, h, w, c = x.shape
  h2, w2 = h // 2, w // 2
  x = x[:, :2 * h2, :2 * w2, :]
  return x.reshape(b, h2, 2, w2, 2, c).mean(axis=(2, 4))
