"""Realistic embedded demo data: crops of real photographs, drawn defects.

The normals are crops of two photographs that ship inside an installed
package (scikit-learn's `datasets/images/china.jpg` and `flower.jpg`; not
scikit-image's sample images, which an independent check uses), so nothing is
downloaded. Four categories, two textures and two objects (`CATEGORIES`):

  foliage  texture  tree canopy of china.jpg (lower right)
  petals   texture  the dahlia's petals of flower.jpg (inside the flower)
  dahlia   object   the whole dahlia of flower.jpg on its blurred backdrop
  pagoda   object   the pagoda of china.jpg against the sky

Natural variation of the normals (all seeded): position of the crop (textures:
anywhere in a region of the photograph; objects: a few pixels around a fixed
placement), rotation (foliage +-10 deg, petals any angle, dahlia +-15 deg,
pagoda +-3 deg), scale +-6 %, horizontal flips of textures, illumination
(gain 0.8-1.2, per-channel tint +-5 %, a linear light gradient up to +-10 %),
focus (Gaussian blur, sigma 0-1.2 px at 128 px) and sensor noise (sigma 1 %).

Defects are drawn by this module's own code, the kinds of MVTec AD, each of a
random size and contrast (about a third of them subtle):

  scratch        thin smooth curve, lighter or darker than the surface
  crack          jagged dark random-walk line, sometimes branched
  contamination  irregular blob of a foreign material (colour + grain)
  hole           dark irregular pit with a lit rim
  colour         soft-edged region whose hue is pulled to another colour
  missing        part of the object replaced by the backdrop behind it
  extra          a piece of the object pasted where it does not belong

Masks are exact: the mask is the set of pixels the defect changed (its alpha
is > 0 there and exactly 0 elsewhere; sensor noise is identical with and
without the defect), so outside the mask a defective image equals the normal
it was drawn on, byte for byte (`render_pair`).

Default counts per category: 80 train normals, 20 normal and 24 defective test
images (6 per defect kind), 128x128 PNGs. Everything is a pure function of
(seed, category, split, index); about 10 s for the whole dataset on one core.
"""
from __future__ import annotations

import functools
import os

import numpy as np
from PIL import Image
from scipy import ndimage

CATEGORIES: tuple[str, ...] = ("dahlia", "foliage", "pagoda", "petals")
TEXTURES = ("foliage", "petals")
DEFECTS = {
  "foliage": ("hole", "contamination", "colour", "scratch"),
  "petals": ("crack", "hole", "contamination", "colour"),
  "dahlia": ("missing", "extra", "scratch", "colour"),
  "pagoda": ("missing", "extra", "crack", "contamination"),
}
VERSION = "p1"

# category -> photo, source crop side (px of the photograph), centre region
# (x0, x1, y0, y1) the crop centre is drawn from, rotation range (deg, +-),
# horizontal flips, object support (centre x, y, radius) or None
_SPECS = {
  "foliage": dict(photo="china", side=80, centre=(447, 593, 366, 380), rot=10, flip=True),
  "petals": dict(photo="flower", side=100, centre=(307, 222, 45), rot=180, flip=True),
  "dahlia": dict(photo="flower", side=330, centre=(297, 317, 215, 235), rot=15, flip=False,
                 support=(307, 222, 138), backdrop=(0, 130, 0, 427)),
  "pagoda": dict(photo="china", side=360, centre=(198, 212, 208, 222), rot=3, flip=False,
                 backdrop=(380, 640, 0, 190)),
}
_PHOTOS = {"china": ("sklearn", "datasets/images/china.jpg"),
           "flower": ("sklearn", "datasets/images/flower.jpg")}


def photo_path(name: str) -> str:
  """Path of a photograph shipped by an installed package."""
  import importlib.util
  pkg, rel = _PHOTOS[name]
  spec = importlib.util.find_spec(pkg)
  if spec is None or not spec.submodule_search_locations:
    raise RuntimeError(f"the photo demo data needs the package {pkg!r} (for {rel})")
  path = os.path.join(list(spec.submodule_search_locations)[0], rel)
  if not os.path.isfile(path):
    raise RuntimeError(f"{path} is missing: the photo demo data is built from it")
  return path


