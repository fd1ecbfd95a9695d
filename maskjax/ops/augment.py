"""Image augmentations in jax.numpy, on device and batched with vmap: DINO-style
random resized crops (bilinear resampling by two small matmuls), colour
jitter / grayscale, and multi-crop views of a batch."""
from __future__ import annotations

from typing import Sequence

import math

import jax
import jax.numpy as jnp


def random_resized_crop_params(key: jax.Array, height: int, width: int,
                               scale: Sequence[float],
                               ratio: Sequence[float] = (3 / 4, 4 / 3)) -> jax.Array:
  """(y0, x0, ch, cw) float32 [4] of a crop with area fraction U(scale) and
  aspect (w/h) log-uniform in `ratio`, sides clipped to the image, uniform offset."""
  k1, k2, k3, k4 = jax.random.split(key, 4)
  area = jax.random.uniform(k1, (), minval=scale[0], maxval=scale[1]) * height * width
  logr = jax.random.uniform(k2, (), minval=math.log(ratio[0]), maxval=math.log(ratio[1]))
  r = jnp.exp(logr)
  cw = jnp.clip(jnp.sqrt(area * r), 1.0, width)
  ch = jnp.clip(jnp.sqrt(area / r), 1.0, height)
  y0 = jax.random.uniform(k3, ()) * (height - ch)
  x0 = jax.random.uniform(k4, ()) * (width - cw)
  return jnp.stack([y0, x0, ch, cw]).astype(jnp.float32)


def resample_matrix(start, length, in_size: int, out_size: int) -> jax.Array:
  """[out_size, in_size] linear (triangle) resampling weights of the interval
  [start, start + length) (pixel units, half-pixel centres) onto out_size
  pixels; the kernel widens to length / out_size when shrinking (antialiasing,
  as `jax.image.scale_and_translate(..., "linear", antialias=True)`); rows are
  normalised to sum 1 (taps outside the image are dropped)."""
  step = length / out_size
  centres = start + (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * step - 0.5
  width = jnp.maximum(step, 1.0)
  d = jnp.abs(jnp.arange(in_size, dtype=jnp.float32)[None, :] - centres[:, None]) / width
  w = jnp.maximum(0.0, 1.0 - d)
  return w / jnp.maximum(jnp.sum(w, axis=1, keepdims=True), 1e-12)


def crop_resize(image: jax.Array, box: jax.Array, size: int) -> jax.Array:
  """image [H,W,C] -> [size,size,C]: the continuous box (y0, x0, ch, cw)
  resampled with `resample_matrix` along each axis (two small matmuls, cheap
  to compile under vmap)."""
  h, w = image.shape[:2]
  my = resample_matrix(box[0], box[2], h, size)
  mx = resample_matrix(box[1], box[3], w, size)
  return jnp.einsum("yh,hwc,xw->yxc", my, image.astype(jnp.float32), mx)


LUMA = jnp.asarray([0.299, 0.587, 0.114], jnp.float32)


def color_augment(key: jax.Array, img: jax.Array, strength=(0.4, 0.4, 0.2), p_jitter=0.8,
                  p_gray=0.2) -> jax.Array:
  """Flip p=0.5, colour jitter (brightness, contrast, saturation) p=0.8,
  grayscale p=0.2 on one image [H,W,3] in [0,1]; output clipped to [0,1]."""
  ks = jax.random.split(key, 6)
  img = jnp.where(jax.random.uniform(ks[0]) < 0.5, img[:, ::-1], img)
  f = jax.random.uniform(ks[1], (3,), minval=-1.0, maxval=1.0) * jnp.asarray(strength) + 1.0
  x = jnp.clip(img * f[0], 0.0, 1.0)
  mean = jnp.mean(x @ LUMA)
  x = jnp.clip((x - mean) * f[1] + mean, 0.0, 1.0)
  gray = (x @ LUMA)[..., None]
  x = jnp.clip(gray + (x - gray) * f[2], 0.0, 1.0)
  img = jnp.where(jax.random.uniform(ks[2]) < p_jitter, x, img)
  gray = jnp.broadcast_to((img @ LUMA)[..., None], img.shape)
  return jnp.where(jax.random.uniform(ks[3]) < p_gray, gray, img)


def make_views(key: jax.Array, images: jax.Array, num: int, size: int,
               scale: Sequence[float]) -> jax.Array:
  """`num` augmented crops of every image: [B,H,W,3] -> [num * B, size, size, 3]
  (view-major: rows [v*B, (v+1)*B) are view v of the batch)."""
  b, h, w = images.shape[:3]
  keys = jax.random.split(key, num * b)

  def one(k, img):
    kc, ka = jax.random.split(k)
    box = random_resized_crop_params(kc, h, w, scale)
    return color_augment(ka, crop_resize(img, box, size))

  tiled = jnp.tile(images.astype(jnp.float32), (num, 1, 1, 1))
  return jax.vmap(one)(keys, tiled)
