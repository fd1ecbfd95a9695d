"""Vision Transformer backbones (DINO / MAE conventions) in Flax NNX.

Conventions
-----------
* Input images are NHWC float arrays, already normalised (ImageNet mean/std,
  see `maskjax.ops.normalize.imagenet`). H and W must be multiples of the patch.
* Patch tokens are in row-major order over the (H/p, W/p) grid, index
  `r * (W/p) + c`; token 0 of every sequence is the CLS token.
* Blocks are pre-norm (`x + attn(norm1(x))`, `x + mlp(norm2(x))`), LayerNorm
  eps 1e-6, exact (erf) GELU, qkv as one Linear with bias (features ordered
  [3, heads, head_dim] like the PyTorch checkpoints), softmax(q k^T / sqrt(d)).
* Position embedding: "learned" (DINO: a parameter for 1 + (img_size/p)^2
  tokens, bicubically resized for other grids with PyTorch's exact numerics,
  including DINO's +0.1 on the target size) or "sincos" (MAE: fixed 2-D sin-cos,
  recomputed for any grid, CLS position zeros; stored as `FixedEmbed`, never a
  trainable parameter and never saved in weight checkpoints).
* Token dropping: `keep_ids [B, K]` (int, values in 0..N-1) selects the patch
  tokens each image keeps. Position embeddings are added before the gather
  (MAE convention), the CLS token is prepended after, so blocks see 1 + K tokens.

Parameter names mirror the PyTorch checkpoints (`patch_embed.proj`, `blocks.i.
{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}`, `norm`, `cls_token`,
`pos_embed`), so `maskjax.weights.convert` is a rename plus transposes.

Sizes (`VIT_CONFIGS`): the published ViT-S/16, S/8, B/16, L/16 and two tiny
sizes for tests and demos, `vit_tiny_patch16` / `vit_tiny_patch8`
(dim 192, depth 4, 3 heads, mlp ratio 4; DeiT-Tiny width, a third of its depth).
"""
from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from maskjax.errors import ConfigError
from maskjax.models import init_utils

Array = jax.Array

VIT_CONFIGS: dict[str, dict[str, Any]] = {
    "vit_tiny_patch16": dict(patch=16, dim=192, depth=4, heads=3),
    "vit_tiny_patch8": dict(patch=8, dim=192, depth=4, heads=3),
    "vit_small_patch16": dict(patch=16, dim=384, depth=12, heads=6),
    "vit_small_patch8": dict(patch=8, dim=384, depth=12, heads=6),
    "vit_base_patch16": dict(patch=16, dim=768, depth=12, heads=12),
    "vit_large_patch16": dict(patch=16, dim=1024, depth=24, heads=16),
}

LN_EPS = 1e-6


class FixedEmbed(nnx.Variable):
  """A fixed (not trained, not checkpointed) array such as the MAE sin-cos table."""


# ----------------------------------------------------------------------------
# position embeddings
# ----------------------------------------------------------------------------
def sincos_2d(dim: int, grid_hw: tuple[int, int], cls_token: bool = True) -> np.ndarray:
  """MAE's fixed 2-D sin-cos embedding, float32 [1 (+1), h*w, dim] as NumPy.

  The first dim/2 channels encode the column index, the last dim/2 the row
  index; each half is [sin(pos * omega), cos(pos * omega)] with
  omega_i = 1 / 10000^(i / (dim/4)), i = 0..dim/4-1. CLS position = zeros.
  """
  if dim % 4:
    raise ValueError(f"sin-cos position embedding needs dim % 4 == 0 (got dim={dim})")
  h, w = grid_hw
  rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64),
                           indexing="ij")
  quarter = dim // 4
  omega = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / quarter)

  def one(pos):
    out = pos.reshape(-1)[:, None] * omega[None]
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)

  emb = np.concatenate([one(cols), one(rows)], axis=1)
  if cls_token:
    emb = np.concatenate([np.zeros((1, dim)), emb], axis=0)
  return emb[None].astype(np.float32)


def _cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
  """PyTorch's cubic convolution coefficients for taps at offsets -1, 0, 1, 2."""
  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


