"""Shared by the U-Net twin tests (RIAD, SSM): maskjax U-Nets with weights that
exercise every term of the comparison with a PyTorch twin."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx


def randomise(module, seed: int) -> None:
  """Non-trivial conv biases and BatchNorm parameters / statistics, and an
  output conv scaled so that the tanh output is O(0.1-1), for a RiadUNet or
  SsmUNet (`module.body.out` is its output conv)."""
  rng = np.random.default_rng(seed)
  for _, m in module.iter_modules():
    if isinstance(m, (nnx.Conv, nnx.ConvTranspose)):
      m.bias.value = jnp.asarray(rng.normal(0, 0.1, m.bias.value.shape), jnp.float32)
    if isinstance(m, nnx.BatchNorm):
      n = m.scale.value.shape[0]
      m.scale.value = jnp.asarray(rng.uniform(0.5, 1.5, n), jnp.float32)
      m.bias.value = jnp.asarray(rng.normal(0, 0.2, n), jnp.float32)
      m.mean.value = jnp.asarray(rng.normal(0, 0.3, n), jnp.float32)
      m.var.value = jnp.asarray(rng.uniform(0.5, 2.0, n), jnp.float32)
  module.body.out.kernel.value = module.body.out.kernel.value * 4.0
