"""Attention-guided cut-paste: area bounds, attention-following location, Poisson blend."""
from __future__ import annotations

import numpy as np

from maskjax.ops import cutpaste


def _image(h=64, w=64, seed=0):
  return np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)


def test_mask_area_bounds_and_untouched_outside():
  img = _image()
  att = np.zeros((8, 8), np.float32)
  att[3:5, 3:5] = 1.0      # centre: the patch never leaves the image
  for seed in range(30):
    out, mask = cutpaste.attention_cutpaste(img, att, np.random.default_rng(seed))
    assert set(np.unique(mask)) <= {0.0, 1.0}
    area = mask.sum()
    lo = (0.1 * 64) ** 2 * 0.8 ** 2 * 0.9
    hi = (0.4 * 64) ** 2 * 1.2 ** 2 * 1.1
    assert lo <= area <= hi, (seed, area)
    np.testing.assert_array_equal(out[mask == 0], img[mask == 0])
    assert 0 <= out.min() and out.max() <= 1


def test_location_follows_attention():
  img = _image(seed=1)
  att = np.zeros((8, 8), np.float32)
  att[0:2, 6:8] = 1.0      # top-right corner
  hits = 0
  for seed in range(40):
    _, mask = cutpaste.attention_cutpaste(img, att, np.random.default_rng(seed))
    cy, cx = np.argwhere(mask > 0).mean(0)
    hits += (cy < 32) and (cx >= 32)
  assert hits >= 36
  p = cutpaste.location_probabilities(att, 64, 64)
  np.testing.assert_allclose(p.sum(), 1.0)
  assert p[:16, 48:].sum() > 0.9


def test_poisson_blend_reproduces_target_for_offset_source():
  # Same gradients as the target (constant offset): the Poisson solution is the target.
  yy, xx = np.mgrid[0:40, 0:40] / 40.0
  target = np.stack([yy, xx, 0.5 * (yy + xx)], -1).astype(np.float32) * 0.6 + 0.2
  source = target + 0.3
  mask = np.zeros((40, 40), np.float32)
  mask[10:30, 5:25] = 1
  mask[0:6, 0:6] = 1        # touches the image border
  out = cutpaste.poisson_blend(target, source, mask)
  np.testing.assert_allclose(out, target, atol=1e-5)


def test_poisson_cutpaste_runs_and_is_deterministic():
  img = _image(seed=2)
  att = np.random.default_rng(0).random((4, 4)).astype(np.float32)
  a = cutpaste.attention_cutpaste(img, att, np.random.default_rng(5), poisson=True)
  b = cutpaste.attention_cutpaste(img, att, np.random.default_rng(5), poisson=True)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[0][a[1] == 0], img[a[1] == 0])
  assert a[1].sum() > 0
