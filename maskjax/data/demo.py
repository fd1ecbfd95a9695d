"""Embedded demo data: small MVTec-AD-layout datasets generated on demand.

Two sources (`config.input.demo_source`, used when `config.input.data_dir` is
empty):

  "photos"     (default) `maskjax.data.photo_demo`: crops of real photographs
               shipped by installed packages, with natural variation and drawn
               MVTec-like defects; categories `DEMO_CATEGORIES`
               (dahlia, foliage, pagoda, petals).
  "synthetic"  this module's procedural images (below); categories
               `SYNTHETIC_CATEGORIES`. Quick to learn: use it for smoke tests,
               not to judge a detector (every method scores 0.84-1.00 on it).

The synthetic source has four categories, two textures and two objects:
  fabric  basket-weave texture        defects: scratch, stain, foreign
  tiles   square tiles with grout     defects: crack (scratch), stain, missing
  pill    white capsule on dark grey  defects: scratch, stain, missing
  washer  metal ring                  defects: missing, foreign, scratch
Normals vary (sub-tile shifts, small rotations, colour jitter, sensor noise)
around a regular, learnable appearance. Defects are drawn by this module's own
procedural shapes (thick line segments, soft-edged elliptical colour stains,
removed regions showing the background/grout, elliptical patches of a stripe
pattern foreign to the category); none of it shares code with the synthetic
anomalies methods train on (Perlin noise, cut-paste), so the demo never grades
a method on its own augmentation. Defect sizes vary from ~5 to ~50 px at 128 px;
lines are at least 3 px thick.

Default counts per category: 64 train normals, 20 normal and 21 defective test
images (7 per defect kind), 128x128 PNGs, masks `<stem>_mask.png` (0/255).
Everything is a pure function of (seed, category, split, index): the same seed
writes the same bytes.
"""
from __future__ import annotations

import csv
import os
import shutil
import tempfile

import numpy as np
from PIL import Image

from maskjax.errors import DataError

from maskjax.data import photo_demo

SYNTHETIC_CATEGORIES: tuple[str, ...] = ("fabric", "pill", "tiles", "washer")
DEMO_CATEGORIES: tuple[str, ...] = photo_demo.CATEGORIES  # the default ("photos") demo
DEMO_SOURCES = ("photos", "synthetic")
_DEFECTS = {
  "fabric": ("scratch", "stain", "foreign"),
  "tiles": ("crack", "stain", "missing"),
  "pill": ("scratch", "stain", "missing"),
  "washer": ("missing", "foreign", "scratch"),
}
_OBJECTS = ("pill", "washer")
_VERSION = "v1"


def _grid(n: int):
  y, x = np.mgrid[0:n, 0:n].astype(np.float32)
  return x, y


def _rotate(x, y, cx, cy, angle):
  c, s = np.cos(angle), np.sin(angle)
  return c * (x - cx) + s * (y - cy), -s * (x - cx) + c * (y - cy)


# ----------------------------------------------------------------------------
# normal appearance: returns (image [n,n,3] float, object-support mask [n,n] bool,
# a sampler of defect centres on the object, a "background" image for removals)
# ----------------------------------------------------------------------------
def _fabric(rng, n):
  x, y = _grid(n)
  s = n / 128.0
  period = 8.0 * s
  px, py = rng.uniform(0, 2 * period, 2)
  xr, yr = _rotate(x, y, n / 2, n / 2, np.deg2rad(rng.uniform(-3, 3)))
  xs, ys = xr + px, yr + py
  warp = 0.5 + 0.5 * np.sin(2 * np.pi * xs / period)
  weft = 0.5 + 0.5 * np.sin(2 * np.pi * ys / period)
  checker = (np.floor(xs / (period / 2)) + np.floor(ys / (period / 2))) % 2 == 0
  v = np.where(checker, warp, weft)
  base = np.array([0.50, 0.36, 0.26]) + rng.uniform(-0.03, 0.03, 3)
  img = base * (0.7 + 0.5 * v[..., None])
  support = np.ones((n, n), bool)
  removed = np.broadcast_to(base * 0.45, (n, n, 3))
  return img, support, removed


def _tiles(rng, n):
  x, y = _grid(n)
  s = n / 128.0
  tile = 32.0 * s
  gw = max(3.0 * s, 1.5)
  ox, oy = rng.uniform(0, tile, 2)
  xs, ys = x + ox, y + oy
  fx, fy = np.mod(xs, tile), np.mod(ys, tile)
  grout = (fx < gw) | (fy < gw)
  ix, iy = np.floor(xs / tile).astype(int), np.floor(ys / tile).astype(int)
  tile_jit = 0.04 * np.sin(1.7 * ix + 2.3 * iy + rng.uniform(0, 6.28))
  base = np.array([0.62, 0.66, 0.72]) + rng.uniform(-0.03, 0.03, 3)
  face = base + tile_jit[..., None] + 0.03 * (fx + fy)[..., None] / (2 * tile)
  grout_c = np.array([0.32, 0.30, 0.28])
  img = np.where(grout[..., None], grout_c, face)
  support = np.ones((n, n), bool)
  removed = np.broadcast_to(grout_c * 0.9, (n, n, 3))
  return img, support, removed


