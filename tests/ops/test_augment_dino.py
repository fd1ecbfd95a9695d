"""DINO's view augmentations (`maskjax.ops.augment`) and the host colour jitter
(`maskjax.ops.cutpaste.color_jitter`) against independent computations:
Python's `colorsys` for HSV and the hue shift, scipy.ndimage.gaussian_filter
(mode "nearest") for the blur, PIL's ImageOps.solarize for solarisation,
torchvision's jitter formulas written out in NumPy for the random order."""
from __future__ import annotations

import colorsys
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageOps
from scipy import ndimage

from maskjax.ops import augment, cutpaste

LUMA = np.array([0.299, 0.587, 0.114], np.float64)


def _colours():
  """Random colours plus the awkward ones: greys, black, white, ties of the
  maximum (r = g, g = b, r = b), pure primaries and hues just below 1."""
  rng = np.random.default_rng(0)
  special = [[0, 0, 0], [1, 1, 1], [0.5, 0.5, 0.5], [1, 0, 0], [0, 1, 0], [0, 0, 1],
             [1, 1, 0], [0, 1, 1], [1, 0, 1], [0.8, 0.8, 0.2], [0.2, 0.8, 0.8],
             [0.8, 0.2, 0.8], [1.0, 0.0, 1e-3], [0.3, 0.1, 0.1], [0.25, 0.5, 0.75]]
  q = rng.integers(0, 256, (200, 3)) / 255.0          # 8-bit colours, with ties
  return np.concatenate([np.asarray(special), q, rng.random((300, 3))]).astype(np.float32)


def test_rgb_hsv_round_trip_matches_colorsys():
  c = _colours()
  hsv = np.asarray(jax.jit(augment.rgb_to_hsv)(jnp.asarray(c)))
  ref = np.array([colorsys.rgb_to_hsv(*map(float, x)) for x in c])
  np.testing.assert_allclose(hsv, ref, atol=2e-6)
  back = np.asarray(jax.jit(augment.hsv_to_rgb)(jnp.asarray(ref, jnp.float32)))
  ref_back = np.array([colorsys.hsv_to_rgb(*x) for x in ref])
  np.testing.assert_allclose(back, ref_back, atol=2e-6)
  np.testing.assert_allclose(back, c, atol=2e-6)
  # every sector of hsv_to_rgb, and h = 1 - tiny (sector 5)
  h = np.concatenate([np.linspace(0, 1, 61, endpoint=False), [1 - 1e-7]])
  grid = np.stack([h, np.full_like(h, 0.7), np.full_like(h, 0.9)], -1).astype(np.float32)
  np.testing.assert_allclose(np.asarray(augment.hsv_to_rgb(jnp.asarray(grid))),
                             [colorsys.hsv_to_rgb(*map(float, x)) for x in grid], atol=2e-6)


def test_host_rgb_hsv_matches_colorsys():
  c = _colours()
  ref = np.array([colorsys.rgb_to_hsv(*map(float, x)) for x in c])
  np.testing.assert_allclose(cutpaste.rgb_to_hsv(c), ref, atol=2e-6)
  np.testing.assert_allclose(cutpaste.hsv_to_rgb(ref.astype(np.float32)),
                             [colorsys.hsv_to_rgb(*x) for x in ref], atol=2e-6)


def _ref_hue(img, delta):
  out = np.empty_like(img, np.float64)
  for idx in np.ndindex(img.shape[:-1]):
    h, s, v = colorsys.rgb_to_hsv(*map(float, img[idx]))
    out[idx] = colorsys.hsv_to_rgb((h + delta) % 1.0, s, v)
  return out


@pytest.mark.parametrize("delta", [0.1, -0.1, 0.5, -0.37])
def test_adjust_hue_matches_colorsys(delta):
  img = np.random.default_rng(1).random((9, 11, 3)).astype(np.float32)
  img[0, :3] = [[0.2, 0.2, 0.2], [1, 0, 0], [0.4, 0.4, 0.1]]
  got = np.asarray(jax.jit(augment.adjust_hue)(jnp.asarray(img), delta))
  np.testing.assert_allclose(got, _ref_hue(img, delta), atol=3e-6)
  np.testing.assert_allclose(got[0, 0], img[0, 0], atol=1e-7)   # greys keep their value


