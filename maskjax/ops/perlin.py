"""DRAEM-style Perlin-noise anomaly synthesis (NumPy, host side, grain workers).

Perlin gradient noise (`perlin_from_gradients`), DRAEM conventions:
  * a lattice of (ry + 1) x (rx + 1) unit gradient vectors at angles 2 pi U(0,1);
    pixel (i, j) of an H x W image sits at lattice coordinates
    (u, v) = (i * ry / H, j * rx / W) (DRAEM's `mgrid[0:ry:ry/H, 0:rx:rx/W]`);
  * with cell (a, b) = floor(u, v) and offsets (fu, fv) = (u - a, v - b), the
    corner contributions are n00 = g[a,b].(fu, fv), n10 = g[a+1,b].(fu-1, fv),
    n01 = g[a,b+1].(fu, fv-1), n11 = g[a+1,b+1].(fu-1, fv-1) (component 0 of a
    gradient pairs with the row offset);
  * fade t = 6t^5 - 15t^4 + 10t^3; noise = sqrt(2) * lerp(lerp(n00, n10, tu),
    lerp(n01, n11, tu), tv).
Rotation: DRAEM rotates the noise *image* by U(-90, 90) degrees (imgaug, zero
fill in the corners). We instead evaluate the noise at rotated pixel
coordinates (rotation about the image centre, in pixel units, before the
scaling to lattice units), which is the same field without interpolation and
without empty corners; the lattice index wraps modulo (r + 1), so the field is
defined everywhere. Without rotation the values equal DRAEM's exactly.

`PerlinAnomaly` draws, per example and from the example's own NumPy
generator:
  * with probability 1 - anomaly_prob (0.5): the clean image, mask 0, label 0;
  * otherwise per-axis scales 2^randint(0, 6) (i.e. 1..32 lattice cells), a
    rotation angle U(-90, 90), mask = noise > 0.5 (restricted to `foreground`
    when given), a texture passed through 3 of 10 augmenters (drawn without
    replacement, applied in the drawn order), beta = U(0, 0.8), and
    out = img (1 - m) + (1 - beta) src m + beta img m. An empty mask gets label 0.
Textures: every image file under `texture_dir` (recursively; DTD's
`images/<class>/*.jpg` or any folder), resized to the image size (bilinear)
and cached (LRU, uint8); with `texture_dir=""` a built-in bank of procedural
textures (fractal Perlin colour fields, marble, stripes, checkers, speckle),
generated once per image size from a fixed seed. With `self_prob` > 0 that
share of the anomalies takes the image itself, circularly shifted by a random
offset and not augmented, as the texture (`self_texture`; not in DRAEM). A
caller may pass its own texture (MALA's backdrop anomalies: `backdrop_texture`).
`source_description` says which source is in use (log it).

Augmenters (numpy approximations of DRAEM's imgaug list, on [0, 1] floats):
gamma contrast (0.5..2), brightness multiply (0.8..1.2) and add (+-30/255),
sharpen (alpha 0..1, lightness 0.75..1.5), hue rotation (+-50/255 of a turn,
YIQ rotation) and saturation scaling (1 +- 50/255), solarize (threshold
32..128 /255), posterize (1..8 bits), invert, autocontrast (per channel min/max),
equalize (per-channel 256-bin histogram), rotate (-45..45 degrees, nearest,
wrapping).
"""
from __future__ import annotations

import collections
import math
import os
from typing import Optional, Sequence

import numpy as np

from maskjax.data.images import IMAGE_EXTENSIONS
from maskjax.errors import DataError

_SQRT2 = np.float32(math.sqrt(2.0))


# ----------------------------------------------------------------------------- noise

def random_gradients(res: Sequence[int], rng: np.random.Generator) -> np.ndarray:
  """Unit gradient lattice [ry + 1, rx + 1, 2] (float32) at angles 2 pi U(0, 1)."""
  ry, rx = int(res[0]), int(res[1])
  angles = 2.0 * np.pi * rng.random((ry + 1, rx + 1))
  return np.stack([np.cos(angles), np.sin(angles)], axis=-1).astype(np.float32)


