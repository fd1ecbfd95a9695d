"""EAR: eq. 1 and the upper-quartile mask against NumPy, mosaic scales per
category, quantisation and the r10 -> m* fit, a training step, scores, the ViT
saliency path, the configs."""
from __future__ import annotations

import os as _os
import sys as _sys

_sys.path.insert(0, _os.path.join(_os.path.dirname(__file__), ".."))
import stage_helpers  # noqa: E402

import importlib.util
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.ndimage

from maskjax.errors import ConfigError
from maskjax.methods.ear import core, fit_mosaic

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load_config_module():
  spec = importlib.util.spec_from_file_location("ear_cfg", os.path.join(ROOT, "configs", "ear.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def np_mask(a):
  """Upper-quartile threshold per image, float64, population std."""
  a = a.astype(np.float64)
  mu = a.mean(axis=(1, 2), keepdims=True)
  sd = a.std(axis=(1, 2), keepdims=True)
  return (a > mu + 0.674 * sd).astype(np.float32), mu + 0.674 * sd


def np_mosaic(x, m):
  b, h, w, c = x.shape
  out = np.empty_like(x, dtype=np.float64)
  for i in range(0, h, m):
    for j in range(0, w, m):
      out[:, i:i + m, j:j + m] = x[:, i:i + m, j:j + m].mean(axis=(1, 2), keepdims=True)
  return out


def tiny_config(size=32, source="spectral_residual", **method):
  c = _load_config_module().get_config("demo")
  c.input.image_size = size
  c.input.batch_size = 4
  c.model.unet_widths = (4, 4, 4, 4, 4)
  c.model.saliency_overrides = ml_collections.ConfigDict({"dim": 16, "depth": 1, "heads": 2})
  c.method.saliency_source = source
  c.train.steps = 8
  c.optim.lr = 3e-3
  for k, v in method.items():
    c.method[k] = v
  return c


def test_mask_is_exactly_upper_quartile_threshold():
  rng = np.random.default_rng(0)
  a = rng.gamma(2.0, size=(3, 24, 20)).astype(np.float32)
  want, thr = np_mask(a)
  # no pixel sits within float32 rounding of the threshold (else the test is ill-posed)
  assert np.min(np.abs(a - thr)) > 1e-4
  got = np.asarray(core.binarise(jnp.asarray(a)))
  np.testing.assert_array_equal(got, want)
  assert 0.05 < want.mean() < 0.4


@pytest.mark.parametrize("m", [4, 8])
def test_excision_equals_numpy_eq1(m):
  rng = np.random.default_rng(1)
  x = rng.uniform(size=(2, 32, 32, 3)).astype(np.float32)
  a = rng.normal(size=(2, 32, 32)).astype(np.float32)
  s, _ = np_mask(a)
  want = np_mosaic(x, m) * s[..., None] + x * (1.0 - s[..., None])
  sj = core.binarise(jnp.asarray(a))
  from maskjax.ops import mosaic as mosaic_ops
  got = core.excise(jnp.asarray(x), sj, mosaic_ops.mosaic(jnp.asarray(x), m))
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-6)
  # binary variant: the excised region is zero, the rest untouched
  got_b = np.asarray(core.excise(jnp.asarray(x), sj, None))
  np.testing.assert_allclose(got_b, x * (1.0 - s[..., None]), atol=0)


def test_method_excise_given_attention_map_matches_numpy(monkeypatch):
  """The method's excision with per-category scales (Table 1 m-hat) vs NumPy eq. 1."""
  c = tiny_config(mosaic="m_hat", mosaic_table=True)
  c.input.categories = ("mvtec/bottle", "mvtec/pill", "mvtec/wood", "other")
  method = stage_helpers.build(c)
  rng = np.random.default_rng(2)
  x = rng.uniform(size=(4, 64, 64, 3)).astype(np.float32)
  a = rng.normal(size=(4, 64, 64)).astype(np.float32)
  monkeypatch.setattr(method, "saliency", lambda state, x01: jnp.asarray(a))
  cid = np.array([2, 0, 1, 3], np.int32)
  got, s = method.excise({}, jnp.asarray(x), jnp.asarray(cid))
  s_np, _ = np_mask(a)
  np.testing.assert_array_equal(np.asarray(s), s_np)
  ms = [2, 32, 4, 8]   # wood m_hat 2, bottle 32, pill 4, fallback 8
  want = np.stack([np_mosaic(x[i:i + 1], ms[i])[0] for i in range(4)])
  want = want * s_np[..., None] + x * (1.0 - s_np[..., None])
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-6)