@functools.lru_cache(maxsize=64)
def torch_bicubic_matrix(in_size: int, out_size: int, scale: float) -> np.ndarray:
  """[out_size, in_size] matrix equal to `torch.nn.functional.interpolate(...,
  mode="bicubic", scale_factor=scale, align_corners=False)` along one axis.

  Source coordinate (dst + 0.5) / scale - 0.5 (not clamped), cubic kernel
  a = -0.75, taps clamped to [0, in_size - 1] (border replication), no
  antialiasing. (`jax.image.resize` 'cubic' uses a = -0.5 and antialiases, so
  it does not reproduce PyTorch.)
  """
  m = np.zeros((out_size, in_size), np.float64)
  src = (np.arange(out_size, dtype=np.float64) + 0.5) / scale - 0.5
  base = np.floor(src)
  w = _cubic_weights(src - base)
  for k in range(4):
    idx = np.clip(base.astype(np.int64) - 1 + k, 0, in_size - 1)
    np.add.at(m, (np.arange(out_size), idx), w[:, k])
  return m


def interpolate_pos_embed(pos_embed: Array, grid_hw: tuple[int, int]) -> Array:
  """DINO's `interpolate_pos_encoding` for a learned [1, 1+N, D] table.

  The sqrt(N) x sqrt(N) patch grid is resized bicubically (PyTorch numerics)
  with scale factors ((h + 0.1) / sqrt(N), (w + 0.1) / sqrt(N)) to (h, w); the
  CLS entry is kept. Returns the table unchanged when (h, w) is the stored grid.
  """
  n = pos_embed.shape[1] - 1
  side = int(round(math.sqrt(n)))
  if side * side != n:
    raise ValueError(f"learned pos_embed must cover a square grid (got {n} patch positions)")
  h, w = grid_hw
  if (h, w) == (side, side):
    return pos_embed
  mh = torch_bicubic_matrix(side, h, (h + 0.1) / side)
  mw = torch_bicubic_matrix(side, w, (w + 0.1) / side)
  d = pos_embed.shape[-1]
  grid = pos_embed[0, 1:].reshape(side, side, d).astype(jnp.float32)
  hp = jax.lax.Precision.HIGHEST
  grid = jnp.einsum("hi,ijd->hjd", jnp.asarray(mh, jnp.float32), grid, precision=hp)
  grid = jnp.einsum("wj,hjd->hwd", jnp.asarray(mw, jnp.float32), grid, precision=hp)
  out = jnp.concatenate([pos_embed[0, :1].astype(jnp.float32), grid.reshape(h * w, d)], axis=0)
  return out[None].astype(pos_embed.dtype)


# ----------------------------------------------------------------------------
# layers
# ----------------------------------------------------------------------------
def _xavier():
  # chunked random bits: the same values as xavier_uniform, faster to jit (init_utils)
  return init_utils.fast(nnx.initializers.xavier_uniform())