def _fade(t: np.ndarray) -> np.ndarray:
  return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def lattice_coordinates(shape: Sequence[int], res: Sequence[int], angle_deg: float = 0.0
                        ) -> tuple[np.ndarray, np.ndarray]:
  """Lattice coordinates (u, v) [H, W] float32 of every pixel, rotated by
  `angle_deg` about the image centre ((H - 1) / 2, (W - 1) / 2) in pixels."""
  h, w = int(shape[0]), int(shape[1])
  ry, rx = int(res[0]), int(res[1])
  i = np.arange(h, dtype=np.float32)[:, None]
  j = np.arange(w, dtype=np.float32)[None, :]
  if angle_deg:
    a = math.radians(angle_deg)
    ca, sa = np.float32(math.cos(a)), np.float32(math.sin(a))
    cy, cx = np.float32((h - 1) / 2.0), np.float32((w - 1) / 2.0)
    di, dj = i - cy, j - cx
    i = cy + ca * di - sa * dj
    j = cx + sa * di + ca * dj
  u = i * np.float32(ry / h)
  v = j * np.float32(rx / w)
  return np.broadcast_to(u, (h, w)), np.broadcast_to(v, (h, w))


def perlin_from_gradients(shape: Sequence[int], res: Sequence[int], gradients: np.ndarray,
                          angle_deg: float = 0.0) -> np.ndarray:
  """2-D Perlin noise [H, W] float32 from a given gradient lattice
  [ry + 1, rx + 1, 2] (conventions in the module docstring)."""
  ry, rx = int(res[0]), int(res[1])
  if gradients.shape != (ry + 1, rx + 1, 2):
    raise ValueError(f"perlin_from_gradients: gradients must be [{ry + 1}, {rx + 1}, 2] "
                     f"for res {tuple(res)}, got {gradients.shape}")
  u, v = lattice_coordinates(shape, res, angle_deg)
  fu0 = np.floor(u)
  fv0 = np.floor(v)
  fu = u - fu0
  fv = v - fv0
  ny, nx = ry + 1, rx + 1
  a0 = fu0.astype(np.int64) % ny
  b0 = fv0.astype(np.int64) % nx
  a1 = (a0 + 1) % ny
  b1 = (b0 + 1) % nx
  gy = np.ascontiguousarray(gradients[..., 0]).ravel()
  gx = np.ascontiguousarray(gradients[..., 1]).ravel()
  i00 = a0 * nx + b0
  i10 = a1 * nx + b0
  i01 = a0 * nx + b1
  i11 = a1 * nx + b1
  fu1 = fu - 1.0
  fv1 = fv - 1.0
  n00 = gy[i00] * fu + gx[i00] * fv
  n10 = gy[i10] * fu1 + gx[i10] * fv
  n01 = gy[i01] * fu + gx[i01] * fv1
  n11 = gy[i11] * fu1 + gx[i11] * fv1
  tu = _fade(fu)
  tv = _fade(fv)
  n0 = n00 + tu * (n10 - n00)
  n1 = n01 + tu * (n11 - n01)
  return (_SQRT2 * (n0 + tv * (n1 - n0))).astype(np.float32)


def perlin_noise(shape: Sequence[int], res: Sequence[int], rng: np.random.Generator,
                 angle_deg: float = 0.0) -> np.ndarray:
  """2-D Perlin noise [H, W] float32 with `res` = (ry, rx) lattice cells per
  axis, gradients drawn from `rng` (see `random_gradients`)."""
  return perlin_from_gradients(shape, res, random_gradients(res, rng), angle_deg)


# ----------------------------------------------------------------------------- augmenters

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_RGB2YIQ = np.array([[0.299, 0.587, 0.114],
                     [0.596, -0.274, -0.322],
                     [0.211, -0.523, 0.312]], np.float32)
_YIQ2RGB = np.linalg.inv(_RGB2YIQ).astype(np.float32)