def test_category_scales_modes():
  cats = ["bottle", "mvtec/tile", "visa/pill", "fabric"]
  m_hat, _ = core.category_scales(cats, "m_hat", fixed_m=8, fallback_m=16)
  m_star, _ = core.category_scales(cats, "m_star", fixed_m=8, fallback_m=16,
                                   estimated={"fabric": 4})
  np.testing.assert_array_equal(m_hat, [32, 8, 16, 16])     # visa/pill is not MVTec's pill
  np.testing.assert_array_equal(m_star, [32, 2, 16, 4])
  fixed, _ = core.category_scales(cats, "fixed", fixed_m=8, fallback_m=16)
  np.testing.assert_array_equal(fixed, [8, 8, 8, 8])
  with pytest.raises(ConfigError, match="fabric"):
    core.category_scales(["fabric"], "estimated", fixed_m=8, fallback_m=16)
  with pytest.raises(ConfigError, match="m_best"):
    core.category_scales(cats, "m_best", fixed_m=8, fallback_m=16)


def test_table_is_the_papers_table_1():
  t = core.load_table()["categories"]
  assert len(t) == 15
  assert (t["cable"]["m_star"], t["cable"]["m_hat"]) == (32, 16)
  assert (t["wood"]["m_star"], t["wood"]["m_hat"]) == (8, 2)
  assert (t["grid"]["m_star"], t["grid"]["m_hat"]) == (32, 64)
  assert sum(r["group"] == "texture" for r in t.values()) == 5


@pytest.mark.parametrize("v,want", [(3.0, 4), (5.6, 4), (5.7, 8), (1.0, 2), (0.3, 2),
                                    (-7.0, 2), (47.0, 64), (44.0, 32), (300.0, 256)])
def test_quantise_nearest_power_of_two_floor_2(v, want):
  assert core.quantise_pow2(v) == want
  assert want == max(2, 2 ** int(np.round(np.log2(v)))) if v > 0 else want == 2


def test_quantise_cap():
  assert core.quantise_pow2(300.0, cap=64) == 64


def test_fit_on_synthetic_pairs():
  table = core.load_table()
  rng = np.random.default_rng(3)
  r10 = {}
  # objects: m* = -0.5 r10 + 70 exactly; textures: m* = 0.2 r10 + 1 + noise-free
  for name, row in table["categories"].items():
    if row["group"] == "object":
      r10[name] = (70.0 - row["m_star"]) / 0.5
    else:
      r10[name] = (row["m_star"] - 1.0) / 0.2
  r10["newthing"] = 100.0
  fits = fit_mosaic.fit_groups(r10, table)
  assert fits["object"]["slope"] == pytest.approx(-0.5, rel=1e-9)
  assert fits["object"]["intercept"] == pytest.approx(70.0, rel=1e-9)
  assert fits["texture"]["slope"] == pytest.approx(0.2, rel=1e-9)
  np_slope, np_icpt = np.polyfit(list(r10.values())[:15], [table["categories"][k]["m_star"]
                                                          for k in list(r10)[:15]], 1)
  assert fits["all"]["slope"] == pytest.approx(np_slope, rel=1e-9)
  est = fit_mosaic.estimate(r10, fits, table=table, groups={"newthing": "object"})
  for name, row in table["categories"].items():
    assert est[name]["m_hat"] == row["m_star"]      # exact line -> exact powers of 2
  assert est["newthing"]["m_hat"] == core.quantise_pow2(-0.5 * 100 + 70)   # 20 -> 16
  assert est["newthing"]["m_hat"] == 16
  # no pairs -> no fit, no estimate
  assert fit_mosaic.fit_groups({"fabric": 3.0, "tiles": 5.0}, table) == {}
  del rng