@functools.lru_cache(maxsize=None)
def _photo(name: str, blur: float) -> np.ndarray:
  """The photograph as float32 [H, W, 3] in [0, 1], pre-blurred against aliasing."""
  with Image.open(photo_path(name)) as im:
    a = np.asarray(im.convert("RGB"), np.float32) / 255.0
  if blur > 0:
    a = ndimage.gaussian_filter(a, (blur, blur, 0), mode="nearest")
  return np.ascontiguousarray(a)


@functools.lru_cache(maxsize=None)
def _pagoda_support() -> np.ndarray:
  """Pagoda pixels of china.jpg (bool [H, W]): not sky, inside the pagoda's box."""
  a = _photo("china", 0.0)
  mx, mn = a.max(-1), a.min(-1)
  sky = (mx - mn < 0.16) & (a.mean(-1) > 0.55) & (a[..., 2] >= a[..., 0] - 0.02)
  box = np.zeros(sky.shape, bool)
  box[25:395, 60:355] = True
  sup = ~sky & box
  sup = ndimage.binary_opening(sup, iterations=2)
  return ndimage.binary_fill_holes(ndimage.binary_closing(sup, iterations=2))


def _grid(n: int):
  y, x = np.mgrid[0:n, 0:n].astype(np.float32)
  return x, y


def _warp(src: np.ndarray, cx, cy, side, angle, flip, n, order=1) -> np.ndarray:
  """Sample an n x n view of `src` centred at (cx, cy), `side` source pixels wide."""
  x, y = _grid(n)
  u = (x + 0.5) / n - 0.5
  v = (y + 0.5) / n - 0.5
  if flip:
    u = -u
  c, s = np.cos(angle), np.sin(angle)
  sx = cx + side * (c * u - s * v) - 0.5
  sy = cy + side * (s * u + c * v) - 0.5
  coords = np.stack([sy, sx])
  if src.ndim == 2:
    return ndimage.map_coordinates(src, coords, order=order, mode="nearest")
  return np.stack([ndimage.map_coordinates(src[..., k], coords, order=order, mode="nearest")
                   for k in range(src.shape[-1])], -1)


def _pose(rng, spec):
  c = spec["centre"]
  if len(c) == 3:  # a disc (x, y, radius)
    t, r = rng.uniform(0, 2 * np.pi), c[2] * np.sqrt(rng.uniform())
    cx, cy = c[0] + r * np.cos(t), c[1] + r * np.sin(t)
  else:
    cx, cy = rng.uniform(c[0], c[1]), rng.uniform(c[2], c[3])
  angle = np.deg2rad(rng.uniform(-spec["rot"], spec["rot"]))
  side = spec["side"] * rng.uniform(0.94, 1.06)
  flip = bool(spec["flip"] and rng.uniform() < 0.5)
  return cx, cy, side, angle, flip


