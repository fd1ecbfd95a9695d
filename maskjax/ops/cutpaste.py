"""Attention-guided cut-paste anomalies (ACA fine-tuning), NumPy, host side.

`attention_cutpaste(image, attention, rng)`:
  1. patch size: width ~ U(0.1 W, 0.4 W), height ~ U(0.1 H, 0.4 H) (the paper
     writes U(0.1W, 0.4W) for both; identical for square images), rounded, >= 1;
  2. the patch is cut from a uniformly random location of the same image;
  3. it is rotated by U(-max_rotation, max_rotation) degrees (45) and resized by
     a factor U(scale_range) (0.8..1.2), by inverse mapping with bilinear
     sampling (source coordinates clamped to the image), so the pasted shape is
     the rotated, scaled rectangle;
  4. colour jitter on the patch: brightness, contrast (about the patch's mean
     luma) and saturation factors U(1 - jitter, 1 + jitter) (0.1), clipped to
     [0, 1];
  5. the paste centre is drawn from softmax((a - 1) / temperature) over the
     pixels, where a is the attention map upsampled bilinearly (half-pixel) to
     H x W and min-max normalised to [0, 1] (a raw softmax of ViT attention,
     whose values are ~1/N, would be nearly uniform; the temperature, 0.1 by
     default, sets how sharply the location follows the attention);
  6. parts falling outside the image are dropped; the mask [H, W] (float32,
     {0, 1}) is the pasted region;
  7. compositing: copy (default) or Poisson (gradient-domain, Perez et al.
     2003) blending: inside the mask solve  N_p f_p - sum_{q in mask} f_q =
     sum_q (g_p - g_q) + sum_{q not in mask} t_q  over the 4-neighbours q that
     lie in the image (g = jittered patch, t = target image), a sparse direct
     solve (scipy splu) per example, all channels at once, clipped to [0, 1].

`color_jitter(image, rng, strength)`: torchvision ColorJitter(b, c, s, h) on a
whole [H, W, 3] float image in NumPy (the host side of ACA's
`finetune.augment = "color_jitter"`, applied before the paste): a random order
of the four operations, factors U(max(0, 1 - x), 1 + x), hue shift U(-h, h)
through HSV (Python's `colorsys` formulas), each step clipped to [0, 1].
"""
from __future__ import annotations

import math

import numpy as np

from maskjax.ops import hsv


