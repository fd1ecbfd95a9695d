"""Perlin noise vs an independent per-pixel evaluation; anomaly synthesis properties."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
from PIL import Image

from maskjax.errors import DataError
from maskjax.ops import perlin


def _noise_loop(shape, res, grads, angle_deg):
  """Textbook Perlin noise, pixel by pixel, same lattice conventions."""
  h, w = shape
  ry, rx = res
  out = np.zeros(shape)
  a = math.radians(angle_deg)
  cy, cx = (h - 1) / 2, (w - 1) / 2
  fade = lambda t: 6 * t ** 5 - 15 * t ** 4 + 10 * t ** 3
  for i in range(h):
    for j in range(w):
      pi = cy + math.cos(a) * (i - cy) - math.sin(a) * (j - cx)
      pj = cx + math.sin(a) * (i - cy) + math.cos(a) * (j - cx)
      u, v = pi * ry / h, pj * rx / w
      a0, b0 = math.floor(u), math.floor(v)
      fu, fv = u - a0, v - b0

      def corner(da, db):
        g = grads[(a0 + da) % (ry + 1), (b0 + db) % (rx + 1)]
        return g[0] * (fu - da) + g[1] * (fv - db)

      tu, tv = fade(fu), fade(fv)
      n0 = corner(0, 0) + tu * (corner(1, 0) - corner(0, 0))
      n1 = corner(0, 1) + tu * (corner(1, 1) - corner(0, 1))
      out[i, j] = math.sqrt(2) * (n0 + tv * (n1 - n0))
  return out


@pytest.mark.parametrize("res,angle", [((2, 3), 0.0), ((4, 1), 37.0), ((1, 8), -80.0)])
def test_perlin_vs_loop(res, angle):
  rng = np.random.default_rng(0)
  grads = perlin.random_gradients(res, rng)
  np.testing.assert_allclose(np.linalg.norm(grads, axis=-1), 1.0, rtol=1e-6)
  out = perlin.perlin_from_gradients((16, 24), res, grads, angle)
  np.testing.assert_allclose(out, _noise_loop((16, 24), res, grads.astype(np.float64), angle),
                             atol=2e-5)


def test_perlin_zero_on_lattice_points_and_seeded():
  out = perlin.perlin_noise((32, 32), (4, 4), np.random.default_rng(1))
  np.testing.assert_allclose(out[::8, ::8], 0.0, atol=1e-6)   # gradient noise vanishes there
  again = perlin.perlin_noise((32, 32), (4, 4), np.random.default_rng(1))
  np.testing.assert_array_equal(out, again)
  assert out.std() > 0.05


def _image(h=32, w=32, seed=0):
  return np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)


def test_anomaly_outputs_labels_and_clean_rate():
  pa = perlin.PerlinAnomaly()
  assert "built-in" in pa.source_description
  img = _image()
  labels, empty_anomalous = [], 0
  for seed in range(300):
    out, mask, label = pa(img, np.random.default_rng(seed))
    assert out.shape == img.shape and out.dtype == np.float32 and mask.dtype == np.float32
    assert set(np.unique(mask)) <= {0.0, 1.0}
    assert label == int(mask.sum() > 0)
    np.testing.assert_array_equal(out[mask == 0], img[mask == 0])
    if label:
      assert not np.allclose(out[mask == 1], img[mask == 1])
    assert out.min() >= 0.0 and out.max() <= 1.0
    labels.append(label)
  rate = np.mean(labels)
  # anomaly_prob 0.5 minus the few draws whose thresholded noise is empty
  assert 0.35 < rate < 0.6, rate


def test_anomaly_deterministic_and_foreground():
  pa = perlin.PerlinAnomaly(anomaly_prob=1.0)
  img = _image(seed=1)
  a = pa(img, np.random.default_rng(7))
  b = pa(img, np.random.default_rng(7))
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  fg = np.zeros((32, 32), np.float32)
  fg[8:24, 8:24] = 1
  for seed in range(20):
    out, mask, label = pa(img, np.random.default_rng(seed), foreground=fg)
    assert mask[fg == 0].sum() == 0
    np.testing.assert_array_equal(out[fg == 0], img[fg == 0])


def test_texture_dir_and_errors(tmp_path):
  for cls in ("banded", "dotted"):
    os.makedirs(tmp_path / "images" / cls)
    for k in range(2):
      arr = (np.random.default_rng(k).random((20, 30, 3)) * 255).astype(np.uint8)
      Image.fromarray(arr).save(tmp_path / "images" / cls / f"{cls}_{k}.jpg")
  pa = perlin.PerlinAnomaly(str(tmp_path), anomaly_prob=1.0)
  assert pa.num_textures == 4 and "4 texture images" in pa.source_description
  tex = pa.texture(3, 32, 32)
  assert tex.shape == (32, 32, 3) and 0 <= tex.min() and tex.max() <= 1
  out, mask, label = pa(_image(), np.random.default_rng(3))
  assert out.shape == (32, 32, 3)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(DataError, match="no image files"):
    perlin.PerlinAnomaly(str(empty))
  with pytest.raises(DataError, match="not a directory"):
    perlin.PerlinAnomaly(str(tmp_path / "missing"))


def test_augmenters_keep_range():
  tex = perlin.builtin_texture(0, 24, 24, np.random.default_rng(0))
  for k, fn in enumerate(perlin.AUGMENTERS):
    out = np.clip(fn(tex, np.random.default_rng(k)), 0, 1)
    assert out.shape == tex.shape, perlin.AUGMENTER_NAMES[k]
  np.testing.assert_allclose(perlin.AUGMENTERS[6](tex, None), 1 - tex)   # invert
  eq = perlin.AUGMENTERS[8](tex, None)                                    # equalize spreads
  assert eq.min() <= 0.01 and eq.max() >= 0.99


def test_pickles_for_grain_workers():
  import pickle
  pa = perlin.PerlinAnomaly(anomaly_prob=1.0)
  img = _image()
  first = pa(img, np.random.default_rng(4))
  clone = pickle.loads(pickle.dumps(pa))   # caches are dropped, rebuilt identically
  again = clone(img, np.random.default_rng(4))
  np.testing.assert_array_equal(first[0], again[0])
  np.testing.assert_array_equal(first[1], again[1])


def test_self_texture_pastes_the_shifted_image():
  img = _image(seed=2)
  rng = np.random.default_rng(5)
  tex = perlin.self_texture(img, np.random.default_rng(5))
  dy = int(rng.integers(4, 28))
  dx = int(rng.integers(4, 28))
  # independent: pixel (i, j) of the texture is pixel (i - dy, j - dx) of the image
  rows = (np.arange(32)[:, None] - dy) % 32
  cols = (np.arange(32)[None, :] - dx) % 32
  np.testing.assert_array_equal(tex, img[rows, cols])
  assert not np.array_equal(tex, img)
  only_self = perlin.PerlinAnomaly(anomaly_prob=1.0, self_prob=1.0)
  assert "image itself" in only_self.source_description
  for seed in range(10):
    out, mask, label = only_self(img, np.random.default_rng(seed))
    if label:   # inside the mask: a blend of the image and a shifted copy of it, no new colours
      m = mask == 1
      assert out[m].min() >= img.min() - 1e-6 and out[m].max() <= img.max() + 1e-6
      np.testing.assert_array_equal(out[~m], img[~m])
  # self_prob 0 draws nothing extra: the paper's setting is unchanged
  plain = perlin.PerlinAnomaly(anomaly_prob=1.0)
  explicit = perlin.PerlinAnomaly(anomaly_prob=1.0, self_prob=0.0)
  for seed in range(5):
    np.testing.assert_array_equal(plain(img, np.random.default_rng(seed))[0],
                                  explicit(img, np.random.default_rng(seed))[0])
  with pytest.raises(ValueError, match="self_prob"):
    perlin.PerlinAnomaly(self_prob=1.5)
