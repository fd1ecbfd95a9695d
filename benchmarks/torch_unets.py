"""PyTorch twins of maskjax's U-Nets (RIAD, SSM with mask attention, EAR), NCHW,
with the same module tree as the Flax NNX models so that `copy_from_maskjax`
moves every weight by name (conv kernels HWIO -> OIHW, transposed-conv kernels
flipped to PyTorch's (in, out, kh, kw), BatchNorm scale/bias/mean/var).

Written from maskjax/models/unet.py and maskjax/methods/ear/unet.py (same shapes, paddings,
BatchNorm eps 1e-5 / momentum 0.1, nearest resizes with half-pixel centres =
PyTorch "nearest-exact"). Used by the benchmarks only; torch is a dev/bench
dependency.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class ConvBNReLU(nn.Module):
  def __init__(self, cin, cout, kernel=3, stride=1):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=1)
    self.bn = nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)))


class Up(nn.Module):
  """block "conv_bn_relu": up-conv -> BN -> ReLU; "conv": the bare up-conv."""

  def __init__(self, cin, cout, mode, block="conv_bn_relu", kernel=3):
    super().__init__()
    self.mode, self.block = mode, block
    if mode == "transpose":
      self.conv = nn.ConvTranspose2d(cin, cout, 4, 2, padding=1)
    else:
      self.conv = nn.Conv2d(cin, cout, kernel, 1, padding=kernel // 2)
    if block == "conv_bn_relu":
      self.bn = nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)

  def forward(self, x):
    if self.mode == "nearest":
      x = F.interpolate(x, scale_factor=2, mode="nearest")
    x = self.conv(x)
    return x if self.block == "conv" else F.relu(self.bn(x))


def resize_mask(mask, h, w, mode="half_pixel"):
  """[B,1,H,W] -> [B,1,h,w] nearest: "half_pixel" = PyTorch "nearest-exact",
  "floor" = PyTorch "nearest" (= maskjax resize_mask's two modes)."""
  if mask.shape[-2:] == (h, w):
    return mask
  return F.interpolate(mask, size=(h, w), mode="nearest-exact" if mode == "half_pixel"
                       else "nearest")


class MaskAttention(nn.Module):
  def __init__(self, ch, resize="half_pixel"):
    super().__init__()
    self.resize = resize
    self.bn_in = nn.BatchNorm2d(ch, eps=1e-5, momentum=0.1)
    self.conv1 = nn.Conv2d(ch + 1, ch, 3, 1, padding=1)
    self.bn_mid = nn.BatchNorm2d(ch, eps=1e-5, momentum=0.1)
    self.conv2 = nn.Conv2d(ch, ch, 3, 1, padding=1)

  def forward(self, x, mask):
    m = resize_mask(mask, *x.shape[-2:], self.resize)
    y = self.conv1(torch.cat([self.bn_in(x), m], 1))
    y = self.conv2(F.relu(self.bn_mid(y)))
    return x + y * m


class UNetBody(nn.Module):
  def __init__(self, widths, cin, cout, upsample, mam, up_block="conv_bn_relu", up_kernel=3,
               mask_resize="half_pixel"):
    super().__init__()
    self.widths = tuple(widths)
    self.enc = nn.ModuleList([nn.ModuleList([ConvBNReLU(cin, widths[0]),
                                             ConvBNReLU(widths[0], widths[0])])])
    for l in range(1, len(widths)):
      self.enc.append(nn.ModuleList([ConvBNReLU(widths[l - 1], widths[l], 4, 2),
                                     ConvBNReLU(widths[l], widths[l])]))
    self.ups, self.dec = nn.ModuleList(), nn.ModuleList()
    cur = widths[-1]
    for l in range(len(widths) - 2, -1, -1):
      self.ups.append(Up(cur, widths[l], upsample, up_block, up_kernel))
      self.dec.append(nn.ModuleList([ConvBNReLU(2 * widths[l], widths[l]),
                                     ConvBNReLU(widths[l], widths[l])]))
      cur = widths[l]
    self.use_mam = mam
    if mam:
      self.mam = nn.ModuleList([MaskAttention(widths[-1], mask_resize)] + [
          MaskAttention(widths[l], mask_resize) for l in range(len(widths) - 2, -1, -1)])
    self.out = nn.Conv2d(widths[0], cout, 3, 1, padding=1)

  def forward(self, x, mask=None):
    skips = []
    for level in self.enc:
      for layer in level:
        x = layer(x)
      skips.append(x)
    x = skips.pop()
    if self.use_mam:
      x = self.mam[0](x, mask)
    for i, (up, dec) in enumerate(zip(self.ups, self.dec)):
      x = torch.cat([up(x), skips.pop()], 1)
      for layer in dec:
        x = layer(x)
      if self.use_mam:
        x = self.mam[i + 1](x, mask)
    return torch.tanh(self.out(x))


class RiadUNet(nn.Module):
  def __init__(self, widths=(64, 128, 256, 512, 512), upsample="transpose",
               up_block="conv_bn_relu"):
    super().__init__()
    self.body = UNetBody(widths, 3, 3, upsample, False, up_block)

  def forward(self, x):
    return self.body(x)


class SsmUNet(nn.Module):
  """forward(image [B,3,H,W], mask [B,H,W] 1 = visible) -> (image [B,3,H,W], mask [B,H,W])."""

  def __init__(self, widths=(64, 128, 256, 512, 512), use_mam=True, upsample="nearest",
               up_block="conv_bn_relu", up_kernel=3, mask_resize="half_pixel",
               encoder_input="image_mask"):
    super().__init__()
    self.encoder_input = encoder_input
    cin = 4 if encoder_input == "image_mask" else 3
    self.body = UNetBody(widths, cin, 4, upsample, use_mam, up_block, up_kernel, mask_resize)

  def forward(self, image, mask):
    m = mask.to(image.dtype)[:, None]
    x = image * m
    if self.encoder_input == "image_mask":
      x = torch.cat([x, m], 1)
    out = self.body(x, m)
    return out[:, :3], out[:, 3]


class ConvBNAct(nn.Module):
  def __init__(self, cin, cout, k, stride, slope):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, k, stride, padding=k // 2)
    self.bn = nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)
    self.slope = slope

  def forward(self, x):
    return F.leaky_relu(self.bn(self.conv(x)), self.slope)


