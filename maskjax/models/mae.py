"""Masked autoencoder (He et al., MAE) around a `maskjax.models.vit.ViT` encoder.

Conventions
-----------
* Images NHWC, normalised; patch tokens row-major over the (H/p, W/p) grid.
* `patchify(x, p)`: [B,H,W,3] -> [B, L, p*p*3], each patch flattened in
  (row-in-patch, column-in-patch, channel) order, as MAE's `patchify`.
* Masking (see `maskjax.ops.masks.mae_random_masking`): `keep_ids [B,K]` are the
  kept patch indices, `ids_restore [B,L]` the inverse permutation of
  [kept..., removed...] (i.e. argsort of the shuffle), `mask [B,L]` 1 = removed.
* The decoder: Linear(D, decoder_dim), mask tokens appended for the removed
  patches, unshuffled with ids_restore, fixed 2-D sin-cos decoder position
  embedding added, `decoder_depth` pre-norm blocks, LayerNorm, Linear to
  p*p*3, CLS dropped -> [B, L, p*p*3] (pixel predictions, in patchify order).

Parameter names mirror MAE's PyTorch checkpoints, with the encoder's under
`encoder.` (`encoder.blocks.0...`), and `mask_token`, `decoder_embed`,
`decoder_blocks.i`, `decoder_norm`, `decoder_pred` at the top level.
Init: xavier-uniform linears (vit.py), mask token N(0, 0.02).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from maskjax.models import init_utils
from maskjax.models import vit as vit_lib

Array = jax.Array


def patchify(x: Array, p: int) -> Array:
  """[B,H,W,C] -> [B, (H/p)*(W/p), p*p*C] in (p, q, c) order."""
  b, h, w, c = x.shape
  if h % p or w % p:
    raise ValueError(f"image {h}x{w} is not a multiple of patch {p}")
  x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(t: Array, p: int, h: int, w: int) -> Array:
  """[B, h*w, p*p*C] -> [B, h*p, w*p, C]; h, w are the token-grid sizes."""
  b, l, f = t.shape
  c = f // (p * p)
  if l != h * w or c * p * p != f:
    raise ValueError(f"tokens {t.shape} do not fit a {h}x{w} grid of {p}x{p} patches")
  t = t.reshape(b, h, w, p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return t.reshape(b, h * p, w * p, c)


def mae_loss(imgs: Array, pred: Array, mask: Array, p: int, norm_pix_loss: bool = False) -> Array:
  """MAE loss: per-patch MSE averaged over removed patches (mask 1 = removed).

  norm_pix_loss: targets normalised per patch by mean and unbiased variance
  (+1e-6), as in MAE's `forward_loss`."""
  target = patchify(imgs, p).astype(jnp.float32)
  if norm_pix_loss:
    mean = target.mean(axis=-1, keepdims=True)
    var = target.var(axis=-1, keepdims=True, ddof=1)
    target = (target - mean) / jnp.sqrt(var + 1e-6)
  per_patch = jnp.mean((pred.astype(jnp.float32) - target) ** 2, axis=-1)
  mask = mask.astype(jnp.float32)
  return jnp.sum(per_patch * mask) / jnp.maximum(jnp.sum(mask), 1.0)


