"""Projection heads.

`DINOHead` (Caron et al., DINO): MLP Linear(in, hidden)-GELU-...-Linear(hidden,
bottleneck) (nlayers linears; exact GELU), L2 normalisation (x / max(||x||,
1e-12)), then a weight-normalised Linear(bottleneck, out_dim) without bias:
W = g * v / ||v|| with the norm over the input axis for each output unit.

Parameter names follow the PyTorch checkpoints with the Sequential's GELU
slots removed: `mlp.{0,1,2}` here are torch `mlp.{0,2,4}`; `last_layer.
weight_v` is stored as a kernel [bottleneck, out_dim] (torch [out, in]) and
`last_layer.weight_g` as [out_dim] (torch [out, 1]). With norm_last_layer
(DINO's default) g is fixed to 1 and held as a `FrozenParam`: loaded from
checkpoints but not a `nnx.Param`, so optimisers filtering on `nnx.Param`
leave it alone.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from maskjax.models import init_utils

Array = jax.Array


class FrozenParam(nnx.Variable):
  """A weight that is loaded from checkpoints but never trained."""


class WeightNormLinear(nnx.Module):
  """y = x @ (g * v / ||v||), norm over the input axis (per output unit); no bias."""

  def __init__(self, in_dim: int, out_dim: int, *, train_g: bool = False, dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.dtype = dtype
    self.weight_v = nnx.Param(init_utils.fast(nnx.initializers.truncated_normal(0.02))(
        rngs.params(), (in_dim, out_dim), jnp.float32))
    g = jnp.ones((out_dim,), jnp.float32)
    self.weight_g = nnx.Param(g) if train_g else FrozenParam(g)

  def __call__(self, x: Array) -> Array:
    v = self.weight_v[...]
    w = v * (self.weight_g[...] / jnp.sqrt(jnp.sum(v * v, axis=0)))[None, :]
    return jnp.dot(x.astype(self.dtype), w.astype(self.dtype))


class DINOHead(nnx.Module):
  """DINO projection head; see the module docstring."""

  def __init__(self, in_dim: int, out_dim: int, hidden: int = 2048, bottleneck: int = 256,
               nlayers: int = 3, *, norm_last_layer: bool = True, dtype=jnp.float32,
               rngs: nnx.Rngs):
    nlayers = max(int(nlayers), 1)
    dims = [in_dim] + [hidden] * (nlayers - 1) + [bottleneck]
    init = init_utils.fast(nnx.initializers.truncated_normal(0.02))
    self.mlp = nnx.List([
        nnx.Linear(a, b, kernel_init=init, bias_init=nnx.initializers.zeros, dtype=dtype,
                   param_dtype=jnp.float32, rngs=rngs) for a, b in zip(dims[:-1], dims[1:])])
    self.last_layer = WeightNormLinear(bottleneck, out_dim, train_g=not norm_last_layer,
                                       dtype=dtype, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    for i, layer in enumerate(self.mlp):
      x = layer(x)
      if i < len(self.mlp) - 1:
        x = jax.nn.gelu(x, approximate=False)
    x = x.astype(jnp.float32)
    x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return self.last_layer(x)