def _gamma(x, rng):
  return np.power(x, np.float32(rng.uniform(0.5, 2.0)))


def _brightness(x, rng):
  return x * np.float32(rng.uniform(0.8, 1.2)) + np.float32(rng.uniform(-30, 30) / 255.0)


def _sharpen(x, rng):
  alpha = np.float32(rng.uniform(0.0, 1.0))
  lightness = np.float32(rng.uniform(0.75, 1.5))
  p = np.pad(x, ((1, 1), (1, 1), (0, 0)), mode="edge")
  s = np.zeros_like(x)
  h, w = x.shape[:2]
  for di in range(3):
    for dj in range(3):
      s += p[di:di + h, dj:dj + w]
  sharp = (9.0 + lightness) * x - s     # kernel [[-1,-1,-1],[-1,8+L,-1],[-1,-1,-1]]
  return (1.0 - alpha) * x + alpha * sharp


def _hue_saturation(x, rng):
  theta = rng.uniform(-50, 50) / 255.0 * 2.0 * math.pi
  sat = 1.0 + rng.uniform(-50, 50) / 255.0
  c, s = math.cos(theta), math.sin(theta)
  rot = np.array([[1, 0, 0], [0, c * sat, -s * sat], [0, s * sat, c * sat]], np.float32)
  m = _YIQ2RGB @ rot @ _RGB2YIQ
  return x @ m.T.astype(np.float32)


def _solarize(x, rng):
  t = np.float32(rng.uniform(32, 128) / 255.0)
  return np.where(x >= t, 1.0 - x, x)


def _posterize(x, rng):
  bits = int(rng.integers(1, 9))
  q = np.float32(2 ** (8 - bits))
  return np.floor(np.clip(x, 0, 1) * 255.0 / q) * q / 255.0


def _invert(x, rng):
  return 1.0 - x


def _autocontrast(x, rng):
  flat = x.reshape(-1, x.shape[2])
  lo = flat.min(axis=0)
  hi = flat.max(axis=0)
  flat_channel = hi <= lo
  scale = np.where(flat_channel, 1.0, 1.0 / np.maximum(hi - lo, 1e-12)).astype(np.float32)
  lo = np.where(flat_channel, 0.0, lo).astype(np.float32)
  return (x - lo) * scale


def _equalize(x, rng):
  q = np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)
  out = np.empty_like(x)
  n = q.shape[0] * q.shape[1]
  for ch in range(q.shape[2]):
    hist = np.bincount(q[..., ch].ravel(), minlength=256)
    cdf = np.cumsum(hist)
    cmin = cdf[np.nonzero(hist)[0][0]]
    denom = max(n - cmin, 1)
    lut = np.clip(np.round((cdf - cmin) / denom * 255.0), 0, 255).astype(np.float32) / 255.0
    out[..., ch] = lut[q[..., ch]]
  return out


def _rotate(x, rng):
  h, w = x.shape[:2]
  a = math.radians(rng.uniform(-45, 45))
  ca, sa = math.cos(a), math.sin(a)
  cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
  i = np.arange(h, dtype=np.float32)[:, None] - cy
  j = np.arange(w, dtype=np.float32)[None, :] - cx
  si = np.rint(cy + ca * i + sa * j).astype(np.int64) % h
  sj = np.rint(cx - sa * i + ca * j).astype(np.int64) % w
  return x.reshape(-1, x.shape[2])[(si * w + sj).ravel()].reshape(x.shape)


AUGMENTERS = (_gamma, _brightness, _sharpen, _hue_saturation, _solarize, _posterize,
              _invert, _autocontrast, _equalize, _rotate)
AUGMENTER_NAMES = ("gamma_contrast", "brightness", "sharpen", "hue_saturation", "solarize",
                   "posterize", "invert", "autocontrast", "equalize", "rotate")


