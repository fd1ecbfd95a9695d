"""Inpainting U-Nets (Flax NNX): RIAD's U-Net and SSM's conditional U-Net.

Layout NHWC, float inputs. Both nets expect images normalised with mean =
std = 0.5 (values in [-1, 1], `maskjax.ops.normalize.half`) unless the method
says otherwise, and end with a tanh, i.e. outputs live in the same [-1, 1]
space.

Convolutions match the PyTorch RIAD ports' shapes and paddings:
  conv3x3: stride 1, zero padding 1 (same size);
  conv4x4 stride 2, zero padding 1 (halves H and W; H, W must be divisible by
    2 ** (len(widths) - 1));
  ConvTranspose 4x4 stride 2 with PyTorch `padding=1` semantics (doubles H, W);
  every conv is followed by BatchNorm (PyTorch defaults: eps 1e-5, running
  averages updated with weight 0.1 = flax momentum 0.9) and ReLU, except the
  output conv (tanh) and, with `up_block="conv"`, the decoder's up-convs.

Switches that follow the public PyTorch code (docs/RECIPES.md, RIAD / SSM):
  up_block: "conv_bn_relu" (default, the previous layout): up-conv -> BN ->
    ReLU; "conv": the up-conv alone, as both RIAD ports (`upconv2x2` is a bare
    ConvTranspose2d or upsample + conv) and SSM's official code: the decoder
    level's first BN + ReLU come after the concatenation.
  up_kernel (nearest upsampling only): 3 (default: conv3x3, zero padding 1)
    or 1 (SSM's official code: conv1x1, no padding).
  mask_resize (SSM's mask attention): "half_pixel" (default,
    `jax.image.resize` nearest: index floor((i + 0.5) * H / h)) or "floor"
    (PyTorch `F.interpolate(mode="nearest")`, SSM's official code: index
    floor(i * H / h), the top-left pixel of each block for integer factors).
  encoder_input (SSM): "image_mask" (default: 4 input channels, I * M and M)
    or "image" (the paper's Fig. 3 and the official code: the encoder sees
    I * M only; the mask reaches the net through the mask attention modules).

BatchNorm mode is chosen per call: `train=True` normalises with the batch
statistics and updates the running averages; `train=False` uses the running
averages (per-image results then do not depend on the rest of the batch).

RiadUNet(widths=(64, 128, 256, 512, 512), in_channels=3, out_channels=3):
  encoder level 0: 2 x conv3x3 (in -> w0); level l >= 1: conv4x4 s2 + conv3x3
  (-> w_l). Decoder, for l = L-1 .. 0: up (ConvTranspose 4x4 s2 -> w_l, or
  nearest x2 + conv3x3 -> w_l when `upsample="nearest"`), concat the encoder
  skip of level l, 2 x conv3x3 (-> w_l). Output conv3x3 -> out_channels, tanh.
  `__call__(x [B,H,W,in], *, train) -> [B,H,W,out]`.

SsmUNet(widths=..., use_mam=True): the same net with a 4-channel input
  (image * mask, mask; 3 channels with `encoder_input="image"`), the
  nearest-upsample decoder, a 4-channel tanh output
  (3 image channels + 1 mask channel, returned separately) and mask attention
  modules (SSM paper eq. 2) after the bottleneck and after each decoder level.
  `__call__(image [B,H,W,3], mask [B,H,W] (1 = visible), *, train)
     -> (image_out [B,H,W,3], mask_out [B,H,W])`, both in [-1, 1].
  The network multiplies the image by the mask itself.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from maskjax.config_base import config_choice
from maskjax.errors import ConfigError
from maskjax.models import init_utils
from maskjax.ops.conv_transpose import conv_transpose_4x4_s2

_P1 = ((1, 1), (1, 1))
# Flax's default (lecun-normal) kernel init with chunked random bits: same values,
# a fraction of the jit compile time (see maskjax.models.init_utils).
_KINIT = init_utils.lecun_normal()
UP_BLOCKS = ("conv_bn_relu", "conv")
UP_KERNELS = (3, 1)
MASK_RESIZES = ("half_pixel", "floor")
ENCODER_INPUTS = ("image_mask", "image")


def _bn(ch: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
  return nnx.BatchNorm(ch, momentum=0.9, epsilon=1e-5, rngs=rngs)


class ConvBNReLU(nnx.Module):
  """conv (kernel, stride, zero padding 1) -> BatchNorm -> ReLU."""

  def __init__(self, cin: int, cout: int, *, kernel: int = 3, stride: int = 1,
               rngs: nnx.Rngs):
    self.conv = nnx.Conv(cin, cout, (kernel, kernel), strides=(stride, stride), padding=_P1,
                         kernel_init=_KINIT, rngs=rngs)
    self.bn = _bn(cout, rngs)

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    return nnx.relu(self.bn(self.conv(x), use_running_average=not train))


class Up(nnx.Module):
  """x2 upsampling to `cout` channels: ConvTranspose 4x4 s2 ("transpose") or
  nearest x2 + conv (`kernel` 3 or 1, "nearest"), then BatchNorm + ReLU
  (`block="conv_bn_relu"`) or nothing (`block="conv"`, the PyTorch ports)."""

  def __init__(self, cin: int, cout: int, *, mode: str, block: str = "conv_bn_relu",
               kernel: int = 3, rngs: nnx.Rngs):
    if mode not in ("transpose", "nearest"):
      raise ValueError(f"upsample mode must be 'transpose' or 'nearest', got {mode!r}")
    if block not in UP_BLOCKS:
      raise ValueError(f"up_block must be one of {UP_BLOCKS}, got {block!r}")
    if kernel not in UP_KERNELS:
      raise ValueError(f"up_kernel must be one of {UP_KERNELS}, got {kernel!r}")
    self.mode = mode
    self.block = block
    if mode == "transpose":
      # lax.conv_transpose "SAME" with k=4, s=2 pads (2, 2) = PyTorch padding=1.
      self.conv = nnx.ConvTranspose(cin, cout, (4, 4), strides=(2, 2), padding="SAME",
                                    kernel_init=_KINIT, rngs=rngs)
    elif kernel == 3:
      self.conv = nnx.Conv(cin, cout, (3, 3), padding=_P1, kernel_init=_KINIT, rngs=rngs)
    else:
      self.conv = nnx.Conv(cin, cout, (1, 1), padding=((0, 0), (0, 0)), kernel_init=_KINIT,
                           rngs=rngs)
    if block == "conv_bn_relu":
      self.bn = _bn(cout, rngs)

  def _up(self, x: jax.Array) -> jax.Array:
    if self.mode == "nearest":
      return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))
    # nnx.ConvTranspose's own forward, with a kernel gradient XLA:CPU runs fast
    # (maskjax.ops.conv_transpose); the parameters stay nnx.ConvTranspose's.
    conv = self.conv
    x, kernel, bias = conv.promote_dtype((x, conv.kernel[...], conv.bias[...]),
                                         dtype=conv.dtype)
    return conv_transpose_4x4_s2(x, kernel) + bias.reshape((1, 1, 1, -1))

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = self._up(x)
    if self.block == "conv":
      return y
    return nnx.relu(self.bn(y, use_running_average=not train))


class MaskAttention(nnx.Module):
  """SSM mask attention module (paper eq. 2, REFERENCE "SSM"):

    m = nearest-resize(mask) to the feature size,
    out = x + conv3x3(relu(BN(conv3x3(concat(BN(x), m))))) * m.
  """

  def __init__(self, ch: int, *, resize: str = "half_pixel", rngs: nnx.Rngs):
    if resize not in MASK_RESIZES:
      raise ValueError(f"mask_resize must be one of {MASK_RESIZES}, got {resize!r}")
    self.resize = resize
    self.bn_in = _bn(ch, rngs)
    self.conv1 = nnx.Conv(ch + 1, ch, (3, 3), padding=_P1, kernel_init=_KINIT, rngs=rngs)
    self.bn_mid = _bn(ch, rngs)
    self.conv2 = nnx.Conv(ch, ch, (3, 3), padding=_P1, kernel_init=_KINIT, rngs=rngs)

  def __call__(self, x: jax.Array, mask: jax.Array, train: bool) -> jax.Array:
    h, w = x.shape[1:3]
    m = resize_mask(mask, h, w, self.resize).astype(x.dtype)[..., None]
    y = self.bn_in(x, use_running_average=not train)
    y = self.conv1(jnp.concatenate([y, m], axis=-1))
    y = nnx.relu(self.bn_mid(y, use_running_average=not train))
    y = self.conv2(y)
    return x + y * m


def resize_mask(mask: jax.Array, h: int, w: int, mode: str = "half_pixel") -> jax.Array:
  """Nearest resize of [B,H,W] masks to [B,h,w].

  "half_pixel": the pixel at index floor((i + 0.5) * H / h) (`jax.image.resize`
  nearest, PyTorch "nearest-exact"); "floor": index floor(i * H / h), PyTorch's
  `F.interpolate(mode="nearest")` (SSM's official code), computed in integers
  (PyTorch computes i * (H / h) in float32: the same index whenever H / h is
  an integer or a power-of-two fraction, i.e. at every U-Net level)."""
  if mode not in MASK_RESIZES:
    raise ValueError(f"resize_mask: mode must be one of {MASK_RESIZES}, got {mode!r}")
  if mask.shape[1:] == (h, w):
    return mask
  if mode == "floor":
    big_h, big_w = mask.shape[1:]
    if big_h % h == 0 and big_w % w == 0:   # integer factors: the first pixel of each block
      return mask[:, ::big_h // h, ::big_w // w]
    rows = (np.arange(h) * mask.shape[1]) // h
    cols = (np.arange(w) * mask.shape[2]) // w
    return mask[:, rows][:, :, cols]
  return jax.image.resize(mask, (mask.shape[0], h, w), method="nearest")


class _UNetBody(nnx.Module):
  """Shared encoder/decoder; `mam` adds SSM's mask attention modules."""

  def __init__(self, widths: Sequence[int], in_channels: int, out_channels: int, *,
               upsample: str, mam: bool, up_block: str = "conv_bn_relu", up_kernel: int = 3,
               mask_resize: str = "half_pixel", rngs: nnx.Rngs):
    widths = tuple(int(w) for w in widths)
    if len(widths) < 2:
      raise ValueError(f"U-Net widths need at least 2 levels, got {widths}")
    self.widths = widths
    self.enc = nnx.List()
    self.enc.append(nnx.List([ConvBNReLU(in_channels, widths[0], rngs=rngs),
                              ConvBNReLU(widths[0], widths[0], rngs=rngs)]))
    for l in range(1, len(widths)):
      self.enc.append(nnx.List([
          ConvBNReLU(widths[l - 1], widths[l], kernel=4, stride=2, rngs=rngs),
          ConvBNReLU(widths[l], widths[l], rngs=rngs)]))
    self.ups = nnx.List()
    self.dec = nnx.List()
    cur = widths[-1]
    for l in range(len(widths) - 2, -1, -1):
      self.ups.append(Up(cur, widths[l], mode=upsample, block=up_block, kernel=up_kernel,
                         rngs=rngs))
      self.dec.append(nnx.List([ConvBNReLU(2 * widths[l], widths[l], rngs=rngs),
                                ConvBNReLU(widths[l], widths[l], rngs=rngs)]))
      cur = widths[l]
    self.use_mam = mam
    if mam:
      self.mam = nnx.List([MaskAttention(widths[-1], resize=mask_resize, rngs=rngs)] + [
          MaskAttention(widths[l], resize=mask_resize, rngs=rngs)
          for l in range(len(widths) - 2, -1, -1)])
    self.out = nnx.Conv(widths[0], out_channels, (3, 3), padding=_P1, kernel_init=_KINIT,
                        rngs=rngs)

  def __call__(self, x: jax.Array, mask, train: bool) -> jax.Array:
    h, w = x.shape[1:3]
    factor = 2 ** (len(self.widths) - 1)
    if h % factor or w % factor:
      raise ValueError(f"U-Net input {h}x{w} must be divisible by {factor} "
                       f"(2 ** (len(widths) - 1), widths={self.widths})")
    skips = []
    for level in self.enc:
      for layer in level:
        x = layer(x, train)
      skips.append(x)
    x = skips.pop()
    if self.use_mam:
      x = self.mam[0](x, mask, train)
    for i, (up, dec) in enumerate(zip(self.ups, self.dec)):
      x = up(x, train)
      x = jnp.concatenate([x, skips.pop()], axis=-1)
      for layer in dec:
        x = layer(x, train)
      if self.use_mam:
        x = self.mam[i + 1](x, mask, train)
    return jnp.tanh(self.out(x))


class RiadUNet(nnx.Module):
  """RIAD inpainting U-Net; see the module docstring."""

  def __init__(self, widths: Sequence[int] = (64, 128, 256, 512, 512), *,
               in_channels: int = 3, out_channels: int = 3, upsample: str = "transpose",
               up_block: str = "conv_bn_relu", rngs: nnx.Rngs):
    self.body = _UNetBody(widths, in_channels, out_channels, upsample=upsample, mam=False,
                          up_block=up_block, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    return self.body(x, None, train)


class SsmUNet(nnx.Module):
  """SSM conditional U-Net with image and mask heads; see the module docstring."""

  def __init__(self, widths: Sequence[int] = (64, 128, 256, 512, 512), *,
               use_mam: bool = True, upsample: str = "nearest", up_block: str = "conv_bn_relu",
               up_kernel: int = 3, mask_resize: str = "half_pixel",
               encoder_input: str = "image_mask", rngs: nnx.Rngs):
    if encoder_input not in ENCODER_INPUTS:
      raise ValueError(f"encoder_input must be one of {ENCODER_INPUTS}, got {encoder_input!r}")
    self.encoder_input = encoder_input
    cin = 4 if encoder_input == "image_mask" else 3
    self.body = _UNetBody(widths, cin, 4, upsample=upsample, mam=use_mam, up_block=up_block,
                          up_kernel=up_kernel, mask_resize=mask_resize, rngs=rngs)

  def __call__(self, image: jax.Array, mask: jax.Array, *, train: bool = False
               ) -> tuple[jax.Array, jax.Array]:
    m = mask.astype(image.dtype)
    x = image * m[..., None]
    if self.encoder_input == "image_mask":
      x = jnp.concatenate([x, m[..., None]], axis=-1)
    out = self.body(x, m, train)
    return out[..., :3], out[..., 3]


# the config.model switches of the U-Nets and their values
UNET_OPTIONS = {"upsample": ("nearest", "transpose"), "up_block": UP_BLOCKS,
                "up_kernel": UP_KERNELS, "mask_resize": MASK_RESIZES,
                "encoder_input": ENCODER_INPUTS}


def unet_options(model_config, keys: Sequence[str]) -> dict:
  """The U-Net constructor switches `keys` read from `config.model`, each
  checked against `UNET_OPTIONS` (a ConfigError names the key)."""
  out = {}
  for key in keys:
    value = model_config[key]
    out[key] = config_choice(int(value) if key == "up_kernel" else str(value),
                             UNET_OPTIONS[key], f"config.model.{key}")
  return out


def grid_geometry(config, ks: Sequence[int], where: str) -> tuple[tuple[int, ...], int]:
  """(U-Net widths from `config.model.widths`, image size) of a grid-masking
  method. The image size must be divisible by every grid cell size k and by
  the U-Net's total stride."""
  widths = tuple(int(w) for w in config.model.widths)
  size = int(config.input.image_size)
  factor = 2 ** (len(widths) - 1)
  if size % factor:
    raise ConfigError(f"{where}: config.input.image_size={size} must be divisible by "
                      f"{factor} (2 ** (len(config.model.widths) - 1), widths={tuple(widths)})")
  bad = [k for k in ks if k < 1 or size % k]
  if bad:
    raise ConfigError(f"{where}: config.method.ks={tuple(ks)} has cell sizes {bad} that do "
                      f"not divide config.input.image_size={size}")
  if not ks:
    raise ConfigError(f"{where}: config.method.ks is empty; give at least one cell size")
  return widths, size
