"""PyTorch twin of EAR's recovery U-Net (maskjax/methods/ear/unet.py), NCHW.

Written in the style of the author's RIAD port (YeongHyeon/RIAD-PyTorch,
`neuralnet/aesc_l2.py`): the network is a flat list of conv -> BN -> LeakyReLU
layers, each encoder layer flagged "push its output as a skip", each decoder
layer flagged "concatenate the next skip after me" (decoder tensor first).
Layouts (`skips`):

  "before_stride": encoder block = conv, conv [skip], conv stride 2; decoder
    block = (nearest x2, conv) [concat], conv(2w -> w), conv; widths of the
    decoder blocks = the skip widths in reverse (w5, w4, w3, w2, w1).
  "after_stride": encoder block = conv, conv, conv stride 2 [skip, except the
    last block]; decoder block = (nearest x2, conv), conv, conv [concat,
    except the last block]; widths (w4, w3, w2, w1, w1).

Output: conv k x k -> tanh (as maskjax's module; the author's port ends with
a clamp to [0, 1] instead, see /tmp/recipes/ear.md).

`copy_from_maskjax` moves every weight and BatchNorm statistic from the Flax
NNX module (conv kernels HWIO -> OIHW).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class Layer(nn.Module):
  def __init__(self, cin, cout, k, stride, slope, upsample=False):
    super().__init__()
    self.upsample = upsample
    self.conv = nn.Conv2d(cin, cout, k, stride, padding=k // 2)
    self.bn = nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)
    self.slope = slope

  def forward(self, x):
    if self.upsample:
      x = F.interpolate(x, scale_factor=2, mode="nearest")
    return F.leaky_relu(self.bn(self.conv(x)), self.slope)


class EarUNetTwin(nn.Module):
  def __init__(self, widths, kernel_size=3, in_channels=3, out_channels=3, negative_slope=0.01,
               skips="before_stride"):
    super().__init__()
    k, s = kernel_size, negative_slope
    self.skips = skips
    enc, self.skip_enc = [], []
    cin = in_channels
    for i, w in enumerate(widths):
      enc += [Layer(cin, w, k, 1, s), Layer(w, w, k, 1, s), Layer(w, w, k, 2, s)]
      if skips == "before_stride":
        self.skip_enc += [False, True, False]
      else:
        self.skip_enc += [False, False, i < len(widths) - 1]
      cin = w
    dec, self.cat_dec = [], []
    cin = widths[-1]
    if skips == "before_stride":
      for w in widths[::-1]:
        dec += [Layer(cin, w, k, 1, s, upsample=True), Layer(2 * w, w, k, 1, s),
                Layer(w, w, k, 1, s)]
        self.cat_dec += [True, False, False]
        cin = w
    else:
      dec_w = (widths[3], widths[2], widths[1], widths[0], widths[0])
      skip_w = (widths[3], widths[2], widths[1], widths[0], 0)
      for j, (w, sw) in enumerate(zip(dec_w, skip_w)):
        dec += [Layer(cin, w, k, 1, s, upsample=True), Layer(w, w, k, 1, s), Layer(w, w, k, 1, s)]
        self.cat_dec += [False, False, j < 4]
        cin = w + sw
    self.encoder = nn.ModuleList(enc)
    self.decoder = nn.ModuleList(dec)
    self.out = nn.Conv2d(cin, out_channels, k, 1, padding=k // 2)

  def forward(self, x):
    stack = []
    for layer, push in zip(self.encoder, self.skip_enc):
      x = layer(x)
      if push:
        stack.append(x)
    for layer, cat in zip(self.decoder, self.cat_dec):
      x = layer(x)
      if cat:
        x = torch.cat([x, stack.pop()], 1)
    assert not stack, "unused skips"
    return torch.tanh(self.out(x))


def copy_from_maskjax(twin: EarUNetTwin, jmodule) -> EarUNetTwin:
  """maskjax EarUNet (encoder[i][k], decoder[j][k], out) -> flat twin layers 3 i + k."""
  def put(tparam, value, transpose=None):
    v = np.asarray(value, np.float32)
    if transpose is not None:
      v = v.transpose(transpose)
    assert tuple(tparam.shape) == v.shape, (tuple(tparam.shape), v.shape)
    with torch.no_grad():
      tparam.copy_(torch.from_numpy(np.array(v, copy=True)))

  def layer(tl, jl):
    put(tl.conv.weight, jl.conv.kernel.value, (3, 2, 0, 1))
    put(tl.conv.bias, jl.conv.bias.value)
    put(tl.bn.weight, jl.bn.scale.value)
    put(tl.bn.bias, jl.bn.bias.value)
    put(tl.bn.running_mean, jl.bn.mean.value)
    put(tl.bn.running_var, jl.bn.var.value)

  for part, tlist in (("encoder", twin.encoder), ("decoder", twin.decoder)):
    blocks = getattr(jmodule, part)
    for i, block in enumerate(blocks):
      for k, jl in enumerate(block):
        layer(tlist[3 * i + k], jl)
  put(twin.out.weight, jmodule.out.kernel.value, (3, 2, 0, 1))
  put(twin.out.bias, jmodule.out.bias.value)
  return twin
