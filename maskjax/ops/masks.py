"""Inpainting masks and patch-token masks (JAX, jit-able, static shapes).

Pixel masks are float32 `[.., H, W]` with **1 = visible pixel, 0 = masked**
(the SSM/RIAD convention: the network sees `image * mask`).

Grids: the image is cut into cells of `k x k` pixels starting at the top-left
corner. When H or W is not a multiple of k, the last row/column of cells is
partial (cells are computed on the ceil grid and cropped), so every pixel
belongs to exactly one cell.

Token masks follow MAE: `mask = 1` means the token is *removed*.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def _grid_shape(height: int, width: int, k: int) -> tuple[int, int]:
  if k < 1:
    raise ValueError(f"grid cell size k must be >= 1, got {k}")
  return math.ceil(height / k), math.ceil(width / k)


def _cells_to_pixels(cells: jax.Array, height: int, width: int, k: int) -> jax.Array:
  """[..., gh, gw] -> [..., H, W] by nearest upsampling (each cell k x k) and crop."""
  x = jnp.repeat(jnp.repeat(cells, k, axis=-2), k, axis=-1)
  return x[..., :height, :width]


def random_grid_masks(rng: jax.Array, batch: int, height: int, width: int, k: int,
                      mask_prob: float = 0.5) -> jax.Array:
  """SSM training masks [B,H,W]: each k x k cell of each image is masked (0)
  independently with probability `mask_prob`.

  The SSM paper says each grid cell is "randomly chosen to be masked or to be
  kept" without a ratio; we take a fair coin (0.5), so the expected masked
  fraction is 0.5 and masks of all sizes and shapes occur.
  """
  gh, gw = _grid_shape(height, width, k)
  keep = jax.random.uniform(rng, (batch, gh, gw)) >= mask_prob
  return _cells_to_pixels(keep.astype(jnp.float32), height, width, k)


def checkerboard_pair(height: int, width: int, k: int) -> jax.Array:
  """SSM inference initialisation [2,H,W]: two complementary checkerboards of
  k x k cells. Mask 0 is visible (1) on cells with (row + col) even, mask 1 is
  its complement; the pair sums to 1 everywhere."""
  gh, gw = _grid_shape(height, width, k)
  parity = (jnp.arange(gh)[:, None] + jnp.arange(gw)[None, :]) % 2
  first = (parity == 0).astype(jnp.float32)
  cells = jnp.stack([first, 1.0 - first])
  return _cells_to_pixels(cells, height, width, k)


def disjoint_grid_masks(rng: jax.Array, height: int, width: int, k: int,
                        n: int = 3) -> jax.Array:
  """RIAD masks [n,H,W]: the cells are randomly permuted and split into n
  nearly equal consecutive chunks (sizes differ by at most one, larger chunks
  first, like `np.array_split`); mask i is 0 on the cells of chunk i and 1
  elsewhere. The masked sets are disjoint and their union is the whole image,
  so `sum_i (1 - mask_i) == 1`."""
  gh, gw = _grid_shape(height, width, k)
  num = gh * gw
  if n < 1 or n > num:
    raise ValueError(f"disjoint_grid_masks: n must be in [1, {num}] for a {gh}x{gw} grid, got {n}")
  perm = jax.random.permutation(rng, num)
  # position p in the permutation -> chunk index, array_split style.
  base, extra = divmod(num, n)
  bounds = jnp.array([(i + 1) * base + min(i + 1, extra) for i in range(n)])
  chunk_of_pos = jnp.searchsorted(bounds, jnp.arange(num), side="right")
  chunk_of_cell = jnp.zeros((num,), jnp.int32).at[perm].set(chunk_of_pos.astype(jnp.int32))
  cells = (chunk_of_cell[None, :] != jnp.arange(n)[:, None]).astype(jnp.float32)
  return _cells_to_pixels(cells.reshape(n, gh, gw), height, width, k)


def disjoint_grid_masks_batch(rng: jax.Array, batch: int, height: int, width: int, k: int,
                              n: int = 3) -> jax.Array:
  """`disjoint_grid_masks` for every image of a batch: [B,n,H,W], one key each."""
  keys = jax.random.split(rng, batch)
  return jax.vmap(lambda key: disjoint_grid_masks(key, height, width, k, n))(keys)


def mae_random_masking(rng: jax.Array, batch: int, num_tokens: int, mask_ratio: float
                       ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """MAE per-sample random masking.

  noise ~ U(0,1) [B,L]; ids_shuffle = argsort(noise) (ascending: small noise is
  kept); ids_restore = argsort(ids_shuffle); K = int(L * (1 - mask_ratio)).
  Returns (ids_keep [B,K] int32, mask [B,L] float32 with 1 = removed,
  0 = kept, in the original token order, ids_restore [B,L] int32).
  """
  length = num_tokens
  keep = int(length * (1 - mask_ratio))
  noise = jax.random.uniform(rng, (batch, length))
  ids_shuffle = jnp.argsort(noise, axis=1).astype(jnp.int32)
  ids_restore = jnp.argsort(ids_shuffle, axis=1).astype(jnp.int32)
  ids_keep = ids_shuffle[:, :keep]
  mask = (ids_restore >= keep).astype(jnp.float32)
  return ids_keep, mask, ids_restore


def lowest_attention_keep(attn: jax.Array, drop_ratio: float) -> jax.Array:
  """ACA's APMask: drop the `int(L * drop_ratio)` least-attended tokens.

  attn [B,L] (any float dtype). Tokens are ranked by ascending attention with
  a stable sort, so among equal values the lower index is dropped first
  (deterministic). Returns the kept indices [B, L - int(L*drop_ratio)] int32 in
  ascending order (the original token order is preserved for the encoder).
  """
  length = attn.shape[-1]
  drop = int(length * drop_ratio)
  order = jnp.argsort(attn.astype(jnp.float32), axis=-1, stable=True)
  return jnp.sort(order[:, drop:], axis=-1).astype(jnp.int32)
