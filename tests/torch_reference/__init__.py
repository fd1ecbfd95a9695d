"""PyTorch reference modules with the parameter names of the official DINO and
MAE checkpoints, written from the papers' descriptions (pre-norm ViT blocks,
LayerNorm eps 1e-6, exact GELU, DINO's bicubic position-embedding resize with
the +0.1 offset, MAE's fixed 2-D sin-cos tables and decoder, DINO's head).

Used by the tests (random weights -> .pth -> maskjax conversion -> compare) and
by `benchmarks/vit.py`. Inputs are NCHW like the originals.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class PatchEmbed(nn.Module):
  def __init__(self, patch, in_chans, dim):
    super().__init__()
    self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)

  def forward(self, x):
    return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
  def __init__(self, dim, heads):
    super().__init__()
    self.heads = heads
    self.scale = (dim // heads) ** -0.5
    self.qkv = nn.Linear(dim, dim * 3, bias=True)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x):
    b, n, c = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = (q @ k.transpose(-2, -1)) * self.scale
    attn = attn.softmax(dim=-1)
    x = (attn @ v).transpose(1, 2).reshape(b, n, c)
    return self.proj(x), attn


class Mlp(nn.Module):
  def __init__(self, dim, hidden):
    super().__init__()
    self.fc1 = nn.Linear(dim, hidden)
    self.act = nn.GELU()
    self.fc2 = nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
  def __init__(self, dim, heads, mlp_ratio=4.0):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim, eps=1e-6)
    self.attn = Attention(dim, heads)
    self.norm2 = nn.LayerNorm(dim, eps=1e-6)
    self.mlp = Mlp(dim, int(dim * mlp_ratio))

  def forward(self, x):
    y, attn = self.attn(self.norm1(x))
    x = x + y
    x = x + self.mlp(self.norm2(x))
    return x, attn


def sincos_table(dim, h, w, cls_token=True):
  """MAE's fixed table: first half of channels from the column index, second
  half from the row index; each half [sin, cos] with omega = 1/10000^(i/(dim/4))."""
  def one_d(d, pos):
    omega = np.arange(d // 2, dtype=np.float64) / (d / 2.0)
    omega = 1.0 / 10000 ** omega
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)

  gw, gh = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
  emb = np.concatenate([one_d(dim // 2, gw), one_d(dim // 2, gh)], axis=1)
  if cls_token:
    emb = np.concatenate([np.zeros([1, dim]), emb], axis=0)
  return torch.from_numpy(emb).float().unsqueeze(0)


class VisionTransformer(nn.Module):
  """DINO-style ViT (learned pos_embed, bicubic interpolation), or MAE encoder
  (sincos=True: fixed table, recomputed for other grids)."""

  def __init__(self, patch=16, dim=384, depth=12, heads=6, mlp_ratio=4.0, img_size=224,
               sincos=False):
    super().__init__()
    self.patch, self.dim, self.sincos = patch, dim, sincos
    side = img_size // patch
    self.side = side
    self.patch_embed = PatchEmbed(patch, 3, dim)
    self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
    if sincos:
      self.pos_embed = nn.Parameter(sincos_table(dim, side, side), requires_grad=False)
    else:
      self.pos_embed = nn.Parameter(torch.randn(1, side * side + 1, dim) * 0.02)
    self.blocks = nn.ModuleList([Block(dim, heads, mlp_ratio) for _ in range(depth)])
    self.norm = nn.LayerNorm(dim, eps=1e-6)

  def pos_for(self, h0, w0):
    if self.sincos:
      if (h0, w0) == (self.side, self.side):
        return self.pos_embed
      return sincos_table(self.dim, h0, w0).to(self.pos_embed.device)
    n = self.pos_embed.shape[1] - 1
    if h0 * w0 == n and h0 == w0:
      return self.pos_embed
    cls_pos = self.pos_embed[:, :1]
    grid = self.pos_embed[:, 1:]
    s = int(math.sqrt(n))
    grid = F.interpolate(grid.reshape(1, s, s, self.dim).permute(0, 3, 1, 2),
                         scale_factor=((h0 + 0.1) / math.sqrt(n), (w0 + 0.1) / math.sqrt(n)),
                         mode="bicubic")
    assert grid.shape[-2:] == (h0, w0), grid.shape
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, self.dim)
    return torch.cat([cls_pos, grid], dim=1)

  def forward(self, x, ids_keep=None):
    """x [B,3,H,W] -> (final tokens, per-block tokens, last attention)."""
    b, _, h, w = x.shape
    pos = self.pos_for(h // self.patch, w // self.patch)
    t = self.patch_embed(x) + pos[:, 1:]
    if ids_keep is not None:
      t = torch.gather(t, 1, ids_keep.unsqueeze(-1).repeat(1, 1, t.shape[-1]))
    cls = (self.cls_token + pos[:, :1]).expand(b, -1, -1)
    t = torch.cat([cls, t], dim=1)
    blocks = []
    attn = None
    for blk in self.blocks:
      t, attn = blk(t)
      blocks.append(t)
    return self.norm(t), blocks, attn


class MaskedAutoencoder(nn.Module):
  """MAE with MAE's flat parameter names (encoder keys at the top level)."""

  def __init__(self, patch=16, dim=1024, depth=24, heads=16, img_size=224, decoder_dim=512,
               decoder_depth=8, decoder_heads=16, mlp_ratio=4.0):
    super().__init__()
    enc = VisionTransformer(patch, dim, depth, heads, mlp_ratio, img_size, sincos=True)
    self.patch, self.side = patch, img_size // patch
    self.decoder_dim = decoder_dim
    self.patch_embed, self.cls_token, self.pos_embed = enc.patch_embed, enc.cls_token, enc.pos_embed
    self.blocks, self.norm = enc.blocks, enc.norm
    self._enc = [enc]  # not a registered submodule: keeps the flat key names
    self.decoder_embed = nn.Linear(dim, decoder_dim, bias=True)
    self.mask_token = nn.Parameter(torch.randn(1, 1, decoder_dim) * 0.02)
    self.decoder_pos_embed = nn.Parameter(sincos_table(decoder_dim, self.side, self.side),
                                          requires_grad=False)
    self.decoder_blocks = nn.ModuleList(
        [Block(decoder_dim, decoder_heads, mlp_ratio) for _ in range(decoder_depth)])
    self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
    self.decoder_pred = nn.Linear(decoder_dim, patch ** 2 * 3, bias=True)

  def forward_encoder(self, x, ids_keep):
    return self._enc[0](x, ids_keep)

  def forward_decoder(self, latent, ids_restore, grid=None):
    x = self.decoder_embed(latent)
    n = ids_restore.shape[1]
    mask_tokens = self.mask_token.repeat(x.shape[0], n + 1 - x.shape[1], 1)
    x_ = torch.cat([x[:, 1:], mask_tokens], dim=1)
    x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
    x = torch.cat([x[:, :1], x_], dim=1)
    if grid is None or tuple(grid) == (self.side, self.side):
      pos = self.decoder_pos_embed
    else:
      pos = sincos_table(self.decoder_dim, *grid)
    x = x + pos
    for blk in self.decoder_blocks:
      x, _ = blk(x)
    return self.decoder_pred(self.decoder_norm(x))[:, 1:]


