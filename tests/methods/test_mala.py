"""MALA: image score vs NumPy pooling, TBM layout and channel semantics, the
frozen stage-2 encoder, the PLPM update, the foreground mask, pretrained
weights, config variants."""
from __future__ import annotations

import os as _os
import sys as _sys

_sys.path.insert(0, _os.path.join(_os.path.dirname(__file__), ".."))
import stage_helpers  # noqa: E402

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import mala as mala_config
from maskjax.errors import ConfigError
from maskjax.methods import mala
from maskjax.methods.mala import heads as mala_heads
from maskjax.ops import perlin


def _tiny_config(*variants, **method):
  c = mala_config.get_config(",".join(("demo",) + variants))
  c.input.image_size = 32
  c.model.encoder = "vit_tiny_patch8"
  c.model.encoder_overrides.dim = 32
  c.model.encoder_overrides.depth = 2
  c.model.encoder_overrides.heads = 2
  c.model.decoder_dim = 16
  c.model.decoder_depth = 1
  c.model.decoder_heads = 2
  c.model.plpm_width = 4
  c.model.plpm_layers = 2
  c.method.score_kernel = 3
  c.method.map_sigma = 0.0   # the raw map (the demo smooths it; test_map_sigma_... covers that)
  c.train.steps = 3
  for k, v in method.items():
    c.method[k] = v
  return c


def _batch(n=4, size=32, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": jnp.asarray(rng.random((n, size, size, 3), np.float32)),
          "mask": jnp.asarray((rng.random((n, size, size)) > 0.8).astype(np.float32)),
          "label": jnp.ones((n,), jnp.int32), "category_id": jnp.zeros((n,), jnp.int32)}


def _np_avgpool_max(m, k):
  """Zero-padded k x k mean (divisor k*k), stride 1, then max per image."""
  p = k // 2
  padded = np.pad(m.astype(np.float64), ((0, 0), (p, p), (p, p)))
  b, h, w = m.shape
  out = np.zeros((b, h, w))
  for i in range(h):
    for j in range(w):
      out[:, i, j] = padded[:, i:i + k, j:j + k].sum(axis=(1, 2)) / (k * k)
  return out.max(axis=(1, 2))


@pytest.fixture(scope="module")
def trained():
  """A tiny model after 6 stage-1 steps (MAE lr 0 so that the reconstructions are
  fixed and only the PLPM discriminator learns, one batch and one masking key)
  and 2 stage-2 steps. Shared by the tests below (one compile per stage)."""
  c = _tiny_config()
  c.method.stage1.base_lr = 0.0
  c.method.disc_lr = 3e-3
  method = stage_helpers.build(c)
  s1, s2 = stage_helpers.stages(method)
  batch = _batch()
  st1_0 = jax.jit(s1.init)(jax.random.key(0), None)
  st1 = jax.tree.map(jnp.copy, st1_0)
  step1 = jax.jit(s1.train_step)
  key = jax.random.key(7)
  disc_losses = []
  for i in range(6):
    if i == 5:
      before = jax.tree.map(jnp.copy, st1)
    st1, m1 = step1(st1, batch, key)
    disc_losses.append(float(m1["disc/loss"]))
  st2_0 = jax.jit(s2.init)(jax.random.key(1), st1)
  st2 = jax.tree.map(jnp.copy, st2_0)
  step2 = jax.jit(s2.train_step)
  for i in range(2):
    st2, m2 = step2(st2, batch, jax.random.key(10 + i))
  return dict(method=method, st1_0=st1_0, st1=st1, st1_before_last=before, key=key,
              disc_losses=disc_losses, st2_0=st2_0, st2=st2, m1=m1, m2=m2, batch=batch)


# ----------------------------------------------------------------------------
def test_image_score_equals_numpy_avgpool_max():
  rng = np.random.default_rng(1)
  m = rng.random((3, 13, 11)).astype(np.float32)
  m[1, 0:3, 0:3] += 2.0      # a corner blob: the zero padding matters
  for k in (1, 3, 5):
    np.testing.assert_allclose(np.asarray(mala.image_score(jnp.asarray(m), k)),
                               _np_avgpool_max(m, k), rtol=1e-5, atol=1e-6)


