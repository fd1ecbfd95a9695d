"""Image augmentations in jax.numpy, on device and batched with vmap: DINO-style
random resized crops (bilinear resampling by two small matmuls), colour
jitter (brightness, contrast, saturation, hue) / grayscale, Gaussian blur,
solarisation, and multi-crop views of a batch.

DINO's view augmentations (facebookresearch/dino `DataAugmentationDINO`, on
PIL images): RandomResizedCrop (bicubic); flip p=0.5; ColorJitter(0.4, 0.4,
0.2, 0.1) p=0.8 (the four operations in a random order per image); grayscale
p=0.2; Gaussian blur with sigma U(0.1, 2.0) px of the view, p=1.0 (global view
1), 0.1 (global view 2), 0.5 (local views); solarisation (threshold 128 of
255) p=0.2 on global view 2 only. `make_views` does all of it when asked
(`hue`, `p_blur`, `p_solarize`, `random_order`); with its defaults it does
flip, brightness / contrast / saturation in the fixed order b, c, s, and
grayscale only, drawing exactly the random numbers it drew before the DINO
options existed (the options draw from keys of their own).

Differences from the PIL / torchvision originals: float arithmetic instead of
8-bit images (PIL rounds every step to 0..255; its hue shift is an 8-bit HSV
round trip); crops are resampled with a triangle (bilinear) kernel, not
bicubic; the blur is an exact Gaussian truncated at `BLUR_RADIUS` px with
replicated borders (scipy.ndimage's mode="nearest"), where PIL approximates it
with three box filters; luma weights 0.299 / 0.587 / 0.114 (PIL's "L")."""
from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from maskjax.ops import hsv


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
BLUR_SIGMA = (0.1, 2.0)          # DINO's GaussianBlur sigma range, pixels of the view
BLUR_RADIUS = 6                  # kernel half-width, px (3 x the largest sigma)
SOLARIZE_THRESHOLD = 128 / 255   # PIL ImageOps.solarize(threshold=128) on [0, 1] data


# ----------------------------------------------------------------------------
# colour
# ----------------------------------------------------------------------------
def rgb_to_hsv(img: jax.Array) -> jax.Array:
  """[..., 3] RGB in [0, 1] -> HSV in [0, 1] on the device (`maskjax.ops.hsv`)."""
  return hsv.rgb_to_hsv(img, jnp)


def hsv_to_rgb(img_hsv: jax.Array) -> jax.Array:
  """Inverse of `rgb_to_hsv` on the device (`maskjax.ops.hsv`)."""
  return hsv.hsv_to_rgb(img_hsv, jnp)


def adjust_brightness(img: jax.Array, factor) -> jax.Array:
  """torchvision adjust_brightness: blend with black, clip to [0, 1]."""
  return jnp.clip(img * factor, 0.0, 1.0)


def adjust_contrast(img: jax.Array, factor) -> jax.Array:
  """torchvision adjust_contrast: blend with the mean luma of the image."""
  mean = jnp.mean(img @ LUMA)
  return jnp.clip((img - mean) * factor + mean, 0.0, 1.0)


def adjust_saturation(img: jax.Array, factor) -> jax.Array:
  """torchvision adjust_saturation: blend with the per-pixel luma."""
  gray = (img @ LUMA)[..., None]
  return jnp.clip(gray + (img - gray) * factor, 0.0, 1.0)


def adjust_hue(img: jax.Array, delta) -> jax.Array:
  """torchvision adjust_hue: the hue rotated by `delta` (a fraction of the
  colour wheel, |delta| <= 0.5): HSV, h = (h + delta) mod 1, back to RGB."""
  hsv = rgb_to_hsv(img.astype(jnp.float32))
  hsv = hsv.at[..., 0].set(jnp.mod(hsv[..., 0] + delta, 1.0))
  return hsv_to_rgb(hsv)