def _ref_ops(img, factors, delta):
  """torchvision's tensor ColorJitter functions in float64 NumPy (luma as PIL)."""
  def bright(x):
    return np.clip(x * factors[0], 0, 1)

  def contrast(x):
    m = np.mean(x @ LUMA)
    return np.clip((x - m) * factors[1] + m, 0, 1)

  def sat(x):
    g = (x @ LUMA)[..., None]
    return np.clip(g + (x - g) * factors[2], 0, 1)

  def hue(x):
    return x if delta is None else _ref_hue(x, delta)
  return [bright, contrast, sat, hue]


def test_color_jitter_in_every_order_matches_numpy():
  img = np.random.default_rng(2).random((6, 7, 3)).astype(np.float32)
  factors, delta = np.array([1.3, 0.7, 1.15], np.float32), 0.08
  fn = jax.jit(lambda order: augment.color_jitter(jnp.asarray(img), jnp.asarray(factors),
                                                  jnp.float32(delta), order))
  for order in itertools.permutations(range(4)):
    x = img.astype(np.float64)
    for i in order:
      x = _ref_ops(x, factors, delta)[i](x)
    np.testing.assert_allclose(np.asarray(fn(jnp.asarray(order))), x, atol=5e-6,
                               err_msg=str(order))
  # the fixed order (order None) is brightness, contrast, saturation, hue
  x = img.astype(np.float64)
  for op in _ref_ops(x, factors, delta):
    x = op(x)
  got = augment.color_jitter(jnp.asarray(img), jnp.asarray(factors), delta)
  np.testing.assert_allclose(np.asarray(got), x, atol=5e-6)


def test_jitter_params_ranges_and_orders():
  keys = jax.random.split(jax.random.key(0), 2000)
  f, d, o = jax.vmap(lambda k: augment.jitter_params(k, (0.4, 0.4, 0.2, 0.1)))(keys)
  f, d, o = np.asarray(f), np.asarray(d), np.asarray(o)
  for j, s in enumerate((0.4, 0.4, 0.2)):
    assert f[:, j].min() >= 1 - s - 1e-6 and f[:, j].max() <= 1 + s + 1e-6
    assert abs(f[:, j].mean() - 1.0) < 0.02
  assert d.min() >= -0.1 and d.max() <= 0.1 and abs(d.mean()) < 0.005
  assert all(sorted(r) == [0, 1, 2, 3] for r in o.tolist())
  assert len({tuple(r) for r in o.tolist()}) == 24           # every order occurs
  # brightness 1.5 would allow a negative factor: torchvision clips the lower end at 0
  f2, _, _ = augment.jitter_params(jax.random.key(1), (1.5, 0.0, 0.0, 0.0))
  assert float(f2[0]) >= 0.0 and float(f2[1]) == 1.0


def test_host_color_jitter_matches_numpy_replay():
  img = np.random.default_rng(3).random((8, 9, 3)).astype(np.float32)
  for seed in range(6):
    got = cutpaste.color_jitter(img, np.random.default_rng(seed), (0.1, 0.1, 0.1, 0.1))
    rng = np.random.default_rng(seed)              # torchvision's draw order, replayed
    order = rng.permutation(4)
    factors = [rng.uniform(0.9, 1.1) for _ in range(3)]
    delta = rng.uniform(-0.1, 0.1)
    x = img.astype(np.float64)
    for i in order:
      x = _ref_ops(x, factors, delta)[i](x)
    np.testing.assert_allclose(got, x, atol=5e-6)


@pytest.mark.parametrize("sigma", [0.1, 0.6, 1.3, 2.0])
def test_gaussian_blur_matches_scipy_nearest(sigma):
  img = np.random.default_rng(4).random((23, 17, 3)).astype(np.float32)
  got = np.asarray(jax.jit(augment.gaussian_blur)(jnp.asarray(img), sigma))
  # scipy's radius = int(truncate * sigma + 0.5): truncate = 6 / sigma gives 6 px
  ref = np.stack([ndimage.gaussian_filter(img[..., c].astype(np.float64), sigma,
                                          mode="nearest", truncate=augment.BLUR_RADIUS / sigma)
                  for c in range(3)], -1)
  np.testing.assert_allclose(got, ref, atol=2e-6)


