"""Losses vs torch (DRAEM focal formula) / numpy; normalisation vs numpy."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskjax.ops import losses, normalize


def _probs_target(seed=0):
  rng = np.random.default_rng(seed)
  logits = rng.standard_normal((2, 6, 5, 2)).astype(np.float32) * 2
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  target = (rng.random((2, 6, 5)) < 0.3).astype(np.float32)
  return probs.astype(np.float32), target


def test_focal_vs_torch_draem_formula():
  torch = pytest.importorskip("torch")
  probs, target = _probs_target()
  # DRAEM FocalLoss(apply_nonlin=None, alpha=None, gamma=2, smooth=1e-5) on NCHW probs.
  p = torch.tensor(probs).permute(0, 3, 1, 2)
  n, c = p.shape[0], p.shape[1]
  logit = p.permute(0, 2, 3, 1).reshape(-1, c)
  t = torch.tensor(target).reshape(-1, 1).long()
  one_hot = torch.zeros(t.shape[0], c).scatter_(1, t, 1)
  smooth = 1e-5
  one_hot = torch.clamp(one_hot, smooth / (c - 1), 1.0 - smooth)
  pt = (one_hot * logit).sum(1) + smooth
  ref = (-1 * torch.ones_like(pt) * torch.pow(1 - pt, 2) * pt.log()).mean().item()
  out = float(jax.jit(losses.focal_loss)(probs, target))
  np.testing.assert_allclose(out, ref, rtol=1e-5)
  out_b16 = float(losses.focal_loss(jnp.asarray(probs, jnp.bfloat16), target))
  np.testing.assert_allclose(out_b16, ref, rtol=3e-2)


def test_dice_vs_numpy():
  probs, target = _probs_target(1)
  p = probs[..., 1]
  ref = 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
  np.testing.assert_allclose(float(losses.dice_loss(p, target)), ref, rtol=1e-5)
  assert float(losses.dice_loss(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)))) == 0.0


def test_lamp_values_and_clamp():
  l = np.array([0.0, 0.5, 0.9, 1.0, 3.0, -1.0], np.float32)
  out = np.asarray(losses.lamp(l))
  hi = float(np.float32(1 - 1e-6))  # the clamp bound as float32 represents it
  ref = -np.log(1 - np.clip(l.astype(np.float64), 0, hi))
  np.testing.assert_allclose(out, ref, rtol=1e-4)
  assert np.isfinite(out).all()
  g = jax.grad(lambda x: losses.lamp(x))(0.5)
  np.testing.assert_allclose(float(g), 2.0, rtol=1e-5)


def test_masked_mse_l1():
  rng = np.random.default_rng(2)
  pred = rng.random((2, 4, 4, 3)).astype(np.float32)
  tgt = rng.random((2, 4, 4, 3)).astype(np.float32)
  mask = (rng.random((2, 4, 4)) < 0.5).astype(np.float32)
  sel = mask.astype(bool)
  np.testing.assert_allclose(float(losses.masked_mse(pred, tgt, mask)),
                             ((pred - tgt)[sel] ** 2).mean(), rtol=1e-5)
  np.testing.assert_allclose(float(losses.masked_l1(pred, tgt, mask)),
                             np.abs(pred - tgt)[sel].mean(), rtol=1e-5)
  assert float(losses.masked_mse(pred, tgt, np.zeros((2, 4, 4)))) == 0.0


def test_normalize_round_trip():
  x = np.random.default_rng(3).random((2, 3, 3, 3)).astype(np.float32)
  ref = (x - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
  np.testing.assert_allclose(np.asarray(normalize.imagenet(jnp.asarray(x))), ref, rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(np.asarray(normalize.imagenet_inverse(normalize.imagenet(x))), x,
                             atol=1e-6)
  np.testing.assert_allclose(np.asarray(normalize.half(x)), 2 * x - 1, atol=1e-6)
  np.testing.assert_allclose(np.asarray(normalize.half_inverse(normalize.half(x))), x, atol=1e-6)