def color_jitter(img: jax.Array, factors: jax.Array, hue_delta=None, order=None) -> jax.Array:
  """Brightness, contrast, saturation with the given factors [3] (each step
  clipped to [0, 1]) and, unless `hue_delta` is None, the hue shift.

  order: None = the fixed order brightness, contrast, saturation, hue; an int
  array [4], a permutation of (0 brightness, 1 contrast, 2 saturation, 3 hue)
  = torchvision ColorJitter's `fn_idx` (the hue slot is a no-op when
  `hue_delta` is None)."""
  if order is None:
    x = adjust_saturation(adjust_contrast(adjust_brightness(img, factors[0]), factors[1]),
                          factors[2])
    return x if hue_delta is None else adjust_hue(x, hue_delta)
  hue_fn = (lambda x: x) if hue_delta is None else (lambda x: adjust_hue(x, hue_delta))
  ops = [lambda x: adjust_brightness(x, factors[0]), lambda x: adjust_contrast(x, factors[1]),
         lambda x: adjust_saturation(x, factors[2]), hue_fn]
  x = img.astype(jnp.float32)
  for slot in range(4):
    x = jax.lax.switch(order[slot], ops, x)
  return x


def jitter_params(key: jax.Array, strength: Sequence[float], random_order: bool = True):
  """torchvision ColorJitter.get_params: -> (factors [3] U(1 - x, 1 + x) for
  brightness / contrast / saturation (lower end clipped at 0), hue shift
  U(-h, h) or None when h = 0, order [4] a random permutation or None)."""
  kf, kh, ko = jax.random.split(key, 3)
  s = jnp.asarray(strength[:3], jnp.float32)
  lo = jnp.maximum(1.0 - s, 0.0)
  factors = lo + jax.random.uniform(kf, (3,)) * (1.0 + s - lo)
  hue = float(strength[3]) if len(strength) > 3 else 0.0
  delta = jax.random.uniform(kh, (), minval=-hue, maxval=hue) if hue > 0 else None
  order = jax.random.permutation(ko, 4) if random_order else None
  return factors, delta, order


def random_color_jitter(key: jax.Array, img: jax.Array, strength=(0.1, 0.1, 0.1, 0.1),
                        random_order: bool = True) -> jax.Array:
  """torchvision ColorJitter(b, c, s, h) on one image [H,W,3] in [0,1], applied
  always (no probability), operations in a random order unless told not to."""
  factors, delta, order = jitter_params(key, strength, random_order)
  return color_jitter(img.astype(jnp.float32), factors, delta, order)


def color_augment(key: jax.Array, img: jax.Array, strength=(0.4, 0.4, 0.2), p_jitter=0.8,
                  p_gray=0.2, hue: float = 0.0, random_order: bool = False) -> jax.Array:
  """Flip p=0.5, colour jitter p=`p_jitter` (brightness, contrast, saturation
  factors U(1 - x, 1 + x) for x in `strength`, then, when hue > 0, a hue shift
  U(-hue, hue); in a random order when `random_order`), grayscale p=`p_gray`,
  on one image [H,W,3] in [0,1]; output in [0,1]. The hue and order draws use
  keys of their own, so hue = 0 and random_order = False draw what the
  flip / b,c,s / grayscale version always drew."""
  ks = jax.random.split(key, 6)
  img = jnp.where(jax.random.uniform(ks[0]) < 0.5, img[:, ::-1], img)
  f = jax.random.uniform(ks[1], (3,), minval=-1.0, maxval=1.0) * jnp.asarray(strength) + 1.0
  delta = jax.random.uniform(ks[4], (), minval=-hue, maxval=hue) if hue > 0 else None
  order = jax.random.permutation(ks[5], 4) if random_order else None
  x = color_jitter(img, f, delta, order)
  img = jnp.where(jax.random.uniform(ks[2]) < p_jitter, x, img)
  gray = jnp.broadcast_to((img @ LUMA)[..., None], img.shape)
  return jnp.where(jax.random.uniform(ks[3]) < p_gray, gray, img)