class MAE(nnx.Module):
  """MAE = ViT encoder (normally pos_embed="sincos") + lightweight decoder."""

  def __init__(self, encoder: vit_lib.ViT, decoder_dim: int = 512, decoder_depth: int = 8,
               decoder_heads: int = 16, mlp_ratio: float = 4.0, *, rngs: nnx.Rngs):
    self.encoder = encoder
    self.patch = encoder.patch
    self.decoder_dim = decoder_dim
    dtype = encoder.dtype
    self.decoder_embed = nnx.Linear(encoder.dim, decoder_dim,
                                    kernel_init=nnx.initializers.xavier_uniform(), dtype=dtype,
                                    param_dtype=jnp.float32, rngs=rngs)
    self.mask_token = nnx.Param(0.02 * jax.random.normal(init_utils.rekey(rngs.params()),
                                                         (1, 1, decoder_dim), jnp.float32))
    side = encoder.img_size // encoder.patch
    self.decoder_pos_embed = vit_lib.FixedEmbed(
        jnp.asarray(vit_lib.sincos_2d(decoder_dim, (side, side))))
    self.decoder_blocks = nnx.List([
        vit_lib.Block(decoder_dim, decoder_heads, mlp_ratio, dtype=dtype, rngs=rngs)
        for _ in range(decoder_depth)])
    self.decoder_norm = nnx.LayerNorm(decoder_dim, epsilon=vit_lib.LN_EPS, dtype=dtype,
                                      param_dtype=jnp.float32, rngs=rngs)
    self.decoder_pred = nnx.Linear(decoder_dim, encoder.patch ** 2 * 3,
                                   kernel_init=nnx.initializers.xavier_uniform(), dtype=dtype,
                                   param_dtype=jnp.float32, rngs=rngs)

  def forward_encoder(self, x: Array, keep_ids: Array | None = None,
                      return_blocks: bool = False) -> dict[str, Any]:
    """Encoder on the kept tokens: dict(tokens [B,1+K,D], blocks if asked)."""
    return self.encoder(x, keep_ids=keep_ids, return_blocks=return_blocks)

  def forward_decoder(self, latent: Array, ids_restore: Array,
                      grid_hw: tuple[int, int] | None = None) -> Array:
    """latent [B,1+K,D] (encoder tokens), ids_restore [B,L] -> pixels [B,L,p*p*3].

    grid_hw: the (h, w) token grid; None = square (sqrt(L) x sqrt(L)). Pass it
    for non-square images."""
    x = self.decoder_embed(latent)
    b, k1, d = x.shape
    l = ids_restore.shape[1]
    if grid_hw is None:
      side = int(round(l ** 0.5))
      grid = (side, side)
    else:
      grid = (int(grid_hw[0]), int(grid_hw[1]))
    if l != grid[0] * grid[1]:
      raise ValueError(f"ids_restore has {l} positions but the token grid is {grid}")
    mask_tokens = jnp.broadcast_to(self.mask_token[...].astype(x.dtype), (b, l + 1 - k1, d))
    x_ = jnp.concatenate([x[:, 1:], mask_tokens], axis=1)
    x_ = jnp.take_along_axis(x_, ids_restore[..., None].astype(jnp.int32), axis=1)
    x = jnp.concatenate([x[:, :1], x_], axis=1)
    side = self.encoder.img_size // self.patch
    pos = (self.decoder_pos_embed[...] if grid == (side, side)
           else jnp.asarray(vit_lib.sincos_2d(self.decoder_dim, grid)))
    x = x + pos.astype(x.dtype)
    for blk in self.decoder_blocks:
      x, _ = blk(x)
    x = self.decoder_pred(self.decoder_norm(x))
    return x[:, 1:]

  def decode_all_tokens(self, latent: Array) -> Array:
    """The decoder on every token of an unmasked encoding: latent [B,1+L,D]
    (all tokens, in order: no mask tokens, no reordering) -> the normalised
    decoder features [B,1+L,decoder_dim] before the pixel head (MALA's
    token balance module reads them)."""
    h = self.decoder_embed(latent)
    h = h + self.decoder_pos_embed[...].astype(h.dtype)
    for blk in self.decoder_blocks:
      h, _ = blk(h)
    return self.decoder_norm(h)

  def __call__(self, x: Array, keep_ids: Array, ids_restore: Array) -> Array:
    """Reconstruct all patches from the kept ones: [B,H,W,3] -> [B,L,p*p*3]."""
    latent = self.forward_encoder(x, keep_ids)["tokens"]
    return self.forward_decoder(latent, ids_restore, self.encoder.grid_hw(x.shape[1:3]))
