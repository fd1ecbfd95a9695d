"""RIAD full recipe against the public PyTorch code (taikiinoue45/RIAD and the
plutoyuxie port):

* no BN / ReLU after the decoder's up-convs (model.up_block): the U-Net against
  a PyTorch twin written like the ports, with the same weights;
* losses and score on the mean = std = 0.5 tensors (method.metric_space):
  against NumPy on the [-1, 1] arrays;
* the plutoyuxie score (method.score_pipeline): per-k 1/N^2 weights and
  `scipy.ndimage.gaussian_filter(sigma=7)` against NumPy / scipy / torch, with
  the port's own MSGMS formula (gray, zero-padded 3x3 median, valid Prewitt);
* the demo keeping the previous settings, the full variants the new ones.
"""
from __future__ import annotations

import os as _os
import sys as _sys

_sys.path.insert(0, _os.path.join(_os.path.dirname(__file__), ".."))
import stage_helpers  # noqa: E402
from helpers_unet import randomise  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.ndimage  # noqa: E402
from flax import nnx  # noqa: E402

from maskjax import configs  # noqa: E402
from maskjax.errors import ConfigError  # noqa: E402
from maskjax.methods import riad as riad_method  # noqa: E402
from maskjax.models.unet import RiadUNet  # noqa: E402

SIZE = 32


def _method(variant="full", **method):
  c = configs.get_config(f"riad:{variant}")
  c.input.image_size = SIZE
  c.model.widths = (4, 6, 8, 8)
  c.train.protocol = "unified"
  c.input.train_on_val = False
  for k, v in method.items():
    c.method[k] = v
  return stage_helpers.build(c)


def _init(m, seed=0):
  stage = stage_helpers.stages(m)[0]
  params, rest, extras = stage.init_model(jax.random.PRNGKey(seed), None)
  return stage, {"params": params, "model_state": rest, "extras": extras}


def _images(n=2, seed=0):
  rng = np.random.default_rng(seed)
  x = scipy.ndimage.gaussian_filter(rng.uniform(size=(n, SIZE, SIZE, 3)), (0, 1.5, 1.5, 0))
  return ((x - x.min()) / (x.max() - x.min())).astype(np.float32)


# ----------------------------------------------------------------------------
# U-Net vs a PyTorch twin
# ----------------------------------------------------------------------------
def test_unet_without_up_bn_relu_matches_torch_twin():
  import torch
  from torch_reference import riad_unet
  widths = (3, 4, 5, 6)
  jm = RiadUNet(widths, up_block="conv", rngs=nnx.Rngs(0))
  randomise(jm, 1)
  tm = riad_unet.copy_from_maskjax(riad_unet.UNetTwin(widths), jm)
  x = np.random.default_rng(2).uniform(-1, 1, (2, SIZE, SIZE, 3)).astype(np.float32)
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  tm.eval()
  with torch.no_grad():
    want = tm(xt).numpy().transpose(0, 2, 3, 1)
  got = np.asarray(jm(jnp.asarray(x), train=False))
  assert np.max(np.abs(got - want)) < 1e-5, np.max(np.abs(got - want))
  assert 0.05 < np.std(want) and np.mean(np.abs(want) > 0.99) < 0.2  # neither flat nor saturated
  # batch statistics: 4 images at 64 px so the deepest BN sees 256 values per channel
  x = np.random.default_rng(3).uniform(-1, 1, (4, 64, 64, 3)).astype(np.float32)
  tm.train()
  with torch.no_grad():
    want_t = tm(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy().transpose(0, 2, 3, 1)
  got_t = np.asarray(jm(jnp.asarray(x), train=True))
  assert np.max(np.abs(got_t - want_t)) < 1e-4, np.max(np.abs(got_t - want_t))
  assert np.median(np.abs(got_t - want_t)) < 1e-6
  print(f"eval max |diff| {np.max(np.abs(got - want)):.2e}, "
        f"train {np.max(np.abs(got_t - want_t)):.2e}")


def test_up_block_layouts():
  """"conv" drops exactly the BN after each up-conv; the previous layout keeps it."""
  def count(m):
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(m, nnx.Param)))
  widths = (3, 4, 5, 6)
  ref = RiadUNet(widths, up_block="conv", rngs=nnx.Rngs(0))
  old = RiadUNet(widths, rngs=nnx.Rngs(0))
  assert all(not hasattr(u, "bn") for u in ref.body.ups)
  assert all(hasattr(u, "bn") for u in old.body.ups)
  assert count(old) - count(ref) == 2 * sum(widths[:-1])
  with pytest.raises(ValueError, match="up_block"):
    RiadUNet(widths, up_block="bn_only", rngs=nnx.Rngs(0))