def _normal(category: str, rng, n: int):
  """(image float [n,n,3], support float [n,n] in [0,1], backdrop [n,n,3] or None)."""
  spec = _SPECS[category]
  cx, cy, side, angle, flip = _pose(rng, spec)
  src = _photo(spec["photo"], round(max(0.0, 0.5 * side / n - 0.3), 1))
  img = _warp(src, cx, cy, side, angle, flip, n)
  support = np.ones((n, n), np.float32)
  backdrop = None
  if category == "dahlia":
    sx, sy, sr = spec["support"]
    x, y = _grid(n)
    # output pixel -> source, distance to the flower's centre
    u, v = (x + 0.5) / n - 0.5, (y + 0.5) / n - 0.5
    c, s = np.cos(angle), np.sin(angle)
    px, py = cx + side * (c * u - s * v), cy + side * (s * u + c * v)
    d = np.hypot(px - sx, py - sy)
    support = np.clip((sr - d) / (side / n) + 0.5, 0, 1).astype(np.float32)
  elif category == "pagoda":
    support = _warp(_pagoda_support().astype(np.float32), cx, cy, side, angle, flip, n)
  if "backdrop" in spec:
    x0, x1, y0, y1 = spec["backdrop"]
    bside = min(x1 - x0, y1 - y0) * 0.9
    bsrc = _photo(spec["photo"], 3.0)
    backdrop = _warp(bsrc, (x0 + x1) / 2, (y0 + y1) / 2, bside, angle, flip, n)
    if category == "pagoda":  # the sky's brightness falls towards the horizon like behind it
      backdrop = backdrop * (1.0 + 0.08 * ((_grid(n)[1] / n) - 0.5))[..., None]
  # illumination: gain, tint, linear gradient; focus blur
  x, y = _grid(n)
  ga = rng.uniform(0, 2 * np.pi)
  grad = 1.0 + rng.uniform(0, 0.10) * (np.cos(ga) * (x / n - 0.5) + np.sin(ga) * (y / n - 0.5)) * 2
  light = rng.uniform(0.8, 1.2) * (1.0 + rng.uniform(-0.05, 0.05, 3))
  img = img * light * grad[..., None]
  if backdrop is not None:
    backdrop = backdrop * light * grad[..., None]
  sigma = rng.uniform(0.0, 1.2) * n / 128.0
  if sigma > 0.05:
    img = ndimage.gaussian_filter(img, (sigma, sigma, 0), mode="nearest")
  return img.astype(np.float32), support, backdrop


# ----------------------------------------------------------------------------
# defect shapes: alpha maps in [0, 1] that are exactly 0 outside the shape
# ----------------------------------------------------------------------------
def _blob(rng, n, centre, radius, irregular=0.3):
  x, y = _grid(n)
  dx, dy = x - centre[0], y - centre[1]
  theta = np.arctan2(dy, dx)
  r = np.full_like(theta, 1.0)
  for k in (2, 3, 5):
    r += irregular / k * rng.uniform(0.3, 1.0) * np.sin(k * theta + rng.uniform(0, 2 * np.pi))
  aspect = rng.uniform(0.6, 1.0)
  ang = rng.uniform(0, np.pi)
  u = np.cos(ang) * dx + np.sin(ang) * dy
  v = (-np.sin(ang) * dx + np.cos(ang) * dy) / aspect
  d = np.hypot(u, v)
  return np.clip(radius * r - d, 0, 1).astype(np.float32)  # 1-px anti-aliased edge


def _stroke(n, points, half_width):
  """Alpha of a polyline of thickness 2*half_width (anti-aliased by 1 px)."""
  x, y = _grid(n)
  dist = np.full((n, n), np.inf, np.float32)
  for p0, p1 in zip(points[:-1], points[1:]):
    d = p1 - p0
    t = np.clip(((x - p0[0]) * d[0] + (y - p0[1]) * d[1]) / max(float(d @ d), 1e-6), 0, 1)
    dist = np.minimum(dist, np.hypot(x - (p0[0] + t * d[0]), y - (p0[1] + t * d[1])))
  return np.clip(half_width + 0.5 - dist, 0, 1).astype(np.float32)


def _curve(rng, centre, length, jagged, steps=16):
  ang = rng.uniform(0, 2 * np.pi)
  bend = rng.uniform(-1.5, 1.5) / steps
  pts = [np.asarray(centre, np.float32)]
  step = length / steps
  for _ in range(steps):
    ang += bend + (rng.normal(0, 0.6) if jagged else 0.0)
    pts.append(pts[-1] + step * np.array([np.cos(ang), np.sin(ang)], np.float32))
  pts = np.asarray(pts)
  return pts - (pts.mean(0) - np.asarray(centre, np.float32))


def _gray(img):
  return img.mean(-1, keepdims=True)