def augment_texture(texture: np.ndarray, rng: np.random.Generator, count: int = 3) -> np.ndarray:
  """Applies `count` of the 10 augmenters (drawn without replacement, in the
  drawn order) to a float32 [H, W, 3] texture in [0, 1]; result clipped to [0, 1]."""
  x = texture.astype(np.float32, copy=True)
  for idx in rng.choice(len(AUGMENTERS), size=count, replace=False):
    x = np.clip(AUGMENTERS[idx](x, rng), 0.0, 1.0).astype(np.float32, copy=False)
  return x


# ----------------------------------------------------------------------------- textures

def _fractal(h, w, rng, octaves=5):
  out = np.zeros((h, w), np.float32)
  amp, total = 1.0, 0.0
  base = int(rng.integers(1, 4))
  for o in range(octaves):
    r = base * 2 ** o
    out += amp * perlin_noise((h, w), (r, r), rng, angle_deg=float(rng.uniform(-90, 90)))
    total += amp
    amp *= 0.5
  out /= total
  return (out - out.min()) / max(float(out.max() - out.min()), 1e-6)


def _palette(t, rng):
  """Maps t [H,W] in [0,1] through a random 3-colour gradient -> [H,W,3]."""
  cols = rng.random((3, 3)).astype(np.float32)
  t = t[..., None]
  lo = cols[0] + (cols[1] - cols[0]) * np.clip(2 * t, 0, 1)
  return np.where(t < 0.5, lo, cols[1] + (cols[2] - cols[1]) * np.clip(2 * t - 1, 0, 1))