# ----------------------------------------------------------------------------
# NumPy references (float64)
# ----------------------------------------------------------------------------
def _per_channel(fn, a):
  return np.stack([np.stack([fn(a[b, :, :, c]) for c in range(a.shape[-1])], -1)
                   for b in range(a.shape[0])])


def np_ssim_map(x, y):
  """11x11 Gaussian sigma 1.5, zero padding 5, C1 = 0.01^2, C2 = 0.03^2 (the
  ports' constants, whatever the data range)."""
  g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5 ** 2))
  g = np.outer(g, g) / np.outer(g, g).sum()
  f = lambda a: _per_channel(lambda p: scipy.ndimage.correlate(p, g, mode="constant"), a)
  c1, c2 = 0.01 ** 2, 0.03 ** 2
  mx, my = f(x), f(y)
  sxx, syy, sxy = f(x * x) - mx * mx, f(y * y) - my * my, f(x * y) - mx * my
  return ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))


def torch_bilinear(a, size):
  """[B,h,w,C] -> [B,size,size,C], F.interpolate bilinear, align_corners=False."""
  import torch
  import torch.nn.functional as F
  t = torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))
  return F.interpolate(t, size=(size, size), mode="bilinear",
                       align_corners=False).numpy().transpose(0, 2, 3, 1)


