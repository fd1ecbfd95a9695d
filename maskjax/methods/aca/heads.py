"""ACA heads (Bozorgtabar & Mahapatra, AAAI 2023).

`ProjectionHead`: the pretraining MLP projection g with an L2 bottleneck:
  Linear(in, hidden) - GELU - ... - Linear(hidden, out_dim) (`nlayers` linears,
  exact GELU), then x / max(||x||, 1e-12). The prototypes C [K, out_dim] are
  kept outside the module (a plain array in the method's state) so that they
  can be re-normalised after every optimiser step.

`ClassHead`: CLS token -> 2 logits (index 1 = anomalous): the projection's MLP
  shape with a 2-way last layer (paper: g_s and g "share the same architectures
  except for the last layer").

`AttentionSegHead`: learned weighting of the last block's CLS attention maps.
  For attention A [B, heads, 1+N, 1+N] the per-head maps are the CLS rows over
  the patch columns, A[:, h, 0, 1:], multiplied by N so that a uniform map is
  1 everywhere (raw attention is ~1/N and would need tiny weights). The logit
  of patch i is  sum_h w_h * N * A[:, h, 0, 1 + i] + b  (w initialised to
  1/heads, b to -1), reshaped to the [B, h, w] patch grid. The anomaly map is
  sigmoid(logit) after bilinear upsampling of the logits to the image.
  `lr_scale` s stores w / s and b / s and multiplies the logit by s: the same
  initial map, but under Adam (whose step size does not depend on the
  gradient's scale) w and b move s times as far per step as the backbone's
  weights. Four numbers that start at 1/heads and -1 otherwise move at most
  ~lr per step, about 0.5 over the demo's 3000 steps at lr 3e-4, too little
  for a map that is near 0 off the anomaly and near 1 on it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from maskjax.models import init_utils

Array = jax.Array


class ProjectionHead(nnx.Module):
  """MLP with an L2-normalised output (see module docstring)."""

  def __init__(self, in_dim: int, out_dim: int = 256, hidden: int = 2048, nlayers: int = 3, *,
               dtype=jnp.float32, rngs: nnx.Rngs):
    nlayers = max(int(nlayers), 1)
    dims = [in_dim] + [hidden] * (nlayers - 1) + [out_dim]
    init = init_utils.fast(nnx.initializers.truncated_normal(0.02))
    self.mlp = nnx.List([
        nnx.Linear(a, b, kernel_init=init, bias_init=nnx.initializers.zeros, dtype=dtype,
                   param_dtype=jnp.float32, rngs=rngs) for a, b in zip(dims[:-1], dims[1:])])

  def __call__(self, x: Array) -> Array:
    for i, layer in enumerate(self.mlp):
      x = layer(x)
      if i < len(self.mlp) - 1:
        x = jax.nn.gelu(x, approximate=False)
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class ClassHead(nnx.Module):
  """CLS token -> 2 float32 logits (index 1 = anomalous).

  The paper's g_s: the pretraining projection's MLP (`nlayers` linears, hidden
  width `hidden`, exact GELU between them) with the last layer replaced by a
  2-way output (no L2 bottleneck); `nlayers=1` is a plain Linear(dim, 2)."""

  def __init__(self, dim: int, hidden: int = 2048, nlayers: int = 3, *, dtype=jnp.float32,
               rngs: nnx.Rngs):
    nlayers = max(int(nlayers), 1)
    dims = [dim] + [int(hidden)] * (nlayers - 1) + [2]
    init = init_utils.fast(nnx.initializers.truncated_normal(0.02))
    self.mlp = nnx.List([
        nnx.Linear(a, b, kernel_init=init, bias_init=nnx.initializers.zeros, dtype=dtype,
                   param_dtype=jnp.float32, rngs=rngs) for a, b in zip(dims[:-1], dims[1:])])

  def __call__(self, cls_token: Array) -> Array:
    x = cls_token
    for i, layer in enumerate(self.mlp):
      x = layer(x)
      if i < len(self.mlp) - 1:
        x = jax.nn.gelu(x, approximate=False)
    return x.astype(jnp.float32)


class AttentionSegHead(nnx.Module):
  """Learned per-head weights over the last block's CLS attention (module docstring)."""

  def __init__(self, heads: int, *, lr_scale: float = 1.0, rngs: nnx.Rngs):
    del rngs
    self.lr_scale = float(lr_scale)
    self.weight = nnx.Param(jnp.full((heads,), 1.0 / heads / self.lr_scale, jnp.float32))
    self.bias = nnx.Param(jnp.full((), -1.0 / self.lr_scale, jnp.float32))

  def __call__(self, attention: Array, grid_hw: tuple[int, int]) -> Array:
    """attention [B, heads, 1+N, 1+N] -> logits [B, h, w] float32."""
    h, w = int(grid_hw[0]), int(grid_hw[1])
    n = h * w
    if attention.shape[-1] != 1 + n:
      raise ValueError(f"attention has {attention.shape[-1]} tokens, expected 1 + {h}*{w}")
    maps = attention[:, :, 0, 1:].astype(jnp.float32) * n          # [B, heads, N]
    logit = jnp.einsum("bhn,h->bn", maps, self.weight[...]) + self.bias[...]
    if self.lr_scale != 1.0:
      logit = logit * self.lr_scale
    return logit.reshape(attention.shape[0], h, w)