def _pill(rng, n):
  x, y = _grid(n)
  s = n / 128.0
  cx, cy = n / 2 + rng.uniform(-3, 3, 2) * s
  ang = np.deg2rad(rng.uniform(-8, 8))
  u, v = _rotate(x, y, cx, cy, ang)
  a, b = 44 * s, 26 * s
  r = (u / a) ** 2 + (v / b) ** 2
  support = r <= 1.0
  bg = np.array([0.16, 0.17, 0.18]) + rng.uniform(-0.02, 0.02, 3)
  body = np.array([0.90, 0.87, 0.80]) + rng.uniform(-0.03, 0.03, 3)
  shade = (1.0 - 0.25 * r)[..., None]
  groove = (np.abs(u) < 1.5 * s)[..., None] & support[..., None]
  img = np.where(support[..., None], body * shade, bg)
  img = np.where(groove, img * 0.8, img)
  removed = np.broadcast_to(bg, (n, n, 3))

  def sampler(rng2):
    t, rr = rng2.uniform(0, 2 * np.pi), np.sqrt(rng2.uniform(0, 0.5))
    uu, vv = rr * a * np.cos(t), rr * b * np.sin(t)
    c, s_ = np.cos(ang), np.sin(ang)
    return cx + c * uu - s_ * vv, cy + s_ * uu + c * vv
  return img, support, removed, sampler


def _washer(rng, n):
  x, y = _grid(n)
  s = n / 128.0
  cx, cy = n / 2 + rng.uniform(-3, 3, 2) * s
  d = np.hypot(x - cx, y - cy)
  r_in, r_out = 18 * s, 46 * s
  support = (d >= r_in) & (d <= r_out)
  bg = np.array([0.30, 0.33, 0.30]) + rng.uniform(-0.02, 0.02, 3)
  metal = np.array([0.72, 0.72, 0.75]) + rng.uniform(-0.03, 0.03, 3)
  theta = np.arctan2(y - cy, x - cx) + rng.uniform(-0.3, 0.3)
  shade = 0.85 + 0.15 * np.cos(theta) - 0.1 * np.abs((d - (r_in + r_out) / 2) / (r_out - r_in))
  img = np.where(support[..., None], metal * shade[..., None], bg)
  removed = np.broadcast_to(bg, (n, n, 3))

  def sampler(rng2):
    t = rng2.uniform(0, 2 * np.pi)
    rr = rng2.uniform(r_in + 6 * s, r_out - 6 * s)
    return cx + rr * np.cos(t), cy + rr * np.sin(t)
  return img, support, removed, sampler


_RENDER = {"fabric": _fabric, "tiles": _tiles, "pill": _pill, "washer": _washer}


# ----------------------------------------------------------------------------
# defects: each returns (new image, mask bool)
# ----------------------------------------------------------------------------
def _segment_mask(n, p0, p1, half_width):
  x, y = _grid(n)
  d = np.asarray(p1, np.float32) - np.asarray(p0, np.float32)
  t = np.clip(((x - p0[0]) * d[0] + (y - p0[1]) * d[1]) / max(float(d @ d), 1e-6), 0, 1)
  dist = np.hypot(x - (p0[0] + t * d[0]), y - (p0[1] + t * d[1]))
  return dist <= half_width


def _ellipse(n, c, ra, rb, ang):
  x, y = _grid(n)
  u, v = _rotate(x, y, c[0], c[1], ang)
  return (u / ra) ** 2 + (v / rb) ** 2