def test_score_map_is_channel0_probability_and_score_is_pooled_max(trained):
  method, st2, batch = trained["method"], trained["st2"], trained["batch"]
  out = jax.jit(method.score)(st2, batch, {})
  amap = np.asarray(out["anomaly_map"])
  assert amap.shape == (4, 32, 32) and np.all((amap >= 0) & (amap <= 1))
  np.testing.assert_allclose(np.asarray(out["image_score"]),
                             _np_avgpool_max(amap, method.config.method.score_kernel),
                             rtol=1e-5, atol=1e-6)
  logits = np.asarray(method._map_logits(st2["model_state"]["encoder"], st2["params"]["decoder"],
                                         st2["params"]["tbm"], st2["model_state"]["mae"], batch["image"]),
                      np.float64)
  assert logits.shape == (4, 32, 32, 2)
  e = np.exp(logits - logits.max(-1, keepdims=True))
  np.testing.assert_allclose(amap, e[..., 0] / e.sum(-1), rtol=1e-5, atol=1e-6)


def test_map_sigma_smooths_the_map_not_the_image_score(trained):
  """map_sigma 2: the map is scipy.ndimage.gaussian_filter of the probability
  map; the image score is the pooled max of the unsmoothed one. Also through a
  resize: a 48 px input is scored at 32 px and the smoothed map resized back."""
  import scipy.ndimage
  method, st2, batch = trained["method"], trained["st2"], trained["batch"]
  plain = jax.jit(method.score)(st2, batch, {})
  c = _tiny_config()
  c.method.map_sigma = 2.0
  smooth = stage_helpers.build(c)
  assert "sigma 2" in smooth.describe()["map_smoothing"]
  out = jax.jit(smooth.score)(st2, batch, {})
  raw = np.asarray(plain["anomaly_map"], np.float64)
  want = np.stack([scipy.ndimage.gaussian_filter(m, 2.0) for m in raw])
  np.testing.assert_allclose(np.asarray(out["anomaly_map"]), want, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(out["image_score"]), np.asarray(plain["image_score"]))
  big = dict(batch, image=jax.image.resize(batch["image"], (4, 48, 48, 3), "linear"))
  out48, plain48 = jax.jit(smooth.score)(st2, big, {}), jax.jit(method.score)(st2, big, {})
  assert out48["anomaly_map"].shape == (4, 48, 48)
  np.testing.assert_array_equal(np.asarray(out48["image_score"]), np.asarray(plain48["image_score"]))
  assert np.std(np.asarray(out48["anomaly_map"])) < np.std(np.asarray(plain48["anomaly_map"]))
  c.method.map_sigma = -1.0
  with pytest.raises(ConfigError, match="config.method.map_sigma=-1.0 must be >= 0"):
    stage_helpers.build(c)


def test_tbm_shape_and_token_layout():
  p, grid, de, dd = 4, (2, 3), 8, 6
  tbm = mala_heads.TokenBalanceModule(de, dd, p, rngs=__import__("flax").nnx.Rngs(0))
  rng = np.random.default_rng(0)
  b, l = 2, grid[0] * grid[1]
  first, last = (jnp.asarray(rng.normal(size=(b, l, de)), jnp.float32) for _ in range(2))
  dec = jnp.asarray(rng.normal(size=(b, l, dd)), jnp.float32)
  tokens = tbm(first, last, dec)
  assert tokens.shape == (b, l, 2 * p * p)
  # eq. (5) with the module's own weights, in NumPy
  k_in, b_in = np.asarray(tbm.proj_in.kernel[...]), np.asarray(tbm.proj_in.bias[...])
  k_out, b_out = np.asarray(tbm.proj_out.kernel[...]), np.asarray(tbm.proj_out.bias[...])
  fused = np.concatenate([first, last], -1) @ k_in + b_in
  want = np.concatenate([fused, dec], -1) @ k_out + b_out
  np.testing.assert_allclose(np.asarray(tokens), want, rtol=1e-4, atol=1e-4)
  # token t = r * w + c covers pixels [r*p:(r+1)*p, c*p:(c+1)*p]; values laid out [p, p, 2]
  amap = np.asarray(tbm.to_map(tokens, grid))
  assert amap.shape == (b, grid[0] * p, grid[1] * p, 2)
  t = np.asarray(tokens).reshape(b, l, p, p, 2)
  for r in range(grid[0]):
    for c in range(grid[1]):
      np.testing.assert_array_equal(amap[:, r * p:(r + 1) * p, c * p:(c + 1) * p],
                                    t[:, r * grid[1] + c])


