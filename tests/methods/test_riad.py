"""RIAD: mask composition, the composed loss against an independent PyTorch
formula, scoring, config variants."""
from __future__ import annotations

import os as _os
import sys as _sys

_sys.path.insert(0, _os.path.join(_os.path.dirname(__file__), ".."))
import stage_helpers  # noqa: E402

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from configs import riad as riad_config
from maskjax.errors import ConfigError


def _tiny_config(**method):
  c = riad_config.get_config("demo")
  c.input.image_size = 16
  c.model.widths = (4, 8, 8)
  c.method.ks = (4, 8)
  c.train.steps = 3
  for k, v in method.items():
    c.method[k] = v
  return c


def _nchw(x):
  return torch.tensor(np.asarray(x, np.float64)).permute(0, 3, 1, 2)


def _torch_ssim(x, y):
  g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5 ** 2))
  w = np.outer(g, g); w /= w.sum()
  c = x.shape[1]
  win = torch.tensor(w)[None, None].repeat(c, 1, 1, 1)
  conv = lambda t: F.conv2d(t, win, padding=5, groups=c)
  mx, my = conv(x), conv(y)
  sxx, syy, sxy = conv(x * x) - mx ** 2, conv(y * y) - my ** 2, conv(x * y) - mx * my
  c1, c2 = 0.01 ** 2, 0.03 ** 2
  return ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))


def _torch_msgms(x, y, scales=4, c=0.0026):
  h, w = x.shape[-2:]
  k = torch.tensor([[1., 0., -1.]] * 3, dtype=torch.float64) / 3.0
  ch = x.shape[1]
  kx = k[None, None].repeat(ch, 1, 1, 1)
  ky = k.T.contiguous()[None, None].repeat(ch, 1, 1, 1)
  grad = lambda t: torch.sqrt(F.conv2d(t, kx, padding=1, groups=ch) ** 2
                              + F.conv2d(t, ky, padding=1, groups=ch) ** 2 + 1e-12)
  total = 0
  for s in range(scales):
    if s:
      x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    g1, g2 = grad(x), grad(y)
    m = (2 * g1 * g2 + c) / (g1 ** 2 + g2 ** 2 + c + 1e-12)
    total = total + F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
  return (1 - total / scales).mean(dim=1)


class _FakeNet:
  """Stands in for the U-Net: output i = tanh of a per-sample constant that
  depends on the masked input, so every pass gives a different image."""

  def apply(self, params, rest, inp, train):
    v = jnp.tanh(jnp.mean(inp, axis=(1, 2, 3), keepdims=True) * 3.0 + inp * 0.5)
    return v, rest


def test_inpainting_composition_and_loss_vs_torch():
  m = stage_helpers.build(_tiny_config(loss_weights={"l2": 0.7, "ssim": 1.3, "msgms": 0.5}))
  m.f = _FakeNet()
  x = np.asarray(jax.random.uniform(jax.random.PRNGKey(0), (2, 16, 16, 3)))
  masks = np.asarray(m.score_masks(4))
  assert masks.shape == (3, 16, 16)
  np.testing.assert_array_equal((1 - masks).sum(0), 1.0)   # disjoint, cover the image
  recon, _ = m.inpaint({}, {}, jnp.asarray(x), jnp.asarray(masks), train=False)
  # numpy composition
  want = np.zeros_like(x)
  for i in range(3):
    inp = (x * 2 - 1) * masks[i][None, :, :, None]
    out = np.tanh(inp.mean(axis=(1, 2, 3), keepdims=True) * 3.0 + inp * 0.5)
    want += out * (1 - masks[i])[None, :, :, None]
  want = want * 0.5 + 0.5
  np.testing.assert_allclose(np.asarray(recon), want, atol=1e-5)
  # the composed loss on that fixed output
  terms = m.loss_terms(recon, jnp.asarray(x))
  loss = sum(m.w[k] * v for k, v in terms.items())
  r, t = _nchw(want), _nchw(x)
  ref = (0.7 * float(((r - t) ** 2).mean()) + 1.3 * (1 - float(_torch_ssim(r, t).mean()))
         + 0.5 * float(_torch_msgms(r, t).mean()))
  np.testing.assert_allclose(float(loss), ref, rtol=1e-4)


def test_train_step_and_score():
  c = _tiny_config()
  m = stage_helpers.build(c)
  (stage,) = stage_helpers.stages(m)
  assert stage.steps == 3 and stage.name == "train"
  state = jax.jit(stage.init)(jax.random.PRNGKey(0), None)
  x = jax.random.uniform(jax.random.PRNGKey(1), (4, 16, 16, 3))
  step = jax.jit(stage.train_step)
  state, met = step(state, {"image": x}, jax.random.PRNGKey(2))
  assert set(met) >= {"loss", "loss/l2", "loss/ssim", "loss/msgms"}
  assert np.isfinite(float(met["loss"])) and float(met["k"]) in (4.0, 8.0)
  score = jax.jit(m.score)
  out = score(state, {"image": x}, {})
  assert out["anomaly_map"].shape == (4, 16, 16) and out["image_score"].shape == (4,)
  np.testing.assert_allclose(out["image_score"], jnp.max(out["anomaly_map"], axis=(1, 2)))
  # deterministic masks, per-image results independent of the batch
  alone = score(state, {"image": x[2:3]}, {})
  np.testing.assert_allclose(alone["anomaly_map"][0], out["anomaly_map"][2], atol=1e-5)
  # map = box filter (21, zero padding) of the sum over k of the MSGMS maps
  total = 0
  for k in c.method.ks:
    recon, _ = m.inpaint(state["params"], state["model_state"], x, m.score_masks(k), train=False)
    total = total + _torch_msgms(_nchw(recon), _nchw(x)).numpy()
  from scipy import ndimage
  want = ndimage.uniform_filter(total, size=(1, 21, 21), mode="constant")
  np.testing.assert_allclose(out["anomaly_map"], want, atol=1e-5)


def test_config_variants_and_errors():
  full = riad_config.get_config()
  assert full.input.image_size == 256 and tuple(full.model.widths) == (64, 128, 256, 512, 512)
  assert tuple(full.method.ks) == (2, 4, 8, 16) and full.optim.lr == 1e-4
  assert full.optim.weight_decay == 1e-5
  assert full.train.epochs == 300 and full.train.steps == 0 and "steps_per_epoch" not in full.method
  demo = riad_config.get_config("demo")
  assert demo.input.data_dir == "" and demo.input.image_size == 64 and demo.train.steps > 0
  with pytest.raises(ConfigError, match="'nope'.*full, demo"):
    riad_config.get_config("nope")
  bad = _tiny_config()
  bad.method.ks = (3,)
  with pytest.raises(ConfigError, match="ks"):
    stage_helpers.build(bad)
  bad = _tiny_config()
  bad.train.steps = 0
  bad.train.epochs = 0
  with pytest.raises(ConfigError, match="train.steps"):
    stage_helpers.stages(stage_helpers.build(bad))