def _bilinear(img: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
  """Samples img [H,W,C] at float coordinates (clamped to the image)."""
  h, w = img.shape[:2]
  yy = np.clip(yy, 0.0, h - 1.0)
  xx = np.clip(xx, 0.0, w - 1.0)
  y0 = np.floor(yy).astype(np.int64)
  x0 = np.floor(xx).astype(np.int64)
  y1 = np.minimum(y0 + 1, h - 1)
  x1 = np.minimum(x0 + 1, w - 1)
  wy = (yy - y0)[..., None].astype(np.float32)
  wx = (xx - x0)[..., None].astype(np.float32)
  top = img[y0, x0] * (1 - wx) + img[y0, x1] * wx
  bot = img[y1, x0] * (1 - wx) + img[y1, x1] * wx
  return top * (1 - wy) + bot * wy


def upsample_attention(attention: np.ndarray, height: int, width: int) -> np.ndarray:
  """Bilinear (half-pixel centres, edge clamped) resize of [h, w] to [H, W]."""
  a = np.asarray(attention, np.float32)
  h, w = a.shape
  yy = (np.arange(height, dtype=np.float32) + 0.5) * (h / height) - 0.5
  xx = (np.arange(width, dtype=np.float32) + 0.5) * (w / width) - 0.5
  yy, xx = np.meshgrid(yy, xx, indexing="ij")
  return _bilinear(a[..., None], yy, xx)[..., 0]


def location_probabilities(attention: np.ndarray, height: int, width: int,
                           temperature: float = 0.1) -> np.ndarray:
  """Paste-centre distribution [H, W] (sums to 1), see step 5."""
  a = upsample_attention(attention, height, width).astype(np.float64)
  lo, hi = a.min(), a.max()
  a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
  p = np.exp((a - 1.0) / temperature)
  return p / p.sum()


_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def rgb_to_hsv(img: np.ndarray) -> np.ndarray:
  """[..., 3] RGB in [0, 1] -> HSV in [0, 1], float32, on the host (`maskjax.ops.hsv`)."""
  return hsv.rgb_to_hsv(np.asarray(img, np.float32)).astype(np.float32)


def hsv_to_rgb(img_hsv: np.ndarray) -> np.ndarray:
  """Inverse of `rgb_to_hsv`, float32, on the host (`maskjax.ops.hsv`)."""
  return hsv.hsv_to_rgb(np.asarray(img_hsv)).astype(np.float32)


def color_jitter(image: np.ndarray, rng: np.random.Generator,
                 strength=(0.1, 0.1, 0.1, 0.1)) -> np.ndarray:
  """torchvision ColorJitter(*strength) on [H, W, 3] float32 in [0, 1] (module
  docstring): the order is drawn first, then the factors, then the hue shift."""
  x = np.asarray(image, np.float32)
  order = rng.permutation(4)
  lo = [max(0.0, 1.0 - float(a)) for a in strength[:3]]
  f = [float(rng.uniform(l, 1.0 + float(a))) for l, a in zip(lo, strength[:3])]
  hue = float(strength[3])
  delta = float(rng.uniform(-hue, hue)) if hue > 0 else 0.0
  for op in order:
    if op == 0:
      x = np.clip(x * f[0], 0.0, 1.0)
    elif op == 1:
      mean = float(np.mean(x @ _LUMA))
      x = np.clip((x - mean) * f[1] + mean, 0.0, 1.0)
    elif op == 2:
      gray = (x @ _LUMA)[..., None]
      x = np.clip(gray + (x - gray) * f[2], 0.0, 1.0)
    elif hue > 0:
      hsv = rgb_to_hsv(x)
      hsv[..., 0] = np.mod(hsv[..., 0] + delta, 1.0)
      x = hsv_to_rgb(hsv)
  return x.astype(np.float32)


def _color_jitter(patch: np.ndarray, rng: np.random.Generator, jitter: float) -> np.ndarray:
  b, c, s = rng.uniform(1 - jitter, 1 + jitter, size=3).astype(np.float32)
  x = patch * b
  gray = x @ np.array([0.299, 0.587, 0.114], np.float32)
  x = (x - gray.mean()) * c + gray.mean()
  gray = x @ np.array([0.299, 0.587, 0.114], np.float32)
  x = gray[..., None] + (x - gray[..., None]) * s
  return np.clip(x, 0.0, 1.0)


def poisson_blend(target: np.ndarray, source: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """Gradient-domain blend of `source` into `target` ([H,W,C] float32) on the
  pixels where mask > 0.5 (equation in the module docstring). Outside the mask
  the result equals `target`."""
  import scipy.sparse as sp  # pylint: disable=g-import-not-at-top
  import scipy.sparse.linalg as spla  # pylint: disable=g-import-not-at-top
  h, w, c = target.shape
  inside = mask > 0.5
  ys, xs = np.nonzero(inside)
  n = ys.size
  if n == 0:
    return target.copy()
  index = -np.ones((h, w), np.int64)
  index[ys, xs] = np.arange(n)
  rows, cols, vals = [np.arange(n)], [np.arange(n)], []
  diag = np.zeros(n, np.float64)
  rhs = np.zeros((n, c), np.float64)
  src = source.astype(np.float64)
  tgt = target.astype(np.float64)
  for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
    qy, qx = ys + dy, xs + dx
    ok = (qy >= 0) & (qy < h) & (qx >= 0) & (qx < w)
    diag += ok
    p_ok = np.nonzero(ok)[0]
    qy, qx = qy[ok], qx[ok]
    rhs[p_ok] += src[ys[p_ok], xs[p_ok]] - src[qy, qx]
    qi = index[qy, qx]
    in_mask = qi >= 0
    rows.append(p_ok[in_mask])
    cols.append(qi[in_mask])
    vals.append(-np.ones(int(in_mask.sum())))
    rhs[p_ok[~in_mask]] += tgt[qy[~in_mask], qx[~in_mask]]
  data = np.concatenate([diag] + vals)
  a = sp.csc_matrix((data, (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
  sol = spla.splu(a).solve(rhs)
  out = target.copy()
  out[ys, xs] = np.clip(sol, 0.0, 1.0).astype(target.dtype)
  return out


def attention_cutpaste(image: np.ndarray, attention: np.ndarray, rng: np.random.Generator,
                       poisson: bool = False, *, temperature: float = 0.1,
                       max_rotation: float = 45.0,
                       scale_range: tuple[float, float] = (0.8, 1.2),
                       jitter: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
  """Pastes a rotated, resized, colour-jittered patch of `image` [H,W,3]
  (float32 in [0,1]) at a location drawn from the attention map [h,w]
  -> (image [H,W,3] float32, mask [H,W] float32 in {0,1}); see module docstring."""
  image = np.asarray(image, np.float32)
  if image.ndim != 3 or image.shape[2] != 3:
    raise ValueError(f"attention_cutpaste: image must be [H, W, 3], got shape {image.shape}")
  attention = np.asarray(attention, np.float32)
  if attention.ndim != 2:
    raise ValueError(f"attention_cutpaste: attention must be [h, w], got shape {attention.shape}")
  h, w = image.shape[:2]
  pw = max(1, int(round(rng.uniform(0.1 * w, 0.4 * w))))
  ph = max(1, int(round(rng.uniform(0.1 * h, 0.4 * h))))
  sy0 = int(rng.integers(0, h - ph + 1))
  sx0 = int(rng.integers(0, w - pw + 1))
  src_cy = sy0 + (ph - 1) / 2.0
  src_cx = sx0 + (pw - 1) / 2.0
  theta = math.radians(rng.uniform(-max_rotation, max_rotation))
  scale = float(rng.uniform(*scale_range))
  prob = location_probabilities(attention, h, w, temperature)
  flat = int(rng.choice(h * w, p=prob.ravel()))
  cy, cx = divmod(flat, w)
  # Bounding box of the rotated, scaled patch around the paste centre.
  rad = 0.5 * scale * math.hypot(pw, ph) + 1.0
  y0, y1 = max(0, int(math.floor(cy - rad))), min(h, int(math.ceil(cy + rad)) + 1)
  x0, x1 = max(0, int(math.floor(cx - rad))), min(w, int(math.ceil(cx + rad)) + 1)
  yy, xx = np.meshgrid(np.arange(y0, y1, dtype=np.float32) - cy,
                       np.arange(x0, x1, dtype=np.float32) - cx, indexing="ij")
  ct, st = math.cos(theta), math.sin(theta)
  ly = (ct * yy + st * xx) / scale      # inverse rotation, inverse scaling
  lx = (-st * yy + ct * xx) / scale
  inside = (np.abs(ly) <= ph / 2.0) & (np.abs(lx) <= pw / 2.0)
  patch = _bilinear(image, src_cy + ly, src_cx + lx)
  patch = _color_jitter(patch, rng, jitter)
  mask = np.zeros((h, w), np.float32)
  mask[y0:y1, x0:x1] = inside
  source = image.copy()
  source[y0:y1, x0:x1] = patch
  if poisson:
    out = poisson_blend(image, source, mask)
  else:
    m = mask[..., None]
    out = image * (1.0 - m) + source * m
  return out.astype(np.float32), mask
