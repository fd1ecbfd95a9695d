"""MALA's two small heads (Chen et al., IEEE Access 2023), Flax NNX.

PLPMDiscriminator (Pseudo Label Prediction Module, stage 1)
  A small convolutional discriminator that scores whole images: originals get
  the pseudo label 0, MAE reconstructions the pseudo label 1. Input: NHWC
  float images in [0, 1] (the method's own convention; the net centres them
  with mean = std = 0.5 itself). Layers: `num_layers` x [conv 4x4 stride 2,
  padding 1 (PyTorch `padding=1`, explicit ((1,1),(1,1))), LeakyReLU(0.2)]
  with widths width * 2^i capped at 8 * width, then the spatial mean and a
  Linear to one logit. No normalisation layers, so the module holds Params only
  (no running statistics in the training state). Output: logits [B] float32
  (sigmoid(logit) = probability of "reconstruction").

TokenBalanceModule (TBM, stage 2), paper eq. (5):
  Y = LP_out(concat(LP_in(concat(Z_enc_first, Z_enc_last)), Z_dec_last))
  Z_enc_first / Z_enc_last: encoder tokens of the first / last layer
  [B, L, De]; Z_dec_last: the decoder's last-layer tokens [B, L, Dd]; LP_in
  maps 2*De -> Dd, LP_out maps 2*Dd -> 2*p*p. Tokens are patch tokens only (no
  CLS), row-major over the (H/p, W/p) grid. The per-token 2*p*p values are
  laid out [p, p, 2] (row, column, channel), i.e. `unpatchify` with 2
  channels gives the [B, H, W, 2] map. Channel 0 is the anomaly channel
  (softmax over the last axis -> channel 0 = probability of "anomalous").
  With `use_encoder_tokens=False` (the "no TBM" ablation) LP_in is absent and
  LP_out maps Dd -> 2*p*p from the decoder tokens alone.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from maskjax.models import init_utils

Array = jax.Array


def _xavier():
  return init_utils.fast(nnx.initializers.xavier_uniform())


class PLPMDiscriminator(nnx.Module):
  """Conv discriminator: images [B,H,W,3] in [0,1] -> logits [B] float32."""

  def __init__(self, width: int = 64, num_layers: int = 4, *, dtype=jnp.float32,
               rngs: nnx.Rngs):
    if num_layers < 1:
      raise ValueError(f"PLPMDiscriminator: num_layers must be >= 1 (got {num_layers})")
    self.dtype = dtype
    convs = []
    cin = 3
    for i in range(num_layers):
      cout = width * min(2 ** i, 8)
      convs.append(nnx.Conv(cin, cout, kernel_size=(4, 4), strides=(2, 2),
                            padding=((1, 1), (1, 1)), dtype=dtype, param_dtype=jnp.float32,
                            kernel_init=init_utils.lecun_normal(), rngs=rngs))
      cin = cout
    self.convs = nnx.List(convs)
    self.out = nnx.Linear(cin, 1, kernel_init=_xavier(), dtype=jnp.float32,
                          param_dtype=jnp.float32, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    h = ((x - 0.5) / 0.5).astype(self.dtype)
    for conv in self.convs:
      h = jax.nn.leaky_relu(conv(h), 0.2)
    h = jnp.mean(h.astype(jnp.float32), axis=(1, 2))
    return self.out(h)[:, 0]


class TokenBalanceModule(nnx.Module):
  """Paper eq. (5): fuse first/last encoder tokens with the decoder's last tokens.

  __call__(enc_first [B,L,De], enc_last [B,L,De], dec_last [B,L,Dd])
    -> per-token map values [B, L, 2*p*p] (float32), layout [p, p, 2].
  Use `to_map(tokens, grid_hw)` (or `maskjax.methods.mala`) to unpatchify.
  """

  def __init__(self, encoder_dim: int, decoder_dim: int, patch: int, *,
               use_encoder_tokens: bool = True, dtype=jnp.float32, rngs: nnx.Rngs):
    self.patch = patch
    self.use_encoder_tokens = use_encoder_tokens
    kw = dict(kernel_init=_xavier(), dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
    if use_encoder_tokens:
      self.proj_in = nnx.Linear(2 * encoder_dim, decoder_dim, **kw)
      self.proj_out = nnx.Linear(2 * decoder_dim, 2 * patch * patch, **kw)
    else:
      self.proj_out = nnx.Linear(decoder_dim, 2 * patch * patch, **kw)

  def __call__(self, enc_first: Array | None, enc_last: Array | None, dec_last: Array) -> Array:
    if self.use_encoder_tokens:
      fused = self.proj_in(jnp.concatenate([enc_first, enc_last.astype(enc_first.dtype)], -1))
      h = jnp.concatenate([fused, dec_last.astype(fused.dtype)], axis=-1)
    else:
      h = dec_last
    return self.proj_out(h).astype(jnp.float32)

  def to_map(self, tokens: Array, grid_hw: tuple[int, int]) -> Array:
    return unpatchify_channels(tokens, self.patch, grid_hw, channels=2)


def unpatchify_channels(tokens: Array, patch: int, grid_hw: tuple[int, int],
                        channels: int) -> Array:
  """[B, h*w, p*p*C] (row-major tokens, per-token layout [p, p, C]) -> [B, h*p, w*p, C]."""
  b = tokens.shape[0]
  h, w = grid_hw
  x = tokens.reshape(b, h, w, patch, patch, channels)
  x = jnp.transpose(x, (0, 1, 3, 2, 4, 5))
  return x.reshape(b, h * patch, w * patch, channels)