def _pool(a):
  return a.reshape(a.shape[0], a.shape[1] // 2, 2, a.shape[2] // 2, 2, -1).mean((2, 4))


PX = np.array([[-1, 0, 1]] * 3, np.float64) / 3.0
PY = np.array([[1, 1, 1], [0, 0, 0], [-1, -1, -1]], np.float64) / 3.0


def np_msgms_map(x, y, scales=4):
  """taikiinoue45 MSGMSLoss(as_loss=False): colour, Prewitt zero padding 1."""
  def gm(a):
    gx = _per_channel(lambda p: scipy.ndimage.correlate(p, PX, mode="constant"), a)
    gy = _per_channel(lambda p: scipy.ndimage.correlate(p, PY, mode="constant"), a)
    return np.sqrt(gx ** 2 + gy ** 2 + 1e-12)
  h = x.shape[1]
  total = 0.0
  for s in range(scales):
    if s:
      x, y = _pool(x), _pool(y)
    g1, g2 = gm(x), gm(y)
    total = total + torch_bilinear((2 * g1 * g2 + 0.0026) / (g1 ** 2 + g2 ** 2 + 0.0026 + 1e-12), h)
  return np.mean(1 - total / scales, axis=-1)


def _port_gms(x, y):
  """plutoyuxie GMS: channel mean, kornia<0.9 MedianBlur(3) (zero padding),
  Prewitt with padding 0, sqrt without epsilon, no 1e-12 -> [B,h-2,w-2,1]."""
  def gm(a):
    g = a.mean(-1, keepdims=True)
    g = _per_channel(lambda p: scipy.ndimage.median_filter(p, 3, mode="constant"), g)
    gx = _per_channel(lambda p: scipy.ndimage.correlate(p, PX)[1:-1, 1:-1], g)
    gy = _per_channel(lambda p: scipy.ndimage.correlate(p, PY)[1:-1, 1:-1], g)
    return np.sqrt(gx ** 2 + gy ** 2)
  g1, g2 = gm(x), gm(y)
  return (2 * g1 * g2 + 0.0026) / (g1 ** 2 + g2 ** 2 + 0.0026)


def port_msgms_score(x, y):
  """plutoyuxie MSGMS_Score: (1 - sum of the 4 upsampled GMS maps) / 4, [B,H,W]."""
  h = x.shape[1]
  total = 0.0
  for s in range(4):
    if s:
      x, y = _pool(x), _pool(y)
    total = total + torch_bilinear(_port_gms(x, y), h)
  return ((1 - total) / 4)[..., 0]


def port_msgms_loss(x, y):
  """plutoyuxie MSGMS_Loss: mean over the 4 scales of mean(1 - GMS), no resize."""
  total = 0.0
  for s in range(4):
    if s:
      x, y = _pool(x), _pool(y)
    total = total + np.mean(1 - _port_gms(x, y))
  return total / 4


# ----------------------------------------------------------------------------
# losses and score in the [-1, 1] space
# ----------------------------------------------------------------------------
def _recon_pair(seed=4):
  rng = np.random.default_rng(seed)
  x01 = _images(2, seed)
  r_half = np.clip(2 * x01 - 1 + rng.normal(0, 0.15, x01.shape), -1, 1).astype(np.float32)
  return r_half, x01


def test_loss_terms_on_the_half_space_against_numpy():
  m = _method()
  assert m.metric_space == "half"
  r_half, x01 = _recon_pair()
  terms = m.loss_terms(*m.metric_pair(jnp.asarray(r_half), jnp.asarray(x01)))
  r, x = r_half.astype(np.float64), 2 * x01.astype(np.float64) - 1
  want = {"l2": np.mean((r - x) ** 2), "ssim": 1 - np.mean(np_ssim_map(r, x)),
          "msgms": np.mean(np_msgms_map(r, x))}
  for k, v in want.items():
    assert abs(float(terms[k]) - v) < 1e-5, (k, float(terms[k]), v)
  # the previous [0, 1] space is a different loss: L2 / 4, SSIM and GMS constants 4x larger
  unit = _method("demo")
  old = unit.loss_terms(*unit.metric_pair(jnp.asarray(r_half), jnp.asarray(x01)))
  np.testing.assert_allclose(float(old["l2"]), want["l2"] / 4, rtol=1e-5)
  assert abs(float(old["ssim"]) - want["ssim"]) > 1e-2
  assert abs(float(old["msgms"]) - want["msgms"]) > 1e-3


def test_score_on_the_half_space_against_numpy():
  m = _method()
  _, state = _init(m)
  x01 = _images(2, 5)
  out = jax.jit(m.score)(state, {"image": jnp.asarray(x01)}, {})
  total = 0.0
  for k in m.ks:
    recon, _ = m.inpaint_half(state["params"], state["model_state"], jnp.asarray(x01),
                              m.score_masks(k), train=False)
    total = total + np_msgms_map(np.asarray(recon, np.float64), 2 * x01.astype(np.float64) - 1)
  want = scipy.ndimage.uniform_filter(total, size=(1, 21, 21), mode="constant")
  np.testing.assert_allclose(np.asarray(out["anomaly_map"]), want, atol=1e-5)
  np.testing.assert_allclose(np.asarray(out["image_score"]), want.max(axis=(1, 2)), atol=1e-5)


# ----------------------------------------------------------------------------
# the plutoyuxie score pipeline
# ----------------------------------------------------------------------------
def test_plutoyuxie_score_against_the_port_formula():
  """score = gaussian_filter(sum_k MSGMS_Score_k / N_k^2, sigma 7); ours equals
  the port's map plus the constant 0.75 sum_k 1 / N_k^2 (its (1 - sum) / 4
  against our 1 - sum / 4), and the image score likewise."""
  m = _method("plutoyuxie")
  assert (m.score_pipeline, m.msgms_variant) == ("plutoyuxie", "gray_median")
  _, state = _init(m)
  x01 = _images(2, 7)
  out = jax.jit(m.score)(state, {"image": jnp.asarray(x01)}, {})
  score = 0.0
  for k in m.ks:
    recon, _ = m.inpaint_half(state["params"], state["model_state"], jnp.asarray(x01),
                              m.score_masks(k), train=False)
    score = score + port_msgms_score(np.asarray(recon, np.float64),
                                     2 * x01.astype(np.float64) - 1) / (SIZE // k) ** 2
  port = np.stack([scipy.ndimage.gaussian_filter(s, sigma=7) for s in score])
  offset = 0.75 * sum(1.0 / (SIZE // k) ** 2 for k in m.ks)
  got = np.asarray(out["anomaly_map"], np.float64)
  np.testing.assert_allclose(got - offset, port, atol=2e-6)
  assert np.std(port) > 1e-4                                # not a flat map
  np.testing.assert_allclose(np.asarray(out["image_score"]) - offset, port.max(axis=(1, 2)),
                             atol=2e-6)
  # without the weights / smoothing (the previous gray_median score) it is another map
  old = _method("plutoyuxie", score_pipeline="taikiinoue45")
  old_map = np.asarray(jax.jit(old.score)(state, {"image": jnp.asarray(x01)}, {})["anomaly_map"])
  assert np.max(np.abs(old_map - offset - port)) > 1e-2


def test_plutoyuxie_training_loss_against_the_port_formula():
  m = _method("plutoyuxie")
  r_half, x01 = _recon_pair(8)
  terms = m.loss_terms(*m.metric_pair(jnp.asarray(r_half), jnp.asarray(x01)))
  want = port_msgms_loss(r_half.astype(np.float64), 2 * x01.astype(np.float64) - 1)
  assert abs(float(terms["msgms"]) - want) < 1e-5, (float(terms["msgms"]), want)


# ----------------------------------------------------------------------------
# config switches
# ----------------------------------------------------------------------------
def test_full_variants_use_the_ports_conventions_demo_the_previous_ones():
  for v in ("full", "plutoyuxie"):
    c = configs.get_config(f"riad:{v}")
    assert c.model.up_block == "conv" and c.method.metric_space == "half"
  full = configs.get_config("riad:full")
  assert full.method.score_pipeline == "taikiinoue45" and full.method.msgms_variant == "riad"
  assert full.method.msgms_loss_reduction == "map"
  port = configs.get_config("riad:plutoyuxie")
  assert (port.method.score_pipeline, port.method.msgms_variant,
          port.method.msgms_loss_reduction) == ("plutoyuxie", "gray_median", "per_scale")
  demo = configs.get_config("riad:demo")
  assert demo.model.up_block == "conv_bn_relu" and demo.method.metric_space == "unit"
  assert (demo.method.score_pipeline, demo.method.msgms_variant,
          demo.method.msgms_loss_reduction) == ("taikiinoue45", "riad", "map")


@pytest.mark.parametrize("key,value", [("model.up_block", "bn_relu"),
                                       ("method.metric_space", "minus_one_one"),
                                       ("method.score_pipeline", "gaussian"),
                                       ("method.msgms_loss_reduction", "sum"),
                                       ("method.msgms_variant", "gray")])
def test_unknown_switch_values_raise_config_error(key, value):
  c = configs.get_config("riad:full")
  c.input.image_size = SIZE
  c.model.widths = (4, 6, 8, 8)
  sect, name = key.split(".")
  c[sect][name] = value
  with pytest.raises(ConfigError, match=key.replace(".", r"\.") + ".*known"):
    stage_helpers.build(c)


def test_full_train_step_runs_and_is_finite():
  m = _method(ks=(8,))
  stage, state = _init(m)
  batch = {"image": jnp.asarray(_images(2, 9)), "category_id": jnp.zeros(2, jnp.int32)}
  p0, p1 = stage.prepare(state, batch, jax.random.PRNGKey(1), 0)
  (loss, aux), g = jax.value_and_grad(stage.loss_fn, has_aux=True)(
      state["params"], state, {**p0, **p1}, jax.random.PRNGKey(2), 0)
  assert np.isfinite(float(loss))
  assert sum(float(jnp.sum(jnp.square(v))) for v in jax.tree_util.tree_leaves(g)) > 0