def _batch(size=32, b=4, seed=0):
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:size, 0:size] / size
  base = np.stack([0.5 + 0.3 * np.sin(6 * xx), 0.5 + 0.3 * np.cos(5 * yy), 0.4 + 0 * xx], -1)
  img = np.clip(base[None] + 0.02 * rng.normal(size=(b, size, size, 3)), 0, 1).astype(np.float32)
  return {"image": jnp.asarray(img), "category_id": jnp.zeros((b,), jnp.int32),
          "label": jnp.zeros((b,), jnp.int32), "mask": jnp.zeros((b, size, size)),
          "valid": jnp.ones((b,), bool)}


def test_train_step_decreases_loss_vit_frozen_and_score_shapes():
  """The ViT saliency path end to end: loss falls, the ViT stays frozen, score shapes."""
  c = tiny_config(source="vit")
  method = stage_helpers.build(c)
  assert "random-init ViT" in method.describe()["saliency"]
  stage = stage_helpers.stages(method)[0]
  state = jax.jit(stage.init)(jax.random.PRNGKey(0), None)
  before = jax.tree.map(np.asarray, state["extras"]["saliency"])
  step = jax.jit(stage.train_step)
  batch = _batch()
  losses = []
  for i in range(8):
    state, met = step(state, batch, jax.random.PRNGKey(i))
    losses.append(float(met["loss"]))
    assert {"loss/l2", "loss/ssim", "loss/msgms", "loss/comb"} <= set(met)
  assert np.all(np.isfinite(losses))
  assert losses[-1] < losses[0]
  # LAMP: loss = -log(1 - comb)
  assert float(met["loss"]) == pytest.approx(-np.log1p(-float(met["loss/comb"])), rel=1e-5)
  jax.tree.map(np.testing.assert_array_equal, before,
               jax.tree.map(np.asarray, state["extras"]["saliency"]))
  out = jax.jit(lambda s, b: method.score(s, b, {}))(state, batch)
  assert out["anomaly_map"].shape == (4, 32, 32)
  assert out["image_score"].shape == (4,)
  np.testing.assert_allclose(np.asarray(out["image_score"]),
                             np.asarray(out["anomaly_map"]).max(axis=(1, 2)), rtol=1e-6)


def test_vit_saliency_mask_is_thresholded_cls_attention():
  from maskjax.models import vit
  from maskjax.ops import normalize
  method = stage_helpers.build(tiny_config(source="vit"))
  state = method.saliency_state(jax.random.PRNGKey(0))
  batch = _batch()
  module = method.vit_f.module(state["saliency"], {})
  a = np.asarray(vit.saliency(module, normalize.imagenet(batch["image"]), (32, 32)))
  s = np.asarray(jax.jit(method.saliency_mask)(state, batch["image"]))
  np.testing.assert_array_equal(s, np_mask(a)[0])


def test_variants_wo_attn_and_wo_obf():
  batch = _batch()
  m = stage_helpers.build(tiny_config(use_attention=False))
  xp, s = m.excise({}, batch["image"], batch["category_id"])
  from maskjax.ops import mosaic as mosaic_ops
  np.testing.assert_allclose(np.asarray(xp), np.asarray(mosaic_ops.mosaic(batch["image"], 8)),
                             atol=1e-6)
  assert float(jnp.min(s)) == 1.0
  m = stage_helpers.build(tiny_config(obfuscation="binary"))
  xp, s = m.excise({}, batch["image"], batch["category_id"])
  np.testing.assert_allclose(np.asarray(xp), np.asarray(batch["image"] * (1 - s[..., None])))


