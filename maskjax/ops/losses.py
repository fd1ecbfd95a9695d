"""Losses shared by the methods. All return float32 scalars; inputs may be bf16.

  focal_loss: DRAEM's focal loss on softmax probabilities;
  dice_loss:  soft Dice on probabilities;
  lamp:       EAR's loss transform -log(1 - L);
  masked_mse / masked_l1: means over the masked elements only.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def focal_loss(probs: jax.Array, target: jax.Array, gamma: float = 2.0,
               alpha: float = 1.0, smooth: float = 1e-5) -> jax.Array:
  """DRAEM focal loss.

  probs [B,H,W,2] are softmax probabilities (channel 1 = anomalous), target
  [B,H,W] in {0,1}. one_hot(target) is clamped to [smooth, 1 - smooth];
  pt = sum_c(one_hot_c * p_c) + smooth; loss = mean(-alpha (1-pt)^gamma log pt)
  over all pixels.
  """
  p = probs.astype(jnp.float32)
  ncls = p.shape[-1]
  onehot = jax.nn.one_hot(target.astype(jnp.int32), ncls, dtype=jnp.float32)
  onehot = jnp.clip(onehot, smooth / (ncls - 1), 1.0 - smooth)
  pt = jnp.sum(onehot * p, axis=-1) + smooth
  return jnp.mean(-alpha * jnp.power(1.0 - pt, gamma) * jnp.log(pt))


def dice_loss(pred: jax.Array, target: jax.Array, smooth: float = 1.0) -> jax.Array:
  """1 - (2 sum(p t) + s) / (sum p + sum t + s), sums over the whole batch.

  pred [B,H,W] probabilities in [0,1], target [B,H,W] in {0,1}; `smooth` s = 1
  keeps the loss defined (= 0) when both are empty.
  """
  p = pred.astype(jnp.float32)
  t = target.astype(jnp.float32)
  inter = jnp.sum(p * t)
  return 1.0 - (2.0 * inter + smooth) / (jnp.sum(p) + jnp.sum(t) + smooth)


def lamp(loss: jax.Array, eps: float = 1e-6) -> jax.Array:
  """EAR eq. 5: -log(1 - L) with L clamped to [0, 1 - eps] so that it is finite
  (gradient is zero where the clamp is active)."""
  l = jnp.clip(loss.astype(jnp.float32), 0.0, 1.0 - eps)
  return -jnp.log1p(-l)


def _masked_mean(err: jax.Array, mask: jax.Array) -> jax.Array:
  m = mask.astype(jnp.float32)
  while m.ndim < err.ndim:
    m = m[..., None]
  m = jnp.broadcast_to(m, err.shape)
  return jnp.sum(err * m) / jnp.maximum(jnp.sum(m), 1.0)


def masked_mse(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
  """sum(mask * (pred - target)^2) / max(sum(mask), 1); mask (weights >= 0)
  broadcasts from the left, e.g. [B,H,W] for [B,H,W,C] or [B,L] for [B,L,D];
  the divisor counts broadcast elements."""
  d = pred.astype(jnp.float32) - target.astype(jnp.float32)
  return _masked_mean(d * d, mask)


def masked_l1(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
  """sum(mask * |pred - target|) / max(sum(mask), 1); broadcasting as masked_mse."""
  d = pred.astype(jnp.float32) - target.astype(jnp.float32)
  return _masked_mean(jnp.abs(d), mask)