# ----------------------------------------------------------------------------
# blur, solarisation
# ----------------------------------------------------------------------------
def blur_matrix(n: int, sigma, radius: int = BLUR_RADIUS) -> jax.Array:
  """[n, n] Gaussian smoothing along one axis: out[i] = sum_t w_t in[clip(i + t,
  0, n - 1)] over taps t in [-radius, radius], w_t = exp(-t^2 / (2 sigma^2))
  normalised to sum 1 (scipy.ndimage.gaussian_filter1d, mode="nearest")."""
  t = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  wt = jnp.exp(-0.5 * (t / sigma) ** 2)
  wt = wt / jnp.sum(wt)
  src = jnp.clip(jnp.arange(n)[:, None] + jnp.arange(-radius, radius + 1)[None, :], 0, n - 1)
  onehot = (src[..., None] == jnp.arange(n)[None, None, :]).astype(jnp.float32)
  return jnp.einsum("t,itj->ij", wt, onehot)


def gaussian_blur(img: jax.Array, sigma, radius: int = BLUR_RADIUS) -> jax.Array:
  """Separable Gaussian blur of [H,W,C] with standard deviation `sigma` px
  (PIL's GaussianBlur `radius` is this standard deviation)."""
  h, w = img.shape[:2]
  return jnp.einsum("yh,hwc,xw->yxc", blur_matrix(h, sigma, radius), img.astype(jnp.float32),
                    blur_matrix(w, sigma, radius))


def solarize(img: jax.Array, threshold: float = SOLARIZE_THRESHOLD) -> jax.Array:
  """PIL ImageOps.solarize: values >= threshold inverted (x -> 1 - x)."""
  return jnp.where(img >= threshold, 1.0 - img, img)


def blur_solarize(key: jax.Array, img: jax.Array, p_blur: float = 0.0,
                  p_solarize: float = 0.0) -> jax.Array:
  """Gaussian blur (sigma U(`BLUR_SIGMA`)) with probability p_blur, then
  solarisation with probability p_solarize (DINO's order)."""
  kb, ks, kp = jax.random.split(key, 3)
  if p_blur > 0:
    sigma = jax.random.uniform(ks, (), minval=BLUR_SIGMA[0], maxval=BLUR_SIGMA[1])
    img = jnp.where(jax.random.uniform(kb) < p_blur, gaussian_blur(img, sigma), img)
  if p_solarize > 0:
    img = jnp.where(jax.random.uniform(kp) < p_solarize, solarize(img), img)
  return img


# ----------------------------------------------------------------------------
# views
# ----------------------------------------------------------------------------
def augment_view(key: jax.Array, image: jax.Array, size: int, scale: Sequence[float], *,
                 hue: float = 0.0, p_blur: float = 0.0, p_solarize: float = 0.0,
                 random_order: bool = False) -> jax.Array:
  """One augmented crop of image [H,W,3] in [0,1] -> [size,size,3]: random
  resized crop, `color_augment` (flip, jitter, grayscale), then, when
  p_blur or p_solarize > 0, `blur_solarize` with the key fold_in(key, 1)."""
  h, w = image.shape[:2]
  kc, ka = jax.random.split(key)
  box = random_resized_crop_params(kc, h, w, scale)
  out = color_augment(ka, crop_resize(image, box, size), hue=hue, random_order=random_order)
  if p_blur > 0 or p_solarize > 0:
    out = blur_solarize(jax.random.fold_in(key, 1), out, p_blur, p_solarize)
  return out


def make_views(key: jax.Array, images: jax.Array, num: int, size: int,
               scale: Sequence[float], *, hue: float = 0.0, p_blur: float = 0.0,
               p_solarize: float = 0.0, random_order: bool = False) -> jax.Array:
  """`num` augmented crops of every image: [B,H,W,3] -> [num * B, size, size, 3]
  (view-major: rows [v*B, (v+1)*B) are view v of the batch), each
  `augment_view` with its own key (split(key, num * B), row by row). The
  defaults: flip, b/c/s jitter in a fixed order and grayscale only."""
  b = images.shape[0]
  keys = jax.random.split(key, num * b)
  one = lambda k, img: augment_view(k, img, size, scale, hue=hue, p_blur=p_blur,
                                    p_solarize=p_solarize, random_order=random_order)
  tiled = jnp.tile(images.astype(jnp.float32), (num, 1, 1, 1))
  return jax.vmap(one)(keys, tiled)