def _draw(kind, rng, img, support, backdrop, centre, n):
  """-> (defective image, alpha); changed pixels are exactly those with alpha > 0."""
  s = n / 128.0
  subtle = rng.uniform() < 0.35
  if kind == "scratch":
    alpha = _stroke(n, _curve(rng, centre, rng.uniform(20, 60) * s, False),
                    max(rng.uniform(0.8, 2.0) * s, 0.6))
    c = rng.uniform(0.15, 0.3) if subtle else rng.uniform(0.35, 0.7)
    target = np.ones(3, np.float32) if rng.uniform() < 0.5 else np.zeros(3, np.float32)
    content = img + c * (target - img)
  elif kind == "crack":
    pts = _curve(rng, centre, rng.uniform(20, 55) * s, True)
    hw = max(rng.uniform(0.7, 1.8) * s, 0.6)
    alpha = _stroke(n, pts, hw)
    if rng.uniform() < 0.5:  # a branch
      j = int(rng.integers(4, len(pts) - 4))
      br = _curve(rng, pts[j], rng.uniform(8, 20) * s, True, steps=6)
      alpha = np.maximum(alpha, _stroke(n, br - br[0] + pts[j], max(0.6 * hw, 0.5)))
    c = rng.uniform(0.3, 0.5) if subtle else rng.uniform(0.6, 0.9)
    content = img * (1 - c)
  elif kind == "contamination":
    alpha = _blob(rng, n, centre, rng.uniform(3, 14) * s, 0.5)
    colour = np.array([[0.35, 0.22, 0.10], [0.55, 0.55, 0.55], [0.08, 0.08, 0.08],
                       [0.92, 0.90, 0.85], [0.30, 0.40, 0.15]], np.float32)[rng.integers(5)]
    grain = 1.0 + 0.15 * ndimage.gaussian_filter(rng.normal(0, 1, (n, n)), 1.0)[..., None]
    c = rng.uniform(0.35, 0.55) if subtle else rng.uniform(0.7, 0.95)
    content = img + c * (colour * grain - img)
  elif kind == "hole":
    r = rng.uniform(3, 11) * s
    alpha = _blob(rng, n, centre, r, 0.2)
    x, y = _grid(n)
    d = np.hypot(x - centre[0], y - centre[1]) / r
    rim = np.clip(d, 0, 1)[..., None] ** 4
    c = rng.uniform(0.5, 0.7) if subtle else rng.uniform(0.8, 0.95)
    pit = img * (1 - c) * (1 - rim) + np.clip(img * 1.35, 0, 1) * rim
    content = pit.astype(np.float32)
  elif kind == "colour":
    alpha = _blob(rng, n, centre, rng.uniform(7, 22) * s, 0.4)
    feather = ndimage.gaussian_filter(alpha, 2.0 * s) * (alpha > 0)
    alpha = np.clip(feather / max(float(feather.max()), 1e-6), 0, 1) * (alpha > 0)
    tint = np.array([[0.35, 0.55, 1.3], [0.6, 1.3, 0.6], [1.4, 0.5, 1.2], [0.4, 0.4, 0.4]],
                    np.float32)[rng.integers(4)]
    c = rng.uniform(0.3, 0.45) if subtle else rng.uniform(0.55, 0.85)
    content = img + c * (np.clip(_gray(img) * tint, 0, 1) - img)
  elif kind == "missing":
    alpha = _blob(rng, n, centre, rng.uniform(8, 24) * s, 0.4) * support
    content = backdrop
  elif kind == "extra":
    # a piece of the object, moved by an offset so it sticks out over the backdrop
    alpha = _blob(rng, n, centre, rng.uniform(6, 16) * s, 0.4)
    off = rng.uniform(14, 28) * s
    t = rng.uniform(0, 2 * np.pi)
    shift = (int(round(off * np.sin(t))), int(round(off * np.cos(t))))
    piece = np.roll(img, shift, axis=(0, 1))
    psup = np.roll(support, shift, axis=(0, 1))
    alpha = alpha * psup
    content = piece
  else:
    raise ValueError(kind)
  alpha = alpha.astype(np.float32)
  out = img + alpha[..., None] * (content - img)
  return out.astype(np.float32), alpha