def test_spectral_residual_against_numpy():
  rng = np.random.default_rng(4)
  x = rng.uniform(size=(2, 64, 64, 3)).astype(np.float32)
  got = np.asarray(core.spectral_residual_saliency(jnp.asarray(x), work_size=64, blur_sigma=2.5))
  g = x.astype(np.float64).mean(-1)
  f = np.fft.fft2(g)
  la = np.log(np.abs(f) + 1e-8)
  avg = scipy.ndimage.uniform_filter(la, size=(1, 3, 3), mode="wrap")
  s = np.abs(np.fft.ifft2(np.exp(la - avg + 1j * np.angle(f)))) ** 2
  r = int(np.ceil(2 * 2.5))
  t = np.arange(-r, r + 1)
  k1 = np.exp(-t ** 2 / (2 * 2.5 ** 2))
  k = np.outer(k1, k1) / np.outer(k1, k1).sum()
  want = np.stack([scipy.ndimage.correlate(si, k, mode="constant") for si in s])
  np.testing.assert_allclose(got, want, rtol=2e-3, atol=1e-4 * want.max())


def test_config_variants_and_errors():
  mod = _load_config_module()
  for v in mod.VARIANTS:
    c = mod.get_config(v)
    assert c.method.name == "ear"
  assert mod.get_config("wo_obf").method.obfuscation == "binary"
  assert mod.get_config("wo_attn").method.use_attention is False
  assert mod.get_config("demo").method.saliency_source == "spectral_residual"
  with pytest.raises(ConfigError, match="nope.*full"):
    mod.get_config("nope")
  c = tiny_config()
  c.method.saliency_source = "dino"
  with pytest.raises(ConfigError, match="saliency_source"):
    stage_helpers.build(c)


def test_sweep_grid_is_table_2():
  spec = importlib.util.spec_from_file_location(
      "ear_grid", os.path.join(ROOT, "configs", "sweeps", "ear_grid.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  s = mod.get_sweep()
  assert s["method"] == "ear"
  assert s["grid"] == {"model.kernel_size": [3, 5], "optim.lr": [1e-3, 1e-4, 1e-5],
                       "optim.schedule": ["constant", "warmup", "sgdr"]}
  assert len(s["categories"]) == 15 and s["entries"][0]["grid"] == s["grid"]


def test_sgdr_and_warmup_schedules():
  from maskjax.train_utils import make_optimizer as make_tx
  from maskjax import config_base
  cfg = config_base.base_config().optim   # the full schema: no key left to a default
  cfg.update({"name": "sgd", "lr": 0.1, "momentum": 0.0, "schedule": "sgdr", "sgdr_period": 4,
              "end_lr": 0.0})
  tx = make_tx(cfg, 10)
  p = jnp.zeros(())
  st = tx.init(p)
  lrs = []
  for _ in range(6):
    u, st = tx.update(jnp.ones(()), st, p)
    lrs.append(-float(u))
  want = [0.1 * 0.5 * (1 + np.cos(np.pi * (t % 4) / 4)) for t in range(6)]
  np.testing.assert_allclose(lrs, want, rtol=1e-5)
  cfg.schedule = "warmup"
  cfg.warmup_steps = 4
  cfg.warmup_init_lr = 0.0
  tx = make_tx(cfg, 10)
  st = tx.init(p)
  lrs = []
  for _ in range(6):
    u, st = tx.update(jnp.ones(()), st, p)
    lrs.append(-float(u))
  np.testing.assert_allclose(lrs, [0.0, 0.025, 0.05, 0.075, 0.1, 0.1], rtol=1e-5, atol=1e-8)