class EarUNet(nn.Module):
  def __init__(self, widths=(64, 128, 256, 512, 512), kernel_size=3, in_channels=3,
               out_channels=3, negative_slope=0.01):
    super().__init__()
    k, s = kernel_size, negative_slope
    self.encoder = nn.ModuleList()
    cin = in_channels
    for w in widths:
      self.encoder.append(nn.ModuleList([ConvBNAct(cin, w, k, 1, s), ConvBNAct(w, w, k, 1, s),
                                         ConvBNAct(w, w, k, 2, s)]))
      cin = w
    dec_w = (widths[3], widths[2], widths[1], widths[0], widths[0])
    skip_w = (widths[3], widths[2], widths[1], widths[0], 0)
    self.decoder = nn.ModuleList()
    cin = widths[4]
    for w, sw in zip(dec_w, skip_w):
      self.decoder.append(nn.ModuleList([ConvBNAct(cin, w, k, 1, s), ConvBNAct(w, w, k, 1, s),
                                         ConvBNAct(w, w, k, 1, s)]))
      cin = w + sw
    self.out = nn.Conv2d(cin, out_channels, k, 1, padding=k // 2)

  def forward(self, x):
    skips = []
    for block in self.encoder:
      for layer in block:
        x = layer(x)
      skips.append(x)
    for j, block in enumerate(self.decoder):
      x = F.interpolate(x, scale_factor=2, mode="nearest")
      for layer in block:
        x = layer(x)
      if j < 4:
        x = torch.cat([x, skips[3 - j]], 1)
    return torch.tanh(self.out(x))


def _flat_nnx(module) -> dict[str, np.ndarray]:
  import jax
  from flax import nnx
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(nnx.state(module).to_pure_dict())[0]:
    out[".".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)] = np.asarray(leaf)
  return out


def copy_from_maskjax(tmodule: nn.Module, jmodule) -> nn.Module:
  """Copies every weight and BatchNorm statistic of the NNX U-Net into its twin."""
  flat = _flat_nnx(jmodule)
  params = dict(tmodule.named_parameters())
  buffers = dict(tmodule.named_buffers())
  done = set()
  for key, v in flat.items():
    prefix, leaf = key.rsplit(".", 1)
    tmod = tmodule.get_submodule(prefix)
    if leaf == "kernel":
      if isinstance(tmod, nn.ConvTranspose2d):
        t = v[::-1, ::-1].transpose(2, 3, 0, 1)  # flipped, (in, out, kh, kw)
      else:
        t = v.transpose(3, 2, 0, 1)               # HWIO -> OIHW
      name = prefix + ".weight"
    elif leaf == "bias":
      name, t = prefix + ".bias", v
    elif leaf == "scale":
      name, t = prefix + ".weight", v
    elif leaf == "mean":
      name, t = prefix + ".running_mean", v
    elif leaf == "var":
      name, t = prefix + ".running_var", v
    else:
      raise KeyError(f"unmapped maskjax weight {key}")
    target = params.get(name, buffers.get(name))
    if target is None or tuple(target.shape) != tuple(t.shape):
      raise KeyError(f"{key} -> {name}: {None if target is None else tuple(target.shape)} "
                     f"vs {t.shape}")
    with torch.no_grad():
      target.copy_(torch.from_numpy(np.array(t, dtype=np.float32, copy=True)))
    done.add(name)
  left = [n for n in params if n not in done]
  if left:
    raise KeyError(f"twin parameters without a maskjax weight: {left[:5]}")
  return tmodule
