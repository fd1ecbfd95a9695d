"""Sinkhorn-Knopp equipartition (SwAV convention) for prototype targets.

Given scores [B,K] (prototype similarities of a batch of B examples):
  Q = exp((scores - max(scores)) / eps)^T      (K x B; the global max is
      subtracted for stability: SwAV does not, which overflows in bf16; the
      result is unchanged since Q is normalised)
  Q /= sum(Q)
  repeat `iters` times:  Q /= row sums, Q /= K;  Q /= column sums, Q /= B
  return (Q * B)^T                              ([B,K], each row sums to 1)

Data parallelism: call it inside `jax.jit` on a batch sharded along its first
axis; `jnp.max`/`jnp.sum` over the batch axis are global (XLA inserts the
all-reduces), so the marginals are those of the global batch, exactly as
SwAV's `dist.all_reduce`. Arithmetic in float32; the result is float32.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def sinkhorn(scores: jax.Array, eps: float = 0.05, iters: int = 3) -> jax.Array:
  """Balanced soft assignments Q [B,K] (rows sum to 1, columns to B/K)."""
  s = scores.astype(jnp.float32)
  b, k = s.shape
  q = jnp.exp((s - jnp.max(s)) / eps).T
  q = q / jnp.sum(q)

  def body(_, q):
    q = q / jnp.sum(q, axis=1, keepdims=True) / k
    q = q / jnp.sum(q, axis=0, keepdims=True) / b
    return q

  q = lax.fori_loop(0, iters, body, q)
  return (q * b).T
