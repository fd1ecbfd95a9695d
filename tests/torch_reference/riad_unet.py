"""PyTorch twins of the RIAD and SSM U-Nets as the public code builds them, NCHW.

Written in the style of the public code (module names `downN`, `upN.upconv`,
`conv1/bn1`, `conv2/bn2`, `maskN`, `conv_final`) with the widths made a
parameter (the originals hard-code 64-128-256-512-512):

  RIAD (taikiinoue45/RIAD `riad/models/unet.py`; plutoyuxie's port is the
  same net): down1 = conv3x3 (cin -> w0) BN ReLU, conv3x3 BN ReLU; downN =
  conv4x4 s2 p1 BN ReLU, conv3x3 BN ReLU. upN: `upconv` = a bare
  ConvTranspose2d(4, 2, 1) -- no BN, no ReLU --, cat(from_up, from_down),
  conv3x3 (2w -> w) BN ReLU, conv3x3 BN ReLU. conv_final = conv3x3 -> tanh.

  SSM (MediaBrain-SJTU/SSM `models/unet_multi.py`, `UNet(up_mode='upsample')`):
  the same encoder on the 3 image channels only (`img = x[:, :3]`; the mask
  channel `x[:, -1]` goes to the mask blocks), upN = F.interpolate(x2,
  'nearest') then a bare conv1x1 (padding 0), cat, two conv3x3 BN ReLU.
  maskN (UNetMaskBlock) after the bottleneck and after every up block:
  m = F.interpolate(mask, size, mode='nearest'); y = relu(bn2(conv2(cat(bn1(x),
  m)))); out = x + m * conv3(y). conv_final -> 4 channels, tanh, split 3 + 1.

BatchNorm2d defaults (eps 1e-5, momentum 0.1). `copy_from_maskjax` moves every
weight and BatchNorm statistic from maskjax's RiadUNet / SsmUNet (conv kernels
HWIO -> OIHW; flax ConvTranspose kernels, applied without flipping, are
flipped spatially into PyTorch's (in, out, kh, kw)).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def conv(cin, cout, kernel_size=3, stride=1, padding=1):
  return nn.Conv2d(cin, cout, kernel_size=kernel_size, stride=stride, padding=padding)


class UNetDownBlock(nn.Module):
  def __init__(self, cin, cout, kernel_size, stride):
    super().__init__()
    self.conv1 = conv(cin, cout, kernel_size=kernel_size, stride=stride)
    self.bn1 = nn.BatchNorm2d(cout)
    self.conv2 = conv(cout, cout)
    self.bn2 = nn.BatchNorm2d(cout)

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    return F.relu(self.bn2(self.conv2(x)))


class UNetUpBlock(nn.Module):
  def __init__(self, cin, cout, up_mode):
    super().__init__()
    self.up_mode = up_mode
    if up_mode == "transpose":
      self.upconv = nn.ConvTranspose2d(cin, cout, kernel_size=4, stride=2, padding=1)
    else:
      self.upconv = conv(cin, cout, kernel_size=1, stride=1, padding=0)
    self.conv1 = conv(2 * cout, cout)
    self.bn1 = nn.BatchNorm2d(cout)
    self.conv2 = conv(cout, cout)
    self.bn2 = nn.BatchNorm2d(cout)

  def forward(self, from_up, from_down):
    if self.up_mode != "transpose":
      from_up = F.interpolate(from_up, scale_factor=2, mode="nearest")
    from_up = self.upconv(from_up)
    x = torch.cat((from_up, from_down), 1)
    x = F.relu(self.bn1(self.conv1(x)))
    return F.relu(self.bn2(self.conv2(x)))


class UNetMaskBlock(nn.Module):
  def __init__(self, ch):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(ch)
    self.conv2 = conv(ch + 1, ch)
    self.bn2 = nn.BatchNorm2d(ch)
    self.conv3 = conv(ch, ch)

  def forward(self, from_up, mask):
    _, _, h, w = from_up.shape
    mask = F.interpolate(mask, size=[h, w], mode="nearest")
    x = torch.cat((self.bn1(from_up), mask), 1)
    x = F.relu(self.bn2(self.conv2(x)))
    return mask * self.conv3(x) + from_up


class UNetTwin(nn.Module):
  """ssm=False: RIAD's net (up_mode "transpose"); ssm=True: SSM's official net
  (up_mode "upsample", mask blocks, 4-channel output split 3 + 1)."""

  def __init__(self, widths, ssm=False):
    super().__init__()
    widths = tuple(widths)
    self.ssm = ssm
    self.n = len(widths)
    self.down1 = UNetDownBlock(3, widths[0], 3, 1)
    for i in range(1, self.n):
      setattr(self, f"down{i + 1}", UNetDownBlock(widths[i - 1], widths[i], 4, 2))
    cur = widths[-1]
    for j, i in enumerate(range(self.n - 2, -1, -1)):
      setattr(self, f"up{j + 1}",
              UNetUpBlock(cur, widths[i], "upsample" if ssm else "transpose"))
      cur = widths[i]
    if ssm:
      self.mask1 = UNetMaskBlock(widths[-1])
      for j, i in enumerate(range(self.n - 2, -1, -1)):
        setattr(self, f"mask{j + 2}", UNetMaskBlock(widths[i]))
    self.conv_final = nn.Sequential(conv(widths[0], 4 if ssm else 3, 3, 1, 1), nn.Tanh())

  def forward(self, x):
    if self.ssm:
      mask = x[:, -1, :, :].unsqueeze(1)
      x = x[:, :3, :, :]
    skips = []
    for i in range(self.n):
      x = getattr(self, f"down{i + 1}")(x)
      skips.append(x)
    x = skips.pop()
    if self.ssm:
      x = self.mask1(x, mask)
    for j in range(self.n - 1):
      x = getattr(self, f"up{j + 1}")(x, skips.pop())
      if self.ssm:
        x = getattr(self, f"mask{j + 2}")(x, mask)
    x = self.conv_final(x)
    if self.ssm:
      return x[:, :3], x[:, 3:]
    return x


def _put(tparam, value, transpose=None):
  v = np.asarray(value, np.float32)
  if transpose is not None:
    v = v.transpose(transpose)
  assert tuple(tparam.shape) == v.shape, (tuple(tparam.shape), v.shape)
  with torch.no_grad():
    tparam.copy_(torch.from_numpy(np.array(v, copy=True)))


def _conv(tconv, jconv):
  _put(tconv.weight, jconv.kernel.value, (3, 2, 0, 1))
  _put(tconv.bias, jconv.bias.value)


def _bn(tbn, jbn):
  _put(tbn.weight, jbn.scale.value)
  _put(tbn.bias, jbn.bias.value)
  _put(tbn.running_mean, jbn.mean.value)
  _put(tbn.running_var, jbn.var.value)


def copy_from_maskjax(twin: UNetTwin, jmodule) -> UNetTwin:
  """maskjax RiadUNet / SsmUNet (reference layout: up_block="conv"; SSM with
  encoder_input="image", up_kernel=1) -> the twin, every weight and statistic."""
  body = jmodule.body
  for i, level in enumerate(body.enc):
    down = getattr(twin, f"down{i + 1}")
    _conv(down.conv1, level[0].conv)
    _bn(down.bn1, level[0].bn)
    _conv(down.conv2, level[1].conv)
    _bn(down.bn2, level[1].bn)
  for j, (up, dec) in enumerate(zip(body.ups, body.dec)):
    t = getattr(twin, f"up{j + 1}")
    assert not hasattr(up, "bn"), "the public code has no BN after the up-conv (up_block='conv')"
    k = np.asarray(up.conv.kernel.value)
    if t.up_mode == "transpose":   # flax (kh, kw, in, out), unflipped -> torch (in, out, kh, kw)
      _put(t.upconv.weight, k[::-1, ::-1], (2, 3, 0, 1))
    else:
      _put(t.upconv.weight, k, (3, 2, 0, 1))
    _put(t.upconv.bias, up.conv.bias.value)
    _conv(t.conv1, dec[0].conv)
    _bn(t.bn1, dec[0].bn)
    _conv(t.conv2, dec[1].conv)
    _bn(t.bn2, dec[1].bn)
  if twin.ssm:
    for j, mam in enumerate(body.mam):
      t = getattr(twin, f"mask{j + 1}")
      _bn(t.bn1, mam.bn_in)
      _conv(t.conv2, mam.conv1)
      _bn(t.bn2, mam.bn_mid)
      _conv(t.conv3, mam.conv2)
  _conv(twin.conv_final[0], body.out)
  return twin
