"""EAR's recovery U-Net (Park et al. 2023, section 4.1), Flax NNX.

Layout NHWC. Input: the obfuscated image normalised with mean = std = 0.5
(values in [-1, 1], `maskjax.ops.normalize.half`); output through tanh, i.e. in
the same [-1, 1] space (the method maps it back to [0, 1] with
`normalize.half_inverse` before losses and scores) [decision: the paper does
not name the output activation; tanh as in the RIAD U-Net it says it follows].

Structure (paper: "five convolutional blocks for the encoder and decoder ...
the i-th layer in the encoder is concatenated with the (5-i)-th layer in the
decoder"), with widths w = (w1, ..., w5) and kernel size k (3 or 5, Table 2):

  encoder block i (i = 1..5): [conv k x k -> BN -> LeakyReLU] x 3, the third
    conv with stride 2; output e_i at H / 2^i, w_i channels.
  decoder block j (j = 1..5): nearest x2 upsample, then [conv -> BN ->
    LeakyReLU] x 3 (upsampling in the first layer of the block); widths
    (w4, w3, w2, w1, w1); output d_j at H / 2^(5-j).
    The input of block j + 1 is concat(d_j, e_(5-j)) for j = 1..4, i.e.
    d1 ++ e4, d2 ++ e3, d3 ++ e2, d4 ++ e1 (channel concat, decoder first).
  output: conv k x k (d5 -> out_channels), tanh.

`skips` selects where the encoder's skip tensors are taken:
  "after_stride" (the layout above; the demo's): e_i after the stride-2 conv,
    concatenated after whole decoder blocks; no full-resolution skip.
  "before_stride" (the author's RIAD port, YeongHyeon/RIAD-PyTorch, that the
    paper's U-Net description follows): s_i = the output of the second conv of
    encoder block i, before its stride-2 conv (H / 2^(i-1), w_i channels, so
    s_1 is at full resolution). Decoder block j (j = 1..5) has width w_(6-j):
    up x2 -> conv (-> w_(6-j)) -> BN -> LeakyReLU, then concat(x, s_(6-j))
    (decoder first), then two [conv -> BN -> LeakyReLU] (the first takes
    2 w_(6-j) channels); d_5 is at full resolution with w_1 channels.

Convs: zero padding k // 2 on each side; stride 2 halves even sizes, so H and W
must be multiples of 32. BatchNorm with PyTorch defaults (eps 1e-5, running
averages with weight 0.1 = flax momentum 0.9); `train=True` uses and updates
batch statistics, `train=False` the running averages. LeakyReLU negative slope
0.01 (PyTorch default) [decision: not given in the paper].
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from maskjax.models import init_utils

# Flax's default kernel init with chunked random bits (same values, faster jit).
_KINIT = init_utils.lecun_normal()
SKIPS = ("before_stride", "after_stride")


class ConvBNAct(nnx.Module):
  """conv k x k (zero padding k//2, given stride) -> BatchNorm -> LeakyReLU."""

  def __init__(self, cin: int, cout: int, kernel_size: int, stride: int, negative_slope: float,
               *, rngs: nnx.Rngs):
    p = kernel_size // 2
    self.conv = nnx.Conv(cin, cout, (kernel_size, kernel_size), strides=(stride, stride),
                         padding=((p, p), (p, p)), kernel_init=_KINIT, rngs=rngs)
    self.bn = nnx.BatchNorm(cout, momentum=0.9, epsilon=1e-5, rngs=rngs)
    self.negative_slope = negative_slope

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = self.bn(self.conv(x), use_running_average=not train)
    return jax.nn.leaky_relu(x, self.negative_slope)


class EarUNet(nnx.Module):
  """See the module docstring. `__call__(x [B,H,W,in], *, train) -> [B,H,W,out]` in [-1, 1]."""

  def __init__(self, widths: Sequence[int] = (64, 128, 256, 512, 512), kernel_size: int = 3,
               in_channels: int = 3, out_channels: int = 3, negative_slope: float = 0.01,
               skips: str = "after_stride", *, rngs: nnx.Rngs):
    if skips not in SKIPS:
      raise ValueError(f"EarUNet: skips must be one of {SKIPS}, got {skips!r}")
    self.skips = skips
    widths = tuple(int(w) for w in widths)
    if len(widths) != 5:
      raise ValueError(f"EarUNet: widths must have 5 entries (one per block), got {widths}")
    if kernel_size not in (1, 3, 5, 7):
      raise ValueError(f"EarUNet: kernel_size must be odd (3 or 5 in the paper), got {kernel_size}")
    self.widths = widths
    k, s = kernel_size, negative_slope
    enc = []
    cin = in_channels
    for w in widths:
      enc.append(nnx.List([ConvBNAct(cin, w, k, 1, s, rngs=rngs),
                           ConvBNAct(w, w, k, 1, s, rngs=rngs),
                           ConvBNAct(w, w, k, 2, s, rngs=rngs)]))
      cin = w
    self.encoder = nnx.List(enc)
    dec = []
    cin = widths[4]
    if skips == "after_stride":
      dec_widths = (widths[3], widths[2], widths[1], widths[0], widths[0])
      skip_widths = (widths[3], widths[2], widths[1], widths[0], 0)
      for w, sw in zip(dec_widths, skip_widths):
        dec.append(nnx.List([ConvBNAct(cin, w, k, 1, s, rngs=rngs),
                             ConvBNAct(w, w, k, 1, s, rngs=rngs),
                             ConvBNAct(w, w, k, 1, s, rngs=rngs)]))
        cin = w + sw
    else:
      for w in widths[::-1]:  # block j has the width of its skip s_(6-j)
        dec.append(nnx.List([ConvBNAct(cin, w, k, 1, s, rngs=rngs),
                             ConvBNAct(2 * w, w, k, 1, s, rngs=rngs),
                             ConvBNAct(w, w, k, 1, s, rngs=rngs)]))
        cin = w
    self.decoder = nnx.List(dec)
    p = k // 2
    self.out = nnx.Conv(cin, out_channels, (k, k), padding=((p, p), (p, p)), kernel_init=_KINIT,
                        rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    h, w = x.shape[1:3]
    if h % 32 or w % 32:
      raise ValueError(f"EarUNet: image size {h}x{w} must be a multiple of 32 (5 stride-2 blocks)")
    if self.skips == "before_stride":
      return self._forward_before_stride(x, train)
    skips = []
    for block in self.encoder:
      for layer in block:
        x = layer(x, train=train)
      skips.append(x)
    # skips: e1..e5; the decoder consumes e4, e3, e2, e1 after blocks 1..4.
    for j, block in enumerate(self.decoder):
      b, hh, ww, c = x.shape
      x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # nearest x2
      for layer in block:
        x = layer(x, train=train)
      if j < 4:
        x = jnp.concatenate([x, skips[3 - j]], axis=-1)
    return jnp.tanh(self.out(x))

  def _forward_before_stride(self, x: jax.Array, train: bool) -> jax.Array:
    skips = []
    for block in self.encoder:
      x = block[1](block[0](x, train=train), train=train)
      skips.append(x)                      # s_i, before the stride-2 conv
      x = block[2](x, train=train)
    for j, block in enumerate(self.decoder):
      x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # nearest x2
      x = block[0](x, train=train)
      x = jnp.concatenate([x, skips[4 - j]], axis=-1)
      x = block[2](block[1](x, train=train), train=train)
    return jnp.tanh(self.out(x))