class DINOHead(nn.Module):
  def __init__(self, in_dim, out_dim, nlayers=3, hidden_dim=2048, bottleneck_dim=256,
               norm_last_layer=True):
    super().__init__()
    if nlayers == 1:
      self.mlp = nn.Linear(in_dim, bottleneck_dim)
    else:
      layers = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
      for _ in range(nlayers - 2):
        layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
      layers.append(nn.Linear(hidden_dim, bottleneck_dim))
      self.mlp = nn.Sequential(*layers)
    with warnings.catch_warnings():  # DINO's (older) weight_norm, for its key names
      warnings.simplefilter("ignore", FutureWarning)
      self.last_layer = nn.utils.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
    if norm_last_layer:
      self.last_layer.weight_g.data.fill_(1)

  def forward(self, x):
    x = F.normalize(self.mlp(x), dim=-1, p=2)
    return self.last_layer(x)


def random_masking_ids(batch, n, keep, seed=0):
  """MAE's shuffle: argsort of uniform noise -> (ids_keep [B,K], ids_restore [B,N], mask)."""
  g = torch.Generator().manual_seed(seed)
  noise = torch.rand(batch, n, generator=g)
  ids_shuffle = torch.argsort(noise, dim=1)
  ids_restore = torch.argsort(ids_shuffle, dim=1)
  mask = torch.ones(batch, n)
  mask[:, :keep] = 0
  mask = torch.gather(mask, 1, ids_restore)
  return ids_shuffle[:, :keep], ids_restore, mask