def _defect(kind, rng, img, support, removed, centre, n):
  s = n / 128.0
  if kind in ("scratch", "crack"):
    length = rng.uniform(18, 60) * s
    ang = rng.uniform(0, np.pi)
    dx, dy = 0.5 * length * np.cos(ang), 0.5 * length * np.sin(ang)
    half = max(rng.uniform(1.5, 3.0) * s, 1.0)
    mask = _segment_mask(n, (centre[0] - dx, centre[1] - dy), (centre[0] + dx, centre[1] + dy), half)
    colour = np.array([0.08, 0.07, 0.06]) if kind == "crack" or rng.uniform() < 0.5 else np.array([0.97, 0.97, 0.95])
    out = np.where(mask[..., None], colour, img)
  elif kind == "stain":
    r = _ellipse(n, centre, rng.uniform(5, 22) * s, rng.uniform(5, 22) * s, rng.uniform(0, np.pi))
    alpha = np.clip(1.5 * (1.0 - r), 0, 1)
    colour = np.array([[0.55, 0.25, 0.05], [0.15, 0.35, 0.55], [0.45, 0.55, 0.10]])[rng.integers(3)]
    out = img * (1 - 0.8 * alpha[..., None]) + 0.8 * alpha[..., None] * colour
    mask = alpha > 0.15
  elif kind == "missing":
    r = _ellipse(n, centre, rng.uniform(8, 24) * s, rng.uniform(8, 24) * s, rng.uniform(0, np.pi))
    mask = r <= 1.0
    out = np.where(mask[..., None], removed, img)
  elif kind == "foreign":
    r = _ellipse(n, centre, rng.uniform(6, 20) * s, rng.uniform(6, 20) * s, rng.uniform(0, np.pi))
    mask = r <= 1.0
    x, y = _grid(n)
    ang = rng.uniform(0, np.pi)
    stripes = 0.5 + 0.5 * np.sign(np.sin((np.cos(ang) * x + np.sin(ang) * y) / (1.2 * s + 0.5)))
    c0, c1 = np.array([0.85, 0.75, 0.10]), np.array([0.10, 0.20, 0.60])
    pattern = c0 * stripes[..., None] + c1 * (1 - stripes[..., None])
    out = np.where(mask[..., None], pattern, img)
  else:
    raise ValueError(kind)
  mask = mask & support
  out = np.where(mask[..., None], out, img)
  return out, mask