def test_gaussian_blur_small_image_replicates_borders():
  img = np.random.default_rng(5).random((4, 5, 3)).astype(np.float32)   # smaller than the kernel
  got = np.asarray(augment.gaussian_blur(jnp.asarray(img), 2.0))
  ref = np.stack([ndimage.gaussian_filter(img[..., c].astype(np.float64), 2.0, mode="nearest",
                                          truncate=3.0) for c in range(3)], -1)
  np.testing.assert_allclose(got, ref, atol=2e-6)


def test_solarize_matches_pil_on_every_8bit_value():
  values = np.arange(256, dtype=np.uint8)
  rgb = np.stack([values, values[::-1], np.roll(values, 77)], -1)[None]     # [1, 256, 3]
  ref = np.asarray(ImageOps.solarize(Image.fromarray(rgb), threshold=128)) / 255.0
  got = np.asarray(augment.solarize(jnp.asarray(rgb / 255.0, jnp.float32)))
  np.testing.assert_allclose(got, ref, atol=1e-6)


def test_blur_solarize_probabilities():
  img = jnp.asarray(np.random.default_rng(6).random((12, 12, 3)), jnp.float32)
  keys = jax.random.split(jax.random.key(3), 400)
  sol = jax.vmap(lambda k: augment.blur_solarize(k, img, 0.0, 0.2))(keys)
  solarized = np.asarray(jnp.any(sol != img, axis=(1, 2, 3)))
  assert 0.14 < solarized.mean() < 0.26
  np.testing.assert_array_equal(np.asarray(sol)[solarized],
                                np.broadcast_to(np.asarray(augment.solarize(img)),
                                                (int(solarized.sum()), 12, 12, 3)))
  blur = jax.vmap(lambda k: augment.blur_solarize(k, img, 1.0, 0.0))(keys[:50])
  # p = 1: always blurred; sigma < ~0.17 px is the identity in float32 (the
  # first tap's weight exp(-1 / (2 sigma^2)) < 2^-24), 1/25 of U(0.1, 2.0)
  changed = np.asarray(jnp.any(blur != img, axis=(1, 2, 3)))
  assert changed.mean() > 0.85
  tv = lambda x: np.abs(np.diff(np.asarray(x), axis=-3)).mean(axis=(-1, -2, -3))
  assert np.all(tv(blur) <= tv(img) + 1e-6) and np.median(tv(blur)) < 0.5 * tv(img)  # smoother
  half = jax.vmap(lambda k: augment.blur_solarize(k, img, 0.5, 0.0))(keys)
  assert 0.42 < float(jnp.mean(jnp.any(half != img, axis=(1, 2, 3)))) < 0.58


def test_dino_options_draw_from_keys_of_their_own():
  """Switching an option on leaves every other draw of `make_views` as it was:
  solarisation p = 1 = the plain views solarised; a hue shift of grey images
  changes nothing (s = 0), so the crops, flips and b/c/s factors are the same."""
  rng = np.random.default_rng(7)
  x = jnp.asarray(rng.random((3, 24, 24, 3)), jnp.float32)
  key = jax.random.key(11)
  plain = augment.make_views(key, x, 2, 16, (0.3, 1.0))
  sol = augment.make_views(key, x, 2, 16, (0.3, 1.0), p_solarize=1.0)
  np.testing.assert_array_equal(np.asarray(sol), np.asarray(augment.solarize(plain)))
  grey = jnp.broadcast_to(x[..., :1], x.shape)
  a = augment.make_views(key, grey, 2, 16, (0.3, 1.0))
  b = augment.make_views(key, grey, 2, 16, (0.3, 1.0), hue=0.1)
  np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=2e-6)
  assert plain.shape == (6, 16, 16, 3)
