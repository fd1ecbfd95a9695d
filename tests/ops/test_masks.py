"""Masks checked by their defining properties."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from maskjax.ops import masks


def _cells_constant(m, k):
  """Every k x k cell of m [..., H, W] holds a single value."""
  h, w = m.shape[-2:]
  for i in range(0, h, k):
    for j in range(0, w, k):
      cell = m[..., i:i + k, j:j + k]
      if not np.all(cell == cell[..., :1, :1]):
        return False
  return True


def test_random_grid_masks_cells_and_ratio():
  fn = jax.jit(masks.random_grid_masks, static_argnums=(1, 2, 3, 4))
  m = np.asarray(fn(jax.random.key(0), 64, 32, 32, 4))
  assert m.shape == (64, 32, 32) and m.dtype == np.float32
  assert set(np.unique(m)) <= {0.0, 1.0}
  assert _cells_constant(m, 4)
  assert abs(m.mean() - 0.5) < 0.03          # 4096 cells, fair coin
  assert len({m[i].tobytes() for i in range(64)}) == 64   # independent per image


def test_random_grid_masks_partial_cells():
  m = np.asarray(masks.random_grid_masks(jax.random.key(1), 4, 10, 7, 4))
  assert m.shape == (4, 10, 7) and _cells_constant(m, 4)


def test_checkerboard_pair_complementary():
  m = np.asarray(masks.checkerboard_pair(16, 24, 4))
  assert m.shape == (2, 16, 24)
  np.testing.assert_array_equal(m[0] + m[1], 1.0)
  assert _cells_constant(m, 4)
  # neighbouring cells alternate
  assert m[0, 0, 0] == 1 and m[0, 0, 4] == 0 and m[0, 4, 0] == 0 and m[0, 4, 4] == 1
  assert m[0].mean() == 0.5


def test_disjoint_grid_masks_partition():
  m = np.asarray(masks.disjoint_grid_masks(jax.random.key(2), 32, 32, 4, 3))
  assert m.shape == (3, 32, 32)
  masked = 1.0 - m
  np.testing.assert_array_equal(masked.sum(0), 1.0)   # disjoint and covering
  cells = masked[:, ::4, ::4].reshape(3, -1).sum(1)
  assert sorted(cells.tolist()) == [21, 21, 22]        # 64 cells, nearly equal
  assert _cells_constant(m, 4)


def test_disjoint_grid_masks_batch_differs_per_image():
  m = np.asarray(masks.disjoint_grid_masks_batch(jax.random.key(3), 4, 16, 16, 2, 3))
  assert m.shape == (4, 3, 16, 16)
  np.testing.assert_array_equal((1 - m).sum(1), 1.0)
  assert not np.array_equal(m[0], m[1])


def test_mae_random_masking_properties():
  ids_keep, mask, ids_restore = masks.mae_random_masking(jax.random.key(4), 5, 196, 0.75)
  ids_keep, mask, ids_restore = map(np.asarray, (ids_keep, mask, ids_restore))
  assert ids_keep.shape == (5, 49) and mask.shape == (5, 196)
  np.testing.assert_array_equal(mask.sum(1), 147)
  for b in range(5):
    assert len(set(ids_keep[b])) == 49
    np.testing.assert_array_equal(mask[b, ids_keep[b]], 0.0)   # kept tokens are 0
    # ids_restore inverts the shuffle: ids_shuffle[ids_restore] == arange
    shuffle = np.argsort(ids_restore[b])
    np.testing.assert_array_equal(shuffle[:49], ids_keep[b])
    np.testing.assert_array_equal(shuffle[ids_restore[b]], np.arange(196))


def test_lowest_attention_keep_drops_least_and_ties_by_index():
  attn = np.array([[0.5, 0.1, 0.1, 0.9, 0.1, 0.3, 0.7, 0.2, 0.6, 0.4]], np.float32)
  keep = np.asarray(jax.jit(masks.lowest_attention_keep, static_argnums=1)(attn, 0.3))
  # three lowest: the three 0.1 values at 1, 2, 4 -> dropped
  np.testing.assert_array_equal(keep, [[0, 3, 5, 6, 7, 8, 9]])
  # tie break: four 0.1 values, drop 3 -> lower indices 1, 2, 4 dropped, 7 kept
  attn2 = np.array([[0.5, 0.1, 0.1, 0.9, 0.1, 0.3, 0.7, 0.1, 0.6, 0.4]], np.float32)
  keep2 = np.asarray(masks.lowest_attention_keep(jnp.asarray(attn2, jnp.bfloat16), 0.3))
  np.testing.assert_array_equal(keep2, [[0, 3, 5, 6, 7, 8, 9]])
  rng = np.random.default_rng(0)
  a = rng.random((4, 196)).astype(np.float32)
  k = np.asarray(masks.lowest_attention_keep(a, 0.3))
  assert k.shape == (4, 196 - 58)
  for b in range(4):
    dropped = np.setdiff1d(np.arange(196), k[b])
    assert a[b, dropped].max() <= a[b, k[b]].min()
    assert np.all(np.diff(k[b]) > 0)