def test_channel0_is_the_anomaly_channel_in_the_loss():
  rng = np.random.default_rng(0)
  target = (rng.random((2, 8, 8)) > 0.7).astype(np.float32)
  good = np.stack([4.0 * (2 * target - 1), np.zeros_like(target)], -1)   # ch0 high on defects
  bad = good[..., ::-1].copy()
  l_good, aux = mala.stage2_loss(jnp.asarray(good), jnp.asarray(target), 1.0, 1.0)
  l_bad, _ = mala.stage2_loss(jnp.asarray(bad), jnp.asarray(target), 1.0, 1.0)
  assert float(l_good) < 0.05 < float(l_bad)
  # independent DRAEM focal + L1 in NumPy
  x = good.astype(np.float64)
  pr = np.exp(x - x.max(-1, keepdims=True)); pr /= pr.sum(-1, keepdims=True)
  onehot = np.stack([target, 1 - target], -1).clip(1e-5, 1 - 1e-5)   # anomaly = channel 0
  pt = (onehot * pr).sum(-1) + 1e-5
  focal = np.mean(-(1 - pt) ** 2 * np.log(pt))
  l1 = np.mean(np.abs(target - pr[..., 0]))
  np.testing.assert_allclose(float(aux["loss/focal"]), focal, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(float(aux["loss/l1"]), l1, rtol=1e-5)


def test_stage2_encoder_frozen_without_optimizer_state(trained):
  method, st1, st2_0, st2 = trained["method"], trained["st1"], trained["st2_0"], trained["st2"]
  enc1, dec1 = method.split_mae(st1["params"])
  # stage 2 starts from stage 1's encoder and decoder
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               enc1, st2_0["model_state"]["encoder"])
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               dec1, st2_0["params"]["decoder"])
  # encoder unchanged after the steps, decoder and TBM trained
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               st2_0["model_state"]["encoder"], st2["model_state"]["encoder"])
  changed = jax.tree.leaves(jax.tree.map(
      lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), st2_0["params"],
      st2["params"]))
  assert sum(changed) > 0.9 * len(changed)
  # the optimizer state holds exactly two moments per trainable value, nothing for the encoder
  opt_sizes = sum(np.size(x) for x in jax.tree.leaves(st2["opt_state"]) if np.ndim(x) > 0)
  train_size = sum(np.size(x) for x in jax.tree.leaves(st2["params"]))
  enc_size = sum(np.size(x) for x in jax.tree.leaves(st2["model_state"]["encoder"]))
  assert enc_size > 0 and opt_sizes == 2 * train_size
  assert "encoder" not in jax.tree_util.keystr(jax.tree_util.tree_flatten_with_path(
      st2["opt_state"])[0])
  assert np.isfinite(float(trained["m2"]["loss"]))


def test_plpm_discriminator_step_lowers_bce(trained):
  """MAE lr 0 (reconstructions fixed) so only the discriminator learns."""
  method, batch, key = trained["method"], trained["batch"], trained["key"]
  losses = trained["disc_losses"]
  assert losses[-1] < losses[0] - 0.05, losses
  # the reported value is the BCE of the discriminator before its update, in NumPy
  from maskjax.ops import masks
  st = trained["st1_before_last"]
  keep, _, restore = masks.mae_random_masking(key, 4, method.num_tokens, 0.75)
  recon = jax.jit(method._reconstruct)(st["params"], st["model_state"], batch["image"], keep, restore)
  disc = jax.jit(method._disc)
  lo = np.asarray(disc(st["extras"]["disc"], batch["image"]), np.float64)
  lp = np.asarray(disc(st["extras"]["disc"], recon), np.float64)
  sig = lambda z: 1 / (1 + np.exp(-z))
  bce = 0.5 * (np.mean(-np.log(1 - sig(lo))) + np.mean(-np.log(sig(lp))))
  np.testing.assert_allclose(losses[-1], bce, rtol=1e-4)
  # the reconstruction side's pseudo-label term: 0.5 * mean(-log(1 - sigmoid(D(recon))))
  np.testing.assert_allclose(float(trained["m1"]["loss/pseudo_label"]),
                             0.5 * np.mean(-np.log(1 - sig(lp))), rtol=1e-4)
  # MAE lr 0: parameters untouched
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               trained["st1_0"]["params"], trained["st1"]["params"])


