"""SSM full recipe against the official PyTorch code (MediaBrain-SJTU/SSM
`models/unet_multi.py`, `UNet(up_mode='upsample')`):

* the U-Net with the full variant's switches (encoder on the 3 channels of
  image * mask, nearest x2 + bare 1x1 conv, PyTorch "nearest" mask resize)
  against a PyTorch twin written like the official net, with the same weights;
* the "floor" mask resize against `F.interpolate(mode="nearest")`;
* the full variant resolving to those switches, the demo keeping the previous
  net exactly (same parameter tree, same init values);
* unknown switch values refused with a ConfigError naming the key.
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
from flax import nnx  # noqa: E402

from maskjax import configs, train_utils  # noqa: E402
from maskjax.errors import ConfigError  # noqa: E402
from maskjax.models.unet import SsmUNet, resize_mask  # noqa: E402
from maskjax.ops import masks as masks_lib  # noqa: E402

SIZE = 32
WIDTHS = (4, 6, 8, 8)
OFFICIAL = {"up_block": "conv", "up_kernel": 1, "mask_resize": "floor", "encoder_input": "image"}
PREVIOUS = {"up_block": "conv_bn_relu", "up_kernel": 3, "mask_resize": "half_pixel",
            "encoder_input": "image_mask"}


def _config(variant="full", **model):
  c = configs.get_config(f"ssm:{variant}")
  c.input.image_size = SIZE
  c.model.widths = WIDTHS
  c.method.ks = (4, 8)
  c.method.train_ks = (4, 8)
  c.train.protocol = "unified"
  for k, v in model.items():
    c.model[k] = v
  return c


def _inputs(n, size, seed, k=4):
  """Images in [-1, 1] and random grid masks of k x k cells (1 = visible)."""
  x = np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)
  m = np.asarray(masks_lib.random_grid_masks(jax.random.PRNGKey(seed), n, size, size, k))
  return x, m.astype(np.float32)


def _torch_run(tm, x, m, train, dtype=None):
  """The official call: model(cat(img * mask, mask)) -> (image, mask) NHWC."""
  import torch
  inp = np.concatenate([x * m[..., None], m[..., None]], axis=-1).transpose(0, 3, 1, 2)
  inp = torch.from_numpy(np.ascontiguousarray(inp))
  tm.train(train)
  with torch.no_grad():
    img, msk = tm(inp if dtype is None else inp.to(dtype))
  return img.numpy().transpose(0, 2, 3, 1), msk.numpy()[:, 0]


@nnx.jit(static_argnums=3)
def _jax_run(module, x, m, train):
  return module(x, m, train=train)


def _run(module, x, m, train=False):
  return [np.asarray(a) for a in _jax_run(module, jnp.asarray(x), jnp.asarray(m), train)]


def _max_diff(a, b):
  return max(float(np.max(np.abs(u - v))) for u, v in zip(a, b))


# ----------------------------------------------------------------------------
# the U-Net against a twin of the official PyTorch net
# ----------------------------------------------------------------------------
def test_unet_with_official_switches_matches_torch_twin():
  from torch_reference import riad_unet
  jm = nnx.jit(lambda: SsmUNet(WIDTHS, rngs=nnx.Rngs(0), **OFFICIAL))()  # jit: faster init
  randomise(jm, 1)
  assert jm.body.enc[0][0].conv.kernel.value.shape == (3, 3, 3, WIDTHS[0])  # 3-channel encoder
  assert all(u.conv.kernel.value.shape[:2] == (1, 1) and not hasattr(u, "bn") for u in jm.body.ups)
  tm = riad_unet.copy_from_maskjax(riad_unet.UNetTwin(WIDTHS, ssm=True), jm)
  # k = 4 cells: at 1/8 a feature pixel covers 2 x 2 cells, so "floor" (top-left cell) and
  # "half_pixel" (bottom-right cell) feed different masks to the deepest mask attention modules
  x, m = _inputs(2, SIZE, 2)
  want = _torch_run(tm, x, m, train=False)
  got = _run(jm, x, m)
  eval_diff = _max_diff(got, want)
  assert eval_diff < 1e-5, eval_diff
  for w in want:  # neither flat nor saturated
    sat = float(np.mean(np.abs(w) > 0.99))
    assert 0.05 < np.std(w) and sat < 0.2, (np.std(w), sat)
  # the same weights with the previous (half-pixel) mask resize are another net
  half = nnx.eval_shape(lambda: SsmUNet(WIDTHS, rngs=nnx.Rngs(0),
                                        **{**OFFICIAL, "mask_resize": "half_pixel"}))
  nnx.update(half, nnx.state(jm))
  half_diff = _max_diff(_run(half, x, m), want)
  assert half_diff > 1e-2, half_diff
  # batch statistics: 4 images at 64 px so the deepest BN sees 256 values per channel
  x, m = _inputs(4, 64, 3)
  want_t = _torch_run(tm, x, m, train=True)
  got_t = _run(jm, x, m, train=True)
  train_diff = _max_diff(got_t, want_t)
  assert train_diff < 2e-4, train_diff
  assert max(float(np.median(np.abs(g - w))) for g, w in zip(got_t, want_t)) < 1e-6
  # that difference is float32 rounding (batch-statistics BN amplifies it): the twin's own
  # float32 run is as far from its float64 run as ours is
  import torch
  want_64 = _torch_run(tm.double(), x, m, train=True, dtype=torch.float64)
  ours_64, torch_64 = _max_diff(got_t, want_64), _max_diff(want_t, want_64)
  assert ours_64 < 3 * torch_64 + 1e-6, (ours_64, torch_64)
  print(f"eval max |diff| {eval_diff:.2e}, train {train_diff:.2e} (vs float64: ours "
        f"{ours_64:.2e}, torch float32 {torch_64:.2e}), half_pixel resize vs torch {half_diff:.2e}")


# ----------------------------------------------------------------------------
# mask resize
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("size,levels", [(32, (16, 8, 4)), (256, (128, 64, 32, 16))])
def test_floor_resize_equals_torch_nearest(size, levels):
  """Random pixel masks and random k = 4 grid masks at the U-Net's levels.
  "half_pixel" differs from PyTorch on about half the pixels of a pixel mask,
  and on grid masks wherever a feature pixel covers several cells."""
  import torch
  import torch.nn.functional as F
  k = 4
  rng = np.random.default_rng(size)
  pixel = (rng.uniform(size=(3, size, size)) < 0.5).astype(np.float32)
  grid = np.asarray(masks_lib.random_grid_masks(jax.random.PRNGKey(size), 3, size, size, k))
  for kind, masks in (("pixel", pixel), ("grid", grid.astype(np.float32))):
    t = torch.from_numpy(masks[:, None])
    for h in levels:
      want = F.interpolate(t, size=[h, h], mode="nearest").numpy()[:, 0]
      floor = np.asarray(resize_mask(jnp.asarray(masks), h, h, "floor"))
      np.testing.assert_array_equal(floor, want)
      half = np.asarray(resize_mask(jnp.asarray(masks), h, h, "half_pixel"))
      frac = float(np.mean(half != want))
      if kind == "pixel" or size // h > k:
        assert 0.3 < frac < 0.7, (kind, h, frac)
      else:   # a feature pixel inside one cell: both pick that cell
        assert frac == 0.0, (kind, h, frac)
  with pytest.raises(ValueError, match="mask_resize|mode"):
    resize_mask(jnp.asarray(pixel), 8, 8, "bilinear")


# ----------------------------------------------------------------------------
# config switches
# ----------------------------------------------------------------------------
def _switches(c):
  return {k: c.model[k] for k in OFFICIAL}


def test_full_variant_uses_official_switches_demo_the_previous_ones():
  for v in ("full", "no_mam", "no_refine", "no_mam,no_refine"):
    assert _switches(configs.get_config(f"ssm:{v}")) == OFFICIAL, v
  for v in ("demo", "demo,no_mam", "demo,no_refine"):
    assert _switches(configs.get_config(f"ssm:{v}")) == PREVIOUS, v
  m = stage_helpers.build(_config("full"))
  assert {k: m.unet[k] for k in OFFICIAL} == OFFICIAL
  assert all(f"{k}={v}" in m.describe()["model"] for k, v in OFFICIAL.items())
  d = stage_helpers.build(_config("demo"))
  assert {k: d.unet[k] for k in PREVIOUS} == PREVIOUS


@pytest.mark.parametrize("key,value", [("model.up_block", "bn_relu"),
                                       ("model.up_kernel", 5),
                                       ("model.mask_resize", "bilinear"),
                                       ("model.encoder_input", "mask"),
                                       ("model.upsample", "bilinear"),
                                       ("method.input_range", "minus_one_one"),
                                       ("method.image_score", "mean"),
                                       ("method.refined_map", "s0"),
                                       ("method.eta_statistic", "image"),
                                       ("method.eta_mode", "per_image")])
def test_unknown_switch_values_raise_config_error(key, value):
  c = _config()
  sect, name = key.split(".")
  c[sect][name] = value
  with pytest.raises(ConfigError, match=key.replace(".", r"\.") + ".*known"):
    stage_helpers.build(c)


# ----------------------------------------------------------------------------
# training with the full variant; the demo net unchanged
# ----------------------------------------------------------------------------
def test_full_train_step_runs_and_is_finite():
  m = stage_helpers.build(_config("full"))
  (stage,) = stage_helpers.stages(m)
  state = jax.jit(stage.init)(jax.random.PRNGKey(0), None)
  x = jnp.asarray(np.random.default_rng(4).uniform(size=(2, SIZE, SIZE, 3)), jnp.float32)
  new, met = jax.jit(stage.train_step)(state, {"image": x}, jax.random.PRNGKey(1))
  assert np.isfinite(float(met["loss"])) and float(met["loss"]) > 0
  assert all(np.isfinite(float(met[f"loss/{n}"])) for n in ("mse", "gms", "ssim", "mask"))
  delta = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), new["params"],
                       state["params"])
  assert all(np.isfinite(v) for v in jax.tree.leaves(delta)) and max(jax.tree.leaves(delta)) > 0
  assert new["params"]["body"]["enc"][0][0]["conv"]["kernel"].shape == (3, 3, 3, WIDTHS[0])


def test_demo_builds_exactly_the_previous_net():
  """Same parameter and BatchNorm-statistic trees (names, shapes) and the same
  init values as `SsmUNet(widths, use_mam=True, upsample="nearest")` with
  every other argument at its default, and the same outputs."""
  c = configs.get_config("ssm:demo")
  m = stage_helpers.build(c)
  (stage,) = stage_helpers.stages(m)
  key = jax.random.PRNGKey(7)
  params, rest, _ = stage.init_model(key, None)
  ref = SsmUNet(tuple(c.model.widths), use_mam=True, upsample="nearest",
                rngs=nnx.Rngs(params=key))
  _, ref_params, ref_rest = train_utils.split_pure(ref)
  for got, want in ((params, ref_params), (rest, ref_rest)):
    got_leaves, got_tree = jax.tree_util.tree_flatten_with_path(got)
    want_leaves, want_tree = jax.tree_util.tree_flatten_with_path(want)
    assert got_tree == want_tree
    assert [p for p, _ in got_leaves] == [p for p, _ in want_leaves]
    for (path, a), (_, b) in zip(got_leaves, want_leaves):
      assert a.shape == b.shape and a.dtype == b.dtype, path
      assert np.array_equal(np.asarray(a), np.asarray(b)), path
  x, mk = _inputs(2, 16, 5)
  got = jax.jit(lambda p, r, x, mk: m.f.apply(p, r, x, mk, train=False)[0])(
      params, rest, jnp.asarray(x), jnp.asarray(mk))
  for a, b in zip(got, _run(ref, x, mk)):
    assert np.array_equal(np.asarray(a), b)


def test_full_variant_feeds_the_net_unit_images_demo_half_ones():
  """The official code gives the U-Net ToTensor images in [0, 1] (no Normalize)
  and compares its tanh output with them as is; the demo keeps mean = std = 0.5."""
  assert configs.get_config("ssm:full").method.input_range == "unit"
  assert configs.get_config("ssm:demo").method.input_range == "half"
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(size=(2, SIZE, SIZE, 3)), jnp.float32)
  mask = jnp.asarray(rng.uniform(size=(2, SIZE, SIZE)) > 0.5, jnp.float32)
  for variant, into, back in (("full", lambda a: a, lambda a: a),
                              ("demo", lambda a: 2 * a - 1, lambda a: (a + 1) / 2)):
    c = _config(variant)
    c.model.widths = WIDTHS
    m = stage_helpers.build(c)
    stage = stage_helpers.stages(m)[0]
    params, rest, _ = stage.init_model(jax.random.PRNGKey(0), None)
    (img, msk), _ = m.predict(params, rest, x, mask)
    net = m.f.module(params, rest)
    want_img, want_msk = net(into(x), mask, train=False)
    np.testing.assert_allclose(np.asarray(img), np.asarray(back(want_img)), atol=1e-6)
    np.testing.assert_allclose(np.asarray(msk), np.asarray(back(want_msk)), atol=1e-6)