def _centre(kind, rng, support, n, category):
  """A defect centre: on the object, except 'missing' (at the object's edge) and
  'extra' (just outside it)."""
  if category in TEXTURES:
    return tuple(rng.uniform(0.15 * n, 0.85 * n, 2))
  on = support > 0.5
  if kind in ("missing", "extra"):
    edge = on ^ ndimage.binary_erosion(on, iterations=max(1, n // 32))
    if kind == "extra":
      grown = ndimage.binary_dilation(on, iterations=max(1, n // 16))
      edge = grown & ~on
    on = edge
  ys, xs = np.nonzero(on[n // 16: n - n // 16, n // 16: n - n // 16])
  if len(xs) == 0:
    return tuple(rng.uniform(0.3 * n, 0.7 * n, 2))
  i = int(rng.integers(len(xs)))
  return float(xs[i] + n // 16), float(ys[i] + n // 16)


def render_pair(category: str, seed: int, split: str, index: int, defect: str = "good",
                image_size: int = 128):
  """(normal uint8 [n,n,3], image uint8 [n,n,3], mask bool [n,n]): the image of
  (category, seed, split, index, defect) and the normal it was drawn on, with the
  same sensor noise. For defect "good" the two are equal and the mask is empty."""
  n = image_size
  split_id = {"train": 0, "test": 1}[split]
  defect_id = 0 if defect == "good" else 1 + DEFECTS[category].index(defect)
  cat_id = CATEGORIES.index(category)
  rng = np.random.default_rng([seed, 7, cat_id, split_id, defect_id, index])
  img, support, backdrop = _normal(category, rng, n)
  noise = rng.normal(0, 0.01, img.shape).astype(np.float32)
  out, mask = img, np.zeros((n, n), bool)
  if defect != "good":
    drng = np.random.default_rng([seed, 8, cat_id, split_id, defect_id, index])
    for _ in range(30):
      cand, alpha = _draw(defect, drng, img, support, backdrop,
                          _centre(defect, drng, support, n, category), n)
      change = np.abs(cand - img).max(-1)
      m = (alpha > 0) & (change > 0)
      if m.sum() >= 12 * (n / 128.0) ** 2 and float(change[m].mean()) > 0.03:
        out = np.where(m[..., None], cand, img)
        mask = m
        break
    else:  # pragma: no cover - the sizes above make this practically unreachable
      raise RuntimeError(f"photo demo defect {defect} of {category} #{index} stayed empty")
  q = lambda a: np.clip(np.round((a + noise) * 255), 0, 255).astype(np.uint8)  # noqa: E731
  return q(img), q(out), mask


def render(category: str, seed: int, split: str, index: int, defect: str = "good",
           image_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
  """One image (uint8 [n,n,3]) and its mask (uint8 [n,n], 0/255)."""
  _, img, mask = render_pair(category, seed, split, index, defect, image_size)
  return img, (mask * 255).astype(np.uint8)


def items(category, num_train, num_test_good, num_test_defect):
  yield from (("train", "good", i) for i in range(num_train))
  yield from (("test", "good", i) for i in range(num_test_good))
  kinds = DEFECTS[category]
  for j in range(num_test_defect):
    yield "test", kinds[j % len(kinds)], j // len(kinds)


def generate(root: str, seed: int = 0, image_size: int = 128, *,
             categories: tuple[str, ...] | None = None, num_train: int = 80,
             num_test_good: int = 20, num_test_defect: int = 24) -> str:
  """Write the photo demo dataset in the MVTec AD layout under `root`; returns root."""
  for cat in categories or CATEGORIES:
    if cat not in CATEGORIES:
      raise ValueError(f"unknown photo demo category {cat!r}; known: {CATEGORIES}")
    for split, defect, i in items(cat, num_train, num_test_good, num_test_defect):
      img, mask = render(cat, seed, split, i, defect, image_size)
      d = os.path.join(root, cat, split, defect)
      os.makedirs(d, exist_ok=True)
      Image.fromarray(img).save(os.path.join(d, f"{i:03d}.png"), format="PNG", compress_level=6)
      if defect != "good":
        md = os.path.join(root, cat, "ground_truth", defect)
        os.makedirs(md, exist_ok=True)
        Image.fromarray(mask).save(os.path.join(md, f"{i:03d}_mask.png"), format="PNG",
                                   compress_level=6)
  return root