class PatchEmbed(nnx.Module):
  """Conv patch embedding, kernel = stride = patch, VALID padding -> [B, h*w, D]."""

  def __init__(self, patch: int, dim: int, in_chans: int = 3, *, dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.patch = patch
    # xavier-uniform on the flattened [D, in*p*p] weight (MAE init): fan_in =
    # in*p*p, fan_out = D, identical to the conv's own fans with this layout.
    self.proj = nnx.Conv(in_chans, dim, kernel_size=(patch, patch), strides=(patch, patch),
                         padding="VALID", kernel_init=_xavier(), dtype=dtype,
                         param_dtype=jnp.float32, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    y = self.proj(x)
    b, h, w, d = y.shape
    return y.reshape(b, h * w, d)


class Attention(nnx.Module):
  """Multi-head self-attention with explicit softmax (so it can be returned)."""

  def __init__(self, dim: int, heads: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
    if dim % heads:
      raise ValueError(f"dim {dim} is not divisible by heads {heads}")
    self.heads = heads
    self.scale = (dim // heads) ** -0.5
    self.dtype = dtype
    kw = dict(kernel_init=_xavier(), dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
    self.qkv = nnx.Linear(dim, 3 * dim, **kw)
    self.proj = nnx.Linear(dim, dim, **kw)

  def __call__(self, x: Array) -> tuple[Array, Array]:
    b, n, d = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]          # [B, N, H, hd]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * jnp.asarray(self.scale, q.dtype)
    attn = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", attn.astype(v.dtype), v).reshape(b, n, d)
    return self.proj(out), attn


class Mlp(nnx.Module):
  def __init__(self, dim: int, hidden: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(kernel_init=_xavier(), dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
    self.fc1 = nnx.Linear(dim, hidden, **kw)
    self.fc2 = nnx.Linear(hidden, dim, **kw)

  def __call__(self, x: Array) -> Array:
    return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


def _layer_norm(dim: int, dtype, rngs) -> nnx.LayerNorm:
  return nnx.LayerNorm(dim, epsilon=LN_EPS, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


class Block(nnx.Module):
  """Pre-norm transformer block; returns (tokens, attention [B, heads, N, N])."""

  def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, *, dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.norm1 = _layer_norm(dim, dtype, rngs)
    self.attn = Attention(dim, heads, dtype=dtype, rngs=rngs)
    self.norm2 = _layer_norm(dim, dtype, rngs)
    self.mlp = Mlp(dim, int(dim * mlp_ratio), dtype=dtype, rngs=rngs)

  def __call__(self, x: Array) -> tuple[Array, Array]:
    y, attn = self.attn(self.norm1(x))
    x = x + y
    x = x + self.mlp(self.norm2(x))
    return x, attn


# ----------------------------------------------------------------------------
# ViT
# ----------------------------------------------------------------------------
class ViT(nnx.Module):
  """ViT encoder. See the module docstring for conventions.

  Parameters: `patch_embed.proj`, `cls_token` [1,1,D] (N(0, 0.02)),
  `pos_embed` [1, 1+(img_size/patch)^2, D] (a Param for "learned", trunc-normal
  0.02; a `FixedEmbed` for "sincos"), `blocks[i]`, `norm`.
  """

  def __init__(self, *, patch: int, dim: int, depth: int, heads: int, mlp_ratio: float = 4.0,
               img_size: int = 224, pos_embed: str = "learned", dtype=jnp.float32,
               rngs: nnx.Rngs):
    if img_size % patch:
      raise ValueError(f"img_size {img_size} is not a multiple of patch {patch}")
    if pos_embed not in ("learned", "sincos"):
      raise ValueError(f"pos_embed must be 'learned' or 'sincos' (got {pos_embed!r})")
    self.patch, self.dim, self.depth, self.heads = patch, dim, depth, heads
    self.img_size, self.pos_embed_kind, self.dtype = img_size, pos_embed, dtype
    side = img_size // patch
    self.patch_embed = PatchEmbed(patch, dim, dtype=dtype, rngs=rngs)
    self.cls_token = nnx.Param(0.02 * jax.random.normal(init_utils.rekey(rngs.params()),
                                                          (1, 1, dim), jnp.float32))
    if pos_embed == "learned":
      self.pos_embed = nnx.Param(init_utils.fast(nnx.initializers.truncated_normal(0.02))(
          rngs.params(), (1, 1 + side * side, dim), jnp.float32))
    else:
      self.pos_embed = FixedEmbed(jnp.asarray(sincos_2d(dim, (side, side))))
    self.blocks = nnx.List([Block(dim, heads, mlp_ratio, dtype=dtype, rngs=rngs)
                            for _ in range(depth)])
    self.norm = _layer_norm(dim, dtype, rngs)

  def grid_hw(self, hw: tuple[int, int]) -> tuple[int, int]:
    h, w = hw
    if h % self.patch or w % self.patch:
      raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {self.patch}")
    return h // self.patch, w // self.patch

  def position_embedding(self, grid_hw: tuple[int, int]) -> Array:
    """[1, 1 + h*w, D] float32 table for a (h, w) patch grid."""
    if self.pos_embed_kind == "sincos":
      side = self.img_size // self.patch
      if tuple(grid_hw) == (side, side):
        return self.pos_embed[...]
      return jnp.asarray(sincos_2d(self.dim, tuple(grid_hw)))
    return interpolate_pos_embed(self.pos_embed[...], tuple(grid_hw))

  def embed(self, x: Array, keep_ids: Array | None = None) -> Array:
    """Patch tokens + position, optional gather, CLS prepended -> [B, 1+K, D]."""
    grid = self.grid_hw(x.shape[1:3])
    tokens = self.patch_embed(x.astype(self.dtype))
    pos = self.position_embedding(grid)
    tokens = tokens + pos[:, 1:].astype(tokens.dtype)
    if keep_ids is not None:
      tokens = jnp.take_along_axis(tokens, keep_ids[..., None].astype(jnp.int32), axis=1)
    cls = (self.cls_token[...] + pos[:, :1]).astype(tokens.dtype)
    cls = jnp.broadcast_to(cls, (tokens.shape[0], 1, self.dim))
    return jnp.concatenate([cls, tokens], axis=1)

  def __call__(self, x: Array, keep_ids: Array | None = None, return_blocks: bool = False,
               return_attention: bool = False) -> dict[str, Any]:
    """x [B,H,W,3] normalised -> dict(tokens [B,1+K,D] after the final norm,
    blocks: list of [B,1+K,D] per block before the final norm (if asked),
    attention: [B, heads, 1+K, 1+K] float32 softmax of the last block (if asked))."""
    h = self.embed(x, keep_ids)
    blocks = []
    attn = None
    for blk in self.blocks:
      h, attn = blk(h)
      if return_blocks:
        blocks.append(h)
    out: dict[str, Any] = {"tokens": self.norm(h)}
    if return_blocks:
      out["blocks"] = blocks
    if return_attention:
      out["attention"] = attn
    return out


def vit_config(name: str, overrides, key: str) -> dict[str, Any]:
  """The constructor arguments of `VIT_CONFIGS[name]` with `overrides` applied;
  an unknown name is a ConfigError naming the config key `key`."""
  if name not in VIT_CONFIGS:
    raise ConfigError(f"{key}={name!r}; known: {', '.join(sorted(VIT_CONFIGS))}")
  kw = dict(VIT_CONFIGS[name])
  kw.update(dict(overrides))
  return kw


def build_vit(name: str, *, img_size: int = 224, rngs: nnx.Rngs, **overrides) -> ViT:
  """A ViT from `VIT_CONFIGS[name]`; `overrides` replace any constructor argument
  (e.g. pos_embed="sincos" for MAE encoders, dtype=jnp.bfloat16)."""
  if name not in VIT_CONFIGS:
    raise ValueError(f"unknown ViT {name!r}; known: {', '.join(sorted(VIT_CONFIGS))}")
  kw = dict(VIT_CONFIGS[name])
  kw.update(overrides)
  return ViT(img_size=img_size, rngs=rngs, **kw)


# ----------------------------------------------------------------------------
# saliency
# ----------------------------------------------------------------------------
def cls_attention_map(attention: Array, grid_hw: Sequence[int]) -> Array:
  """Head-mean of the CLS row over the patch columns: [B,heads,1+N,1+N] -> [B,h,w].

  Needs all N = h*w patch tokens (no token dropping)."""
  h, w = int(grid_hw[0]), int(grid_hw[1])
  if attention.shape[-1] != 1 + h * w:
    raise ValueError(f"attention has {attention.shape[-1]} tokens, expected 1 + {h}*{w}")
  return attention[:, :, 0, 1:].mean(axis=1).reshape(attention.shape[0], h, w)


def saliency(model: ViT, x_normalised: Array, out_hw: Sequence[int]) -> Array:
  """Last-block CLS attention (head mean) upsampled to out_hw: [B,H,W,3] -> [B,H',W'] float32.

  Upsampling is `jax.image.resize(..., "linear")` (bilinear, half-pixel
  centres, like PyTorch `align_corners=False` when upsampling). Pure and
  jit-friendly; `saliency_jit` is the compiled version (out_hw static)."""
  out = model(x_normalised, return_attention=True)
  grid = model.grid_hw(x_normalised.shape[1:3])
  amap = cls_attention_map(out["attention"], grid).astype(jnp.float32)
  return jax.image.resize(amap, (amap.shape[0], int(out_hw[0]), int(out_hw[1])), "linear")


saliency_jit = nnx.jit(saliency, static_argnames=("out_hw",))