def render(category: str, seed: int, split: str, index: int, defect: str = "good",
           image_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
  """One demo image (uint8 [n,n,3]) and its mask (uint8 [n,n], 0/255).

  A pure function of its arguments. Defective images are re-drawn until the
  defect covers at least 12 pixels at 128 px (scaled with the image size).
  """
  n = image_size
  split_id = {"train": 0, "test": 1}[split]
  defect_id = 0 if defect == "good" else 1 + _DEFECTS[category].index(defect)
  cat_id = SYNTHETIC_CATEGORIES.index(category)
  rng = np.random.default_rng([seed, cat_id, split_id, defect_id, index])
  out = _RENDER[category](rng, n)
  img, support, removed = out[:3]
  sampler = out[3] if len(out) > 3 else (lambda r: tuple(r.uniform(0.2 * n, 0.8 * n, 2)))
  mask = np.zeros((n, n), bool)
  if defect != "good":
    for _ in range(20):
      cand, m = _defect(defect, rng, img, support, removed, sampler(rng), n)
      if m.sum() >= 12 * (n / 128.0) ** 2:
        img, mask = cand, m
        break
    else:  # pragma: no cover - the sizes above make this practically unreachable
      raise RuntimeError(f"demo defect {defect} of {category} #{index} stayed empty")
  img = img + rng.normal(0, 0.02, img.shape) + rng.uniform(-0.03, 0.03)
  img8 = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
  return img8, (mask * 255).astype(np.uint8)


def _save_png(path: str, arr: np.ndarray) -> None:
  Image.fromarray(arr).save(path, format="PNG", optimize=False, compress_level=6)


def _items(category, num_train, num_test_good, num_test_defect):
  yield from (("train", "good", i) for i in range(num_train))
  yield from (("test", "good", i) for i in range(num_test_good))
  kinds = _DEFECTS[category]
  for j in range(num_test_defect):
    yield "test", kinds[j % len(kinds)], j // len(kinds)


def generate(root: str, seed: int = 0, image_size: int = 128, *,
             categories: tuple[str, ...] | None = None, num_train: int = 64,
             num_test_good: int = 20, num_test_defect: int = 21) -> str:
  """Write the synthetic demo dataset in the MVTec AD layout under `root`; returns root.

  `<root>/<cat>/train/good/NNN.png`, `<root>/<cat>/test/<defect>/NNN.png`,
  `<root>/<cat>/ground_truth/<defect>/NNN_mask.png`. Defective test images
  cycle through the category's defect kinds.
  """
  for cat in categories or SYNTHETIC_CATEGORIES:
    if cat not in SYNTHETIC_CATEGORIES:
      raise ValueError(f"unknown synthetic demo category {cat!r}; known: {SYNTHETIC_CATEGORIES}")
    for split, defect, i in _items(cat, num_train, num_test_good, num_test_defect):
      img, mask = render(cat, seed, split, i, defect, image_size)
      d = os.path.join(root, cat, split, defect)
      os.makedirs(d, exist_ok=True)
      _save_png(os.path.join(d, f"{i:03d}.png"), img)
      if defect != "good":
        md = os.path.join(root, cat, "ground_truth", defect)
        os.makedirs(md, exist_ok=True)
        _save_png(os.path.join(md, f"{i:03d}_mask.png"), mask)
  return root


def generate_visa(root: str, seed: int = 0, image_size: int = 128, *,
                  categories: tuple[str, ...] = ("tiles", "washer"), num_train: int = 64,
                  num_test_good: int = 20, num_test_defect: int = 21) -> str:
  """Write demo categories in the original VisA layout under `root`.

  `<root>/<cat>/Data/Images/{Normal,Anomaly}/NNNN.JPG`,
  `<root>/<cat>/Data/Masks/Anomaly/NNNN.png` (values 1..3, i.e. non-zero on
  defects, like VisA's masks) and `<root>/split_csv/1cls.csv`.
  """
  rows = []
  for cat in categories:
    for d in ("Data/Images/Normal", "Data/Images/Anomaly", "Data/Masks/Anomaly"):
      os.makedirs(os.path.join(root, cat, d), exist_ok=True)
    n_norm = 0
    n_anom = 0
    for split, defect, i in _items(cat, num_train, num_test_good, num_test_defect):
      img, mask = render(cat, seed, split, i, defect, image_size)
      if defect == "good":
        rel = f"{cat}/Data/Images/Normal/{n_norm:04d}.JPG"
        n_norm += 1
        rows.append((cat, split, "normal", rel, ""))
      else:
        rel = f"{cat}/Data/Images/Anomaly/{n_anom:03d}.JPG"
        mrel = f"{cat}/Data/Masks/Anomaly/{n_anom:03d}.png"
        value = 1 + _DEFECTS[cat].index(defect)
        _save_png(os.path.join(root, mrel), ((mask > 0) * value).astype(np.uint8))
        n_anom += 1
        rows.append((cat, split, "anomaly", rel, mrel))
      Image.fromarray(img).save(os.path.join(root, rel), format="JPEG", quality=95)
  os.makedirs(os.path.join(root, "split_csv"), exist_ok=True)
  with open(os.path.join(root, "split_csv", "1cls.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(("object", "split", "label", "image", "mask"))
    w.writerows(rows)
  return root


def generate_multi(root: str, seed: int = 0, image_size: int = 128, **counts) -> str:
  """Lay the demo data out as two datasets: `root/mvtec` (fabric, pill, MVTec
  layout) and `root/visa` (tiles, washer, VisA layout), for
  `config.input.format = "multi"` with categories like ("mvtec/*", "visa/*")."""
  generate(os.path.join(root, "mvtec"), seed, image_size, categories=("fabric", "pill"), **counts)
  generate_visa(os.path.join(root, "visa"), seed, image_size, categories=("tiles", "washer"),
                **counts)
  return root


def demo_root(cache_dir: str = "", source: str = "photos") -> str:
  """The demo dataset of `source` ("photos" | "synthetic"), generated once into
  `<cache_dir>/demo-photos-p1-seed0` / `<cache_dir>/demo-v1-seed0` (default
  cache `~/.cache/maskjax`) and reused afterwards. The directory name carries
  the generator's version, so a changed generator never reuses an old cache.

  Generation writes into a temporary sibling directory and renames it into
  place, so concurrent processes never see a half-written dataset.
  """
  if source not in DEMO_SOURCES:
    raise DataError(f"config.input.demo_source={source!r} is not one of {', '.join(DEMO_SOURCES)}")
  name, gen = ((f"demo-photos-{photo_demo.VERSION}", photo_demo.generate) if source == "photos"
               else (f"demo-{_VERSION}", generate))
  cache = os.path.expanduser(cache_dir or os.path.join("~", ".cache", "maskjax"))
  final = os.path.join(cache, f"{name}-seed0")
  marker = os.path.join(final, "COMPLETE")
  if os.path.exists(marker):
    return final
  try:
    os.makedirs(cache, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}-", dir=cache)
  except OSError as e:
    raise DataError(f"cannot create the demo data in {cache} ({e.strerror or e}); set "
                    "config.input.cache_dir to a writable directory") from e
  try:
    gen(tmp, seed=0)
    with open(os.path.join(tmp, "COMPLETE"), "w") as f:
      f.write(f"maskjax demo data {name}, seed 0\n")
    try:
      os.rename(tmp, final)
    except OSError:
      if not os.path.exists(marker):  # a stale, incomplete directory is in the way
        stale = final + f".stale-{os.getpid()}"
        os.rename(final, stale)
        shutil.rmtree(stale, ignore_errors=True)
        os.rename(tmp, final)
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
  return final
