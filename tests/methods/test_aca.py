"""ACA: APMask token dropping, Sinkhorn balance, EMA teacher, prototype
normalisation, device crops and cut-paste, multi-scale scoring, config variants."""
from __future__ import annotations

import os as _os
import sys as _sys

_sys.path.insert(0, _os.path.join(_os.path.dirname(__file__), ".."))
import stage_helpers  # noqa: E402

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import aca as aca_config
from maskjax.errors import ConfigError
from maskjax.methods import aca
from maskjax.ops import augment, masks, sinkhorn


def _tiny_config(*variants, scales=(32, 48)):
  return stage_helpers.tiny_aca_config(*variants, scales=scales)


def _batch(n=4, size=32, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": jnp.asarray(rng.random((n, size, size, 3), np.float32)),
          "mask": jnp.zeros((n, size, size), jnp.float32),
          "label": jnp.zeros((n,), jnp.int32), "category_id": jnp.zeros((n,), jnp.int32)}


@pytest.fixture(scope="module")
def trained():
  c = _tiny_config()
  method = stage_helpers.build(c)
  s1, s2 = stage_helpers.stages(method)
  batch = _batch()
  st0 = jax.jit(s1.init)(jax.random.key(0), None)
  st0_np = jax.device_get(st0)
  st1, m1 = jax.jit(s1.train_step)(st0, batch, jax.random.key(1))
  st2_0 = jax.jit(s2.init)(jax.random.key(2), st1)
  step2 = jax.jit(s2.train_step)
  st2, m2 = step2(st2_0, batch, jax.random.key(3))
  st2, m2 = step2(st2, batch, jax.random.key(4))
  return dict(method=method, config=c, st0=st0_np, st1=st1, m1=m1, st2_0=st2_0, st2=st2,
              m2=m2, batch=batch)


# ----------------------------------------------------------------------------
def _np_lowest_keep(att: np.ndarray, ratio: float) -> np.ndarray:
  """Independent reference: rank by (value, index), drop the int(N r) first."""
  n = att.shape[1]
  k = int(n * ratio)
  out = []
  for row in att:
    order = sorted(range(n), key=lambda i: (float(row[i]), i))
    out.append(sorted(order[k:]))
  return np.asarray(out)


def test_apmask_ties_are_broken_by_index():
  att = np.array([[0.1, 0.0, 0.1, 0.0, 0.2, 0.0, 0.1, 0.3, 0.0, 0.1],
                  [0.5] * 10], np.float32)
  keep = np.asarray(masks.lowest_attention_keep(jnp.asarray(att), 0.3))
  np.testing.assert_array_equal(keep, _np_lowest_keep(att, 0.3))
  np.testing.assert_array_equal(keep[1], np.arange(3, 10))      # all equal: lowest indices go