def test_foreground_mask_and_perlin_transform():
  yy, xx = np.mgrid[0:48, 0:48]
  disk = ((yy - 24) ** 2 + (xx - 20) ** 2 <= 12 ** 2)
  img = np.full((48, 48, 3), 0.15, np.float32)
  img[disk] = (0.9, 0.8, 0.7)
  img += np.random.default_rng(0).normal(0, 0.02, img.shape).astype(np.float32)
  fg = mala.foreground_mask(img)
  assert fg is not None
  iou = np.logical_and(fg > 0.5, disk).sum() / np.logical_or(fg > 0.5, disk).sum()
  assert iou > 0.9
  flat = np.full((48, 48, 3), 0.5, np.float32)
  assert mala.foreground_mask(flat) is None
  tr = mala.PerlinTransform(anomaly_prob=0.8, local_prob=1.0)
  labels = []
  for i in range(40):
    ex = tr({"image": img, "mask": np.zeros((48, 48), np.float32), "label": np.int32(0),
             "category_id": np.int32(0)}, np.random.default_rng(i))
    assert ex["image"].shape == (48, 48, 3) and ex["mask"].dtype == np.float32
    assert int(ex["label"]) == int(ex["mask"].sum() > 0)
    assert not np.any(ex["mask"][~disk & (fg < 0.5)])       # local: inside the foreground
    labels.append(int(ex["label"]))
  assert 0.5 <= np.mean(labels) <= 0.95
  # backdrop_prob 0 draws nothing extra: the recipes without it are unchanged
  same = mala.PerlinTransform(anomaly_prob=0.8, local_prob=1.0, backdrop_prob=0.0)
  for i in range(10):
    ex = {"image": img, "mask": np.zeros((48, 48), np.float32), "label": np.int32(0)}
    np.testing.assert_array_equal(tr(ex, np.random.default_rng(i))["image"],
                                  same(ex, np.random.default_rng(i))["image"])


def test_backdrop_anomalies_take_a_piece_of_the_object_away():
  # a bright disk on a dark backdrop whose rows differ, so the fill's source shows
  yy, xx = np.mgrid[0:48, 0:48]
  disk = ((yy - 24) ** 2 + (xx - 24) ** 2 <= 13 ** 2)
  img = np.zeros((48, 48, 3), np.float32)
  img[..., 0] = 0.1 + 0.002 * yy
  img[..., 2] = 0.15
  img[disk] = (0.9, 0.8, 0.7)
  fg = mala.foreground_mask(img)
  assert np.array_equal(fg > 0.5, disk)
  tex = perlin.backdrop_texture(img, fg)
  # independent: each disk pixel takes the colour of a backdrop pixel at the least distance
  bg_y, bg_x = np.nonzero(~disk)
  for y, x in zip(*np.nonzero(disk)):
    d2 = (bg_y - y) ** 2 + (bg_x - x) ** 2
    near = d2 == d2.min()
    assert any(np.array_equal(tex[y, x], img[by, bx]) for by, bx in zip(bg_y[near], bg_x[near]))
  np.testing.assert_array_equal(tex[~disk], img[~disk])
  tr = mala.PerlinTransform(anomaly_prob=1.0, local_prob=1.0, backdrop_prob=1.0)
  seen = 0
  for i in range(20):
    ex = tr({"image": img, "mask": np.zeros((48, 48), np.float32), "label": np.int32(0)},
            np.random.default_rng(i))
    m = ex["mask"] > 0
    assert not np.any(m & ~disk)
    np.testing.assert_array_equal(ex["image"][~m], img[~m])
    if m.any():   # (1 - beta) * backdrop + beta * object, beta in [0, 0.8]: darker than the disk
      seen += 1
      beta = (ex["image"][m][:, 1] - tex[m][:, 1]) / (0.8 - tex[m][:, 1])
      assert np.all(beta <= 0.8 + 1e-5) and np.ptp(beta) < 1e-5
      np.testing.assert_allclose(ex["image"][m], (1 - beta[0]) * tex[m] + beta[0] * img[m], atol=1e-6)
  assert seen >= 10
  # textures (no foreground found) keep global texture anomalies
  flat = np.full((48, 48, 3), 0.5, np.float32)
  assert np.array_equal(perlin.backdrop_texture(flat, np.zeros((48, 48))), flat)


def test_init_from_converted_mae(tmp_path):
  from maskjax import weights
  c = _tiny_config()
  method = stage_helpers.build(c)
  rng = np.random.default_rng(0)
  shapes = method.f_mae.params          # the MAE's parameter shapes (abstract)
  src = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)
  template = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)
  flat = weights.flatten(src)
  weights.save(str(tmp_path / "mae"), flat, {"kind": "mae", "arch": "test", "config": {}})
  enc_only = {k[len("encoder."):]: v for k, v in flat.items() if k.startswith("encoder.")}
  weights.save(str(tmp_path / "enc"), enc_only, {"kind": "vit", "arch": "test", "config": {}})
  tflat = weights.flatten(template)
  for name, expect_all in (("mae", True), ("enc", False)):
    c.model.init_from = str(tmp_path / name)
    m = stage_helpers.build(c)
    got = weights.flatten(jax.device_get(jax.jit(m._pretrained_mae)(template)))
    assert set(got) == set(flat)
    for k, v in flat.items():
      want = v if (expect_all or k.startswith("encoder.")) else tflat[k]
      np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want), err_msg=k)
  c.model.decoder_dim = 24
  c.model.init_from = str(tmp_path / "mae")
  m = stage_helpers.build(c)
  with pytest.raises(Exception, match="does not fit"):
    jax.eval_shape(stage_helpers.stages(m)[0].init, jax.random.key(0), None)


