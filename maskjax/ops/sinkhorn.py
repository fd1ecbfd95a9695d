"""Sinkhorn-Knopp equipartition (SwAV convention) for prototype targets.

Given scores [B,K] (prototype similarities of a batch of B examples), SwAV's
iteration is
  Q = exp(scores / eps)^T                       (K x B)
  Q /= sum(Q)
  repeat `iters` times:  Q /= row sums, Q /= K;  Q /= column sums, Q /= B
  return (Q * B)^T                              ([B,K], each row sums to 1)
We run the same iteration on log Q (each division becomes the subtraction of a
`logsumexp`, after subtracting the global max of the scores). In exact
arithmetic this is identical; in floating point it cannot overflow (SwAV's
plain exp overflows in bf16) nor underflow a whole row to zero and return
0/0 = NaN when the score spread exceeds ~87 * eps in float32.

Data parallelism: call it inside `jax.jit` on a batch sharded along its first
axis; the max and the sums over the batch axis are global (XLA inserts the
all-reduces), so the marginals are those of the global batch, exactly as
SwAV's `dist.all_reduce`. Arithmetic in float32; the result is float32.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.special import logsumexp


def sinkhorn(scores: jax.Array, eps: float = 0.05, iters: int = 3) -> jax.Array:
  """Balanced soft assignments Q [B,K] (rows sum to 1; columns tend to B/K)."""
  s = scores.astype(jnp.float32)
  b, k = s.shape
  log_b, log_k = math.log(b), math.log(k)
  lq = ((s - jnp.max(s)) / eps).T                  # [K, B]
  lq = lq - logsumexp(lq)

  def body(_, lq):
    lq = lq - logsumexp(lq, axis=1, keepdims=True) - log_k
    lq = lq - logsumexp(lq, axis=0, keepdims=True) - log_b
    return lq

  lq = lax.fori_loop(0, iters, body, lq)
  return jnp.exp(lq + log_b).T