def test_apmask_drops_lowest_teacher_attention_and_forward_sees_n_minus_k(trained):
  method, st = trained["method"], trained["st1"]
  views = jnp.asarray(np.random.default_rng(5).normal(size=(3, 32, 32, 3)), jnp.float32)
  # independent attention: the ViT's own returned attention, head mean of the CLS row
  out = method._vit(st["extras"]["teacher"]["vit"], views, return_attention=True)
  att = np.asarray(out["attention"])[:, :, 0, 1:].mean(axis=1)
  keep = np.asarray(method.student_keep_ids(jax.random.key(0), st, views))
  n = (32 // 8) ** 2
  k = int(n * 0.3)
  assert keep.shape == (3, n - k)
  np.testing.assert_array_equal(keep, _np_lowest_keep(att, 0.3))
  dropped = [sorted(set(range(n)) - set(r)) for r in keep]
  for row, d in zip(att, dropped):            # every dropped token <= every kept token
    assert row[d].max() <= np.delete(row, d).min() + 1e-7
  fwd = method._vit(st["params"]["vit"], views, keep_ids=jnp.asarray(keep))
  assert fwd["tokens"].shape == (3, 1 + n - k, 32)
  # the pretrain step's student forwards saw N - k tokens per view
  m1 = trained["m1"]
  assert float(m1["tokens/global"]) == n - k
  n_local = (16 // 8) ** 2
  assert float(m1["tokens/local"]) == n_local - int(n_local * 0.3)


def test_masking_switch_token_counts():
  for variant, expect in (("no_mask", 16), ("random_mask", 16 - 4)):
    c = _tiny_config(variant)
    method = stage_helpers.build(c)
    views = jnp.zeros((2, 32, 32, 3))
    keep = method.student_keep_ids(jax.random.key(1), None, views)   # no attention needed
    if keep is None:
      assert expect == 16
    else:
      assert keep.shape == (2, expect)
      assert all(len(set(np.asarray(r).tolist())) == expect for r in keep)


def _np_sinkhorn(scores, eps, iters):
  """SwAV's Sinkhorn-Knopp in float64 NumPy (plain exp, max subtracted)."""
  q = np.exp((scores - scores.max()) / eps).T
  q /= q.sum()
  kk, b = q.shape
  for _ in range(iters):
    q /= q.sum(axis=1, keepdims=True)
    q /= kk
    q /= q.sum(axis=0, keepdims=True)
    q /= b
  return (q * b).T


def test_sinkhorn_targets_are_balanced_across_prototypes(trained):
  method, st = trained["method"], trained["st1"]
  b, kk = 40, 20
  rng = np.random.default_rng(0)
  # teacher features all near one prototype: raw assignments collapse
  c = np.asarray(st["params"]["prototypes"], np.float64)
  z = c[0][None] + 0.3 * rng.normal(size=(b, c.shape[1]))
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  scores = z @ c.T
  q = np.asarray(sinkhorn.sinkhorn(jnp.asarray(scores, jnp.float32), 0.05, 3))
  np.testing.assert_allclose(q, _np_sinkhorn(scores, 0.05, 3), rtol=2e-4, atol=1e-6)
  np.testing.assert_allclose(q.sum(axis=1), 1.0, atol=1e-5)
  raw = np.exp(scores / 0.05) / np.exp(scores / 0.05).sum(axis=1, keepdims=True)
  assert raw.sum(axis=0).max() > 0.5 * b                    # collapsed before
  col = q.sum(axis=0)
  # balanced after 3 iterations (exact balance only in the limit)
  assert col.min() > 0.5 * b / kk and col.max() < 1.5 * b / kk
  assert method.config.model.num_prototypes == kk


def test_ema_update_and_cosine_momentum_match_numpy(trained):
  rng = np.random.default_rng(0)
  t = {"a": rng.normal(size=(3, 4)).astype(np.float32), "b": [rng.normal(size=5).astype(np.float32)]}
  s = {"a": rng.normal(size=(3, 4)).astype(np.float32), "b": [rng.normal(size=5).astype(np.float32)]}
  out = aca.ema_update(t, s, 0.9)
  np.testing.assert_allclose(out["a"], 0.9 * t["a"] + 0.1 * s["a"], rtol=1e-6)
  np.testing.assert_allclose(out["b"][0], 0.9 * t["b"][0] + 0.1 * s["b"][0], rtol=1e-6)
  for step, total in ((0, 10), (3, 10), (10, 10)):
    want = 1 - (1 - 0.996) * (math.cos(math.pi * step / total) + 1) / 2
    assert abs(float(aca.momentum_at(step, total, 0.996, "cosine")) - want) < 1e-7
  assert float(aca.momentum_at(7, 10, 0.99, "constant")) == pytest.approx(0.99)
  # the step itself: teacher_1 = m teacher_0 + (1 - m) student_1
  st0, st1, m1 = trained["st0"], jax.device_get(trained["st1"]), trained["m1"]
  m = float(m1["momentum"])
  assert m == pytest.approx(1 - (1 - 0.99) * (math.cos(math.pi * 1 / 4) + 1) / 2, abs=1e-6)
  for key in ("vit", "head"):
    for t0, s1, t1 in zip(jax.tree.leaves(st0["extras"]["teacher"][key]),
                          jax.tree.leaves(st1["params"][key]),
                          jax.tree.leaves(st1["extras"]["teacher"][key])):
      np.testing.assert_allclose(t1, m * np.asarray(t0, np.float64) + (1 - m) * s1,
                                 rtol=1e-5, atol=1e-6)


def test_prototypes_unit_norm_after_step(trained):
  p = np.asarray(trained["st1"]["params"]["prototypes"])
  assert p.shape == (20, 16)
  np.testing.assert_allclose(np.linalg.norm(p, axis=1), 1.0, atol=1e-5)
  assert np.all(np.isfinite(np.asarray(trained["m1"]["loss"])))


def test_crop_resize_identity_box_is_a_plain_crop():
  img = np.random.default_rng(0).random((20, 24, 3)).astype(np.float32)
  out = augment.crop_resize(jnp.asarray(img), jnp.asarray([3.0, 5.0, 12.0, 12.0]), 12)
  np.testing.assert_allclose(np.asarray(out), img[3:15, 5:17], atol=1e-6)
  # 2x shrink of an aligned box = 2x2 average of the pixels (triangle width 2)
  out = augment.crop_resize(jnp.asarray(img), jnp.asarray([0.0, 0.0, 20.0, 24.0]), 10)
  assert out.shape == (10, 10, 3)


def test_device_cutpaste_mask_and_untouched_pixels():
  img = jnp.asarray(np.random.default_rng(1).random((32, 32, 3)), jnp.float32)
  att = jnp.zeros((32, 32)).at[20:24, 4:8].set(1.0)
  centres = []
  for i in range(6):
    out, mask = aca.cutpaste_one(jax.random.key(i), img, att, temperature=0.01)
    out, mask = np.asarray(out), np.asarray(mask)
    assert set(np.unique(mask)) <= {0.0, 1.0} and mask.sum() > 0
    np.testing.assert_array_equal(out[mask == 0], np.asarray(img)[mask == 0])
    ys, xs = np.nonzero(mask)
    centres.append((ys.mean(), xs.mean()))
  # the paste follows the attention (sharp temperature): centres near the hot block
  cy, cx = np.mean(centres, axis=0)
  assert 15 < cy < 28 and 0 <= cx < 12


def test_finetune_step_starts_from_pretrained_backbone(trained):
  st1, st2_0, m2 = trained["st1"], trained["st2_0"], trained["m2"]
  for a, b in zip(jax.tree.leaves(st1["params"]["vit"]), jax.tree.leaves(st2_0["params"]["vit"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for k in ("loss", "loss/ce", "loss/dice"):
    assert np.isfinite(float(m2[k]))
  f = trained["config"].method.finetune
  assert (f.lambda_det, f.lambda_seg) == (0.2, 0.8)       # the demo's weights (configs/aca.py)
  w = 0.2 * float(m2["loss/ce"]) + 0.8 * float(m2["loss/dice"])
  assert float(m2["loss"]) == pytest.approx(w, rel=1e-5)


def test_multiscale_score_equals_average_of_single_scale_runs(trained):
  st, batch = trained["st2"], trained["batch"]
  multi = stage_helpers.build(_tiny_config(scales=(32, 48, 64)))
  out = jax.device_get(jax.jit(multi.score)(st, batch, {}))
  singles = []
  for s in (32, 48, 64):
    m = stage_helpers.build(_tiny_config(scales=(s,)))
    singles.append(jax.device_get(jax.jit(m.score)(st, batch, {})))
  maps = np.stack([o["anomaly_map"] for o in singles])
  probs = np.stack([o["image_score"] for o in singles])
  assert out["anomaly_map"].shape == (4, 32, 32)
  np.testing.assert_allclose(out["anomaly_map"], maps.mean(axis=0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out["image_score"], probs.mean(axis=0), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(out["decision"], (probs > 0.5).sum(axis=0) * 2 > 3)
  # the scales really differ (position-embedding interpolation is exercised)
  assert np.abs(maps[0] - maps[2]).max() > 1e-6


def test_majority_vote():
  p = jnp.asarray([[0.9, 0.1, 0.6, 0.4], [0.8, 0.2, 0.4, 0.6], [0.1, 0.9, 0.4, 0.6]])
  np.testing.assert_array_equal(np.asarray(aca.majority_vote(p)), [True, False, False, True])
  p2 = jnp.asarray([[0.9], [0.1]])
  assert not bool(aca.majority_vote(p2)[0])      # a tie is not a majority


def test_config_variants():
  full = aca_config.get_config()
  assert tuple(full.method.test_scales) == (224, 320, 384, 416, 448, 512)
  assert full.model.num_prototypes == 20 and full.method.pretrain.mask_ratio == 0.3
  assert full.method.pretrain.num_local == 8 and full.method.pretrain.local_size == 96
  assert full.method.finetune.lambda_det == 0.95
  assert aca_config.get_config("demo,random_mask").method.pretrain.masking == "random"
  with pytest.raises(ConfigError, match="unknown variant"):
    aca_config.get_config("demo,nope")
  c = _tiny_config()
  c.method.pretrain.masking = "block"
  with pytest.raises(ConfigError, match="masking"):
    stage_helpers.build(c)
  c = _tiny_config()
  c.method.test_scales = (30,)
  with pytest.raises(ConfigError, match="multiple of the patch"):
    stage_helpers.build(c)


def test_host_cutpaste_transform_labels_and_half_normal():
  img = np.random.default_rng(2).random((24, 24, 3)).astype(np.float32)
  ex = {"image": img, "mask": np.zeros((24, 24), np.float32), "label": np.int32(0)}
  t = aca.HostCutPaste(anomaly_prob=0.5, poisson=False)
  labels = []
  for i in range(40):
    out = t(ex, np.random.default_rng(i))
    labels.append(int(out["label"]))
    assert int(out["label"]) == int(out["mask"].max() > 0)
    np.testing.assert_array_equal(out["image"][out["mask"] == 0], img[out["mask"] == 0])
  assert 8 <= sum(labels) <= 32
  c = _tiny_config("poisson")
  c.method.finetune.jitter = 0.3
  s2 = stage_helpers.stages(stage_helpers.build(c))[-1]
  assert isinstance(s2.host_transform, aca.HostCutPaste) and s2.host_transform.poisson
  # the host paste takes finetune.jitter as the device does: the same draws as
  # ops.cutpaste with that jitter, and not those of its default 0.1
  from maskjax.ops import cutpaste
  t = aca.HostCutPaste(anomaly_prob=1.0, jitter=0.3)
  out = t(ex, np.random.default_rng(5))
  rng = np.random.default_rng(5)
  rng.random()                                           # the paste decision
  ref, ref_mask = cutpaste.attention_cutpaste(img, np.ones((4, 4), np.float32), rng, jitter=0.3)
  np.testing.assert_array_equal(out["image"], ref)
  np.testing.assert_array_equal(out["mask"], ref_mask)
  rng = np.random.default_rng(5)
  rng.random()
  default, _ = cutpaste.attention_cutpaste(img, np.ones((4, 4), np.float32), rng)
  assert not np.array_equal(out["image"], default)


def test_finetune_guide_is_the_frozen_starting_backbone(trained):
  """The pastes are placed by the attention of the backbone fine-tuning starts
  from (frozen), not by the network being trained (which would let the
  segmentation head learn its own attention instead of the pasted regions)."""
  st1, st2 = trained["st1"], trained["st2"]
  for a, b in zip(jax.tree.leaves(st1["params"]["vit"]), jax.tree.leaves(st2["extras"]["guide"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  moved = [np.abs(np.asarray(a) - np.asarray(b)).max()
           for a, b in zip(jax.tree.leaves(st2["extras"]["guide"]), jax.tree.leaves(st2["params"]["vit"]))]
  assert max(moved) > 0


def test_finetune_learns_a_fixed_synthetic_batch():
  """Fixed images and step key: with the frozen guide the synthetic batch is the
  same at every step; about half of it carries a visible paste (label 1,
  non-empty mask) and the classifier's cross-entropy drops well below chance."""
  c = _tiny_config()
  c.train.steps = 0
  c.method.use_pretrain = False
  f = c.method.finetune
  f.steps, f.warmup_fraction, f.lr = 30, 0.0, 3e-3
  method = stage_helpers.build(c)
  (s2,) = stage_helpers.stages(method)
  rng = np.random.default_rng(3)
  # smooth images (a paste of a shifted, rotated region is visible on them)
  yy, xx = np.mgrid[0:32, 0:32] / 32.0
  imgs = np.stack([np.stack([0.5 + 0.4 * np.sin(2 * np.pi * (a * yy + b * xx) + p)
                             for p in (0.0, 1.0, 2.0)], -1)
                   for a, b in rng.uniform(0.5, 2.0, (16, 2))]).astype(np.float32)
  batch = {"image": jnp.asarray(imgs)}
  st = jax.jit(s2.init)(jax.random.key(0), None)
  key = jax.random.key(7)
  x, m, lab = jax.device_get(jax.jit(method.synthesize)(key, st["extras"]["guide"], batch["image"]))
  assert 4 <= lab.sum() <= 12
  np.testing.assert_array_equal(lab, (m.reshape(16, -1).max(1) > 0).astype(np.int32))
  changed = np.abs(x - imgs).max(axis=(1, 2, 3))
  assert np.all(changed[lab == 1] > 0.05) and np.all(changed[lab == 0] == 0)
  step = jax.jit(s2.train_step)
  ces = []
  for _ in range(30):
    st, met = step(st, batch, key)
    ces.append(float(met["loss/ce"]))
  assert abs(ces[0] - math.log(2)) < 0.1
  assert np.mean(ces[-3:]) < 0.35, ces


def test_seg_lr_scale_keeps_the_map_and_moves_the_head_that_much_faster():
  """`finetune.seg_lr_scale` s stores the head's weights divided by s: the first
  map is the same, and Adam's first step (about lr x sign(gradient) on every
  stored number) moves the effective weights s times as far."""
  batch = {"image": _batch(n=8, seed=5)["image"]}
  moved, maps = {}, {}
  for s in (1.0, 10.0):
    c = _tiny_config()
    c.method.use_pretrain = False
    f = c.method.finetune
    f.steps, f.warmup_fraction, f.seg_lr_scale = 5, 0.0, s
    method = stage_helpers.build(c)
    (s2,) = stage_helpers.stages(method)
    st = jax.jit(s2.init)(jax.random.key(0), None)
    seg0 = jax.device_get(st["params"]["seg"])
    maps[s] = np.asarray(jax.jit(method.score)(st, _batch(n=2, seed=6), {})["anomaly_map"])
    st1, _ = jax.jit(s2.train_step)(st, batch, jax.random.key(1))
    seg1 = jax.device_get(st1["params"]["seg"])
    moved[s] = np.abs(np.concatenate([
        (np.ravel(seg1[k]) - np.ravel(seg0[k])) * s for k in ("weight", "bias")]))
  np.testing.assert_allclose(maps[10.0], maps[1.0], rtol=1e-5, atol=1e-6)
  assert np.all(moved[1.0] > 0)
  np.testing.assert_allclose(moved[10.0], 10.0 * moved[1.0], rtol=0.05)
  with pytest.raises(ConfigError, match="seg_lr_scale"):
    c = _tiny_config()
    c.method.finetune.seg_lr_scale = 0.0
    stage_helpers.build(c)