def test_config_variants_and_errors():
  for v in ("", "mvtec", "visa", "per_category", "demo", "demo_multi", "reduced",
            "no_stage1,no_plpm,no_tbm", "recon_score", "bf16", "mvtec,per_category"):
    c = mala_config.get_config(v)
    assert c.method.name == "mala"
  full = mala_config.get_config()
  assert full.input.categories == ("mvtec/*", "visa/*") and full.input.format == "multi"
  assert full.model.encoder == "vit_large_patch16" and full.input.image_size == 224
  assert full.method.stage1.batch_size == 128 and full.method.stage2.batch_size == 32
  with pytest.raises(ConfigError, match="'nope'.*known: mvtec"):
    mala_config.get_config("demo,nope")
  c = _tiny_config()
  c.method.score_kernel = 4
  with pytest.raises(ConfigError, match="score_kernel"):
    stage_helpers.build(c)
  for key in ("anomaly_prob", "local_prob", "self_texture_prob", "backdrop_prob"):
    c = _tiny_config()
    c.method.stage2[key] = 1.5
    with pytest.raises(ConfigError, match=f"config.method.stage2.{key}=1.5 must be in"):
      stage_helpers.build(c)
  # stage lengths: epochs * ceil(samples_per_category * categories / batch)
  c = _tiny_config()
  c.train.steps = 0
  full = mala_config.get_config().method
  for name, key in (("stage1", "stage1"), ("stage2", "stage2")):
    c.method[key].epochs = full[key].epochs
    c.method[key].samples_per_category = full[key].samples_per_category
    c.method[key].batch_size = full[key].batch_size
  from maskjax.methods import DataInfo, build_method
  info = DataInfo.uniform([f"c{i}" for i in range(27)], 10, 32)   # MVTec AD + VisA
  s1, s2 = stage_helpers.stages(build_method(c, info))
  assert s1.steps == 2000 * -(-200 * 27 // 128) and s2.steps == 700 * -(-80 * 27 // 32)
  assert s1.samples_per_epoch == 200 and s2.samples_per_epoch == 80
  # ablations: stage lists
  names = lambda *v: [s.name for s in stage_helpers.stages(stage_helpers.build(_tiny_config(*v)))]
  assert names() == ["stage1", "stage2"]
  assert names("no_stage1") == ["stage2"]
  assert names("recon_score") == ["stage1"]


def test_ablations_run(trained):
  batch = trained["batch"]
  # no stage 1 + no TBM: stage 2 from scratch, decoder-only head
  method = stage_helpers.build(_tiny_config("no_stage1", "no_tbm"))
  (s2,) = stage_helpers.stages(method)
  st = jax.jit(s2.init)(jax.random.key(0), None)
  assert "proj_in" not in st["params"]["tbm"]
  st, m = jax.jit(s2.train_step)(st, batch, jax.random.key(1))
  assert np.isfinite(float(m["loss"]))
  # reconstruction-based scoring with the stage-1 model
  method = stage_helpers.build(_tiny_config("recon_score"))
  out = jax.jit(method.score)(trained["st1"], batch, {})
  amap = np.asarray(out["anomaly_map"])
  assert amap.shape == (4, 32, 32) and np.all(np.isfinite(amap)) and amap.max() > 0
  np.testing.assert_allclose(np.asarray(out["image_score"]), _np_avgpool_max(amap, 3),
                             rtol=1e-5, atol=1e-6)


def test_balanced_sampling_quotas_and_per_category_runs():
  c = mala_config.get_config("demo")
  stages = stage_helpers.stages(stage_helpers.build(c))
  assert [s.samples_per_epoch for s in stages] == [
      c.method.stage1.samples_per_category, c.method.stage2.samples_per_category]
  with pytest.raises(ConfigError, match="one model per category"):
    stage_helpers.stages(stage_helpers.build(mala_config.get_config("demo,per_category")))
  one = mala_config.get_config("demo,per_category")
  one.input.demo_source = "synthetic"
  one.input.categories = ("pill",)
  assert len(stage_helpers.stages(stage_helpers.build(one))) == 2