def builtin_texture(kind: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
  """One procedural texture [h, w, 3] float32 in [0, 1]; kind in 0..4:
  fractal Perlin colour field, marble, stripes, checker, speckle."""
  i = np.arange(h, dtype=np.float32)[:, None]
  j = np.arange(w, dtype=np.float32)[None, :]
  a = rng.uniform(0, math.pi)
  proj = (math.cos(a) * j + math.sin(a) * i) / max(h, w)
  if kind == 0:
    t = _fractal(h, w, rng)
  elif kind == 1:
    turb = _fractal(h, w, rng, octaves=4)
    t = 0.5 + 0.5 * np.sin(2 * math.pi * (rng.uniform(2, 10) * proj + rng.uniform(1, 5) * turb))
  elif kind == 2:
    f = rng.uniform(3, 30)
    t = 0.5 + 0.5 * np.sin(2 * math.pi * f * proj + rng.uniform(0, 2 * math.pi))
    if rng.random() < 0.5:
      t = (t > 0.5).astype(np.float32)
  elif kind == 3:
    cell = rng.uniform(4, max(h, w) / 4)
    b = a + math.pi / 2
    p2 = (math.cos(b) * j + math.sin(b) * i) / max(h, w)
    s = max(h, w) / cell
    t = ((np.floor(proj * s) + np.floor(p2 * s)) % 2).astype(np.float32)
  else:
    t = rng.random((h, w)).astype(np.float32)
    k = int(rng.integers(1, 4))
    for _ in range(k):  # cheap blur: average with shifted copies
      t = (t + np.roll(t, 1, 0) + np.roll(t, 1, 1) + np.roll(t, (1, 1), (0, 1))) / 4.0
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
  rgb = _palette(np.broadcast_to(t, (h, w)).astype(np.float32), rng)
  rgb += 0.03 * rng.standard_normal((h, w, 3)).astype(np.float32)
  return np.clip(rgb, 0.0, 1.0).astype(np.float32)


def list_texture_files(texture_dir: str) -> list[str]:
  """Sorted image files under `texture_dir` (recursively)."""
  if not os.path.isdir(texture_dir):
    raise DataError(f"texture_dir {texture_dir!r} is not a directory; give a folder of images "
                    "(e.g. DTD's dtd/images) or '' for the built-in textures")
  files = []
  for root, dirs, names in os.walk(texture_dir):
    dirs.sort()
    for n in sorted(names):
      if n.lower().endswith(IMAGE_EXTENSIONS):
        files.append(os.path.join(root, n))
  if not files:
    raise DataError(f"texture_dir {texture_dir!r} holds no image files {IMAGE_EXTENSIONS}; "
                    "give a folder of images (e.g. DTD's dtd/images) or '' for the built-in "
                    "textures")
  return files


def self_texture(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """The image itself circularly shifted by a random offset of 1/8 to 7/8 of each side.

  Pasted through a Perlin mask it puts content of one place where another
  belongs (a piece of the object on the backdrop, backdrop inside the object):
  anomalies that look normal locally and are wrong only for their position,
  as a missing or an extra part is, which a foreign texture never teaches."""
  h, w = image.shape[:2]
  dy = int(rng.integers(max(h // 8, 1), max(7 * h // 8, 2)))
  dx = int(rng.integers(max(w // 8, 1), max(7 * w // 8, 2)))
  return np.roll(image, (dy, dx), axis=(0, 1))


def backdrop_texture(image: np.ndarray, foreground: np.ndarray) -> np.ndarray:
  """The image with every foreground pixel (`foreground` > 0.5) replaced by its
  nearest background pixel (Euclidean distance transform; ties as scipy breaks them).

  Pasted through a Perlin mask restricted to the foreground it takes a part of
  the object away and shows the backdrop there, as a missing part does; a
  texture or the object's own content never teaches that."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  img = np.asarray(image, np.float32)
  fg = np.asarray(foreground) > 0.5
  if not fg.any() or fg.all():
    return img.copy()
  _, (iy, ix) = ndimage.distance_transform_edt(fg, return_indices=True)
  return img[iy, ix]


class PerlinAnomaly:
  """Callable DRAEM-style anomaly synthesiser (see the module docstring).

  `PerlinAnomaly(texture_dir="")(image [H,W,3] float32 in [0,1], rng,
  foreground=None) -> (image [H,W,3] float32, mask [H,W] float32 {0,1}, label int)`.
  `foreground` [H,W] (> 0.5 = allowed) restricts the anomaly (MALA's local
  anomalies). Deterministic given the generator's state.
  """

  def __init__(self, texture_dir: str = "", *, anomaly_prob: float = 0.5,
               min_scale_exp: int = 0, max_scale_exp: int = 6, threshold: float = 0.5,
               max_rotation: float = 90.0, beta_range: tuple[float, float] = (0.0, 0.8),
               num_augmenters: int = 3, num_builtin_textures: int = 40,
               cache_size: int = 256, builtin_seed: int = 0, self_prob: float = 0.0):
    if not 0.0 <= anomaly_prob <= 1.0:
      raise ValueError(f"PerlinAnomaly: anomaly_prob must be in [0, 1], got {anomaly_prob}")
    if not 0.0 <= self_prob <= 1.0:
      raise ValueError(f"PerlinAnomaly: self_prob must be in [0, 1], got {self_prob}")
    if not 0 <= min_scale_exp < max_scale_exp:
      raise ValueError(f"PerlinAnomaly: need 0 <= min_scale_exp < max_scale_exp, got "
                       f"{min_scale_exp}, {max_scale_exp}")
    self.texture_dir = texture_dir
    self.anomaly_prob = anomaly_prob
    self.min_scale_exp = min_scale_exp
    self.max_scale_exp = max_scale_exp
    self.threshold = threshold
    self.max_rotation = max_rotation
    self.beta_range = beta_range
    self.num_augmenters = num_augmenters
    self.num_builtin_textures = num_builtin_textures
    self.cache_size = cache_size
    self.builtin_seed = builtin_seed
    self.self_prob = self_prob
    self._files = list_texture_files(texture_dir) if texture_dir else []
    self._cache: collections.OrderedDict = collections.OrderedDict()
    self._banks: dict = {}
    if self._files:
      self.source_description = (f"{len(self._files)} texture images from {texture_dir}")
    else:
      self.source_description = (
          f"built-in procedural textures ({num_builtin_textures}: fractal Perlin colour fields, "
          f"marble, stripes, checkers, speckle; seed {builtin_seed}); no texture_dir given")
    if self_prob > 0:
      self.source_description += (f"; {self_prob:g} of the anomalies take the image itself, "
                                  "shifted, as the texture")

  @property
  def num_textures(self) -> int:
    return len(self._files) if self._files else self.num_builtin_textures

  def texture(self, index: int, height: int, width: int) -> np.ndarray:
    """Texture `index` resized to (height, width): float32 [H, W, 3] in [0, 1]."""
    if not self._files:
      bank = self._banks.get((height, width))
      if bank is None:
        brng = np.random.default_rng(self.builtin_seed)
        bank = np.stack([
            (builtin_texture(i % 5, height, width, brng) * 255.0 + 0.5).astype(np.uint8)
            for i in range(self.num_builtin_textures)])
        self._banks[(height, width)] = bank
      return bank[index].astype(np.float32) / 255.0
    key = (index, height, width)
    arr = self._cache.get(key)
    if arr is None:
      from PIL import Image  # pylint: disable=g-import-not-at-top
      path = self._files[index]
      try:
        with Image.open(path) as im:
          arr = np.asarray(im.convert("RGB").resize((width, height), Image.BILINEAR),
                           dtype=np.uint8)
      except Exception as e:  # noqa: BLE001 - any decoding failure is the file's fault
        raise DataError(f"texture image {path!r} cannot be read ({e}); remove it from "
                        f"{self.texture_dir!r}") from e
      self._cache[key] = arr
      if len(self._cache) > self.cache_size:
        self._cache.popitem(last=False)
    else:
      self._cache.move_to_end(key)
    return arr.astype(np.float32) / 255.0

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_cache"] = collections.OrderedDict()
    state["_banks"] = {}
    return state

  def sample_mask(self, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Thresholded, rotated Perlin noise mask [H, W] float32 in {0, 1}."""
    sy = 2 ** int(rng.integers(self.min_scale_exp, self.max_scale_exp))
    sx = 2 ** int(rng.integers(self.min_scale_exp, self.max_scale_exp))
    angle = float(rng.uniform(-self.max_rotation, self.max_rotation))
    noise = perlin_noise((height, width), (sy, sx), rng, angle_deg=angle)
    return (noise > self.threshold).astype(np.float32)

  def __call__(self, image: np.ndarray, rng: np.random.Generator,
               foreground: Optional[np.ndarray] = None, texture: Optional[np.ndarray] = None
               ) -> tuple[np.ndarray, np.ndarray, int]:
    image = np.asarray(image, np.float32)
    if image.ndim != 3 or image.shape[2] != 3:
      raise ValueError(f"PerlinAnomaly: image must be [H, W, 3], got shape {image.shape}")
    h, w = image.shape[:2]
    if rng.random() >= self.anomaly_prob:
      return image, np.zeros((h, w), np.float32), 0
    mask = self.sample_mask(h, w, rng)
    if foreground is not None:
      fg = np.asarray(foreground)
      if fg.shape != (h, w):
        raise ValueError(f"PerlinAnomaly: foreground must be [{h}, {w}], got {fg.shape}")
      mask *= (fg > 0.5)
    # (no draw when self_prob is 0: the sequence of a run without self-textures is unchanged)
    if texture is not None:  # the caller's own texture (e.g. `backdrop_texture`), as is
      tex = np.asarray(texture, np.float32)
      if tex.shape != image.shape:
        raise ValueError(f"PerlinAnomaly: texture must be {image.shape}, got {tex.shape}")
    elif self.self_prob > 0 and rng.random() < self.self_prob:
      tex = self_texture(image, rng)
    else:
      tex = self.texture(int(rng.integers(self.num_textures)), h, w)
      tex = augment_texture(tex, rng, self.num_augmenters)
    beta = np.float32(rng.uniform(*self.beta_range))
    if not mask.any():
      return image, mask, 0
    m = mask[..., None]
    out = image * (1.0 - m) + (1.0 - beta) * tex * m + beta * image * m
    return out.astype(np.float32), mask, 1
