"""SSM: the jitted, batched progressive mask refinement (lax.while_loop)
against a plain NumPy/Python Algorithm 1 driving the same jitted network image
by image; per-image convergence; calibration; training step; configs."""
from __future__ import annotations

import os as _os
import sys as _sys

_sys.path.insert(0, _os.path.join(_os.path.dirname(__file__), ".."))
import stage_helpers  # noqa: E402

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from configs import ssm as ssm_config
from maskjax.errors import ConfigError
from maskjax.methods import ssm as ssm_lib

SIZE = 16


def _tiny_config(*variants, **method):
  c = ssm_config.get_config(",".join(("demo",) + variants))
  c.input.image_size = SIZE
  c.model.widths = (4, 8, 8)
  c.method.ks = (4, 8)
  c.method.train_ks = (4, 8)
  c.method.max_iters = 6
  c.train.steps = 2
  # Algorithm 1 as written (the NumPy reference below); the demo's own choices
  # (s0_visible refined map, max score) are tested in test_ssm_refined_map.py
  c.method.refined_map = "as_written"
  c.method.image_score = "as_written"
  for k, v in method.items():
    c.method[k] = v
  return c


@functools.lru_cache(maxsize=None)
def _trained():
  """A tiny SSM after a few steps (running BatchNorm statistics are non-trivial)."""
  m = stage_helpers.build(_tiny_config())
  (stage,) = stage_helpers.stages(m)
  state = jax.jit(stage.init)(jax.random.PRNGKey(0), None)
  step = jax.jit(stage.train_step)
  x = _images(8, seed=5)
  for i in range(3):
    state, _ = step(state, {"image": x}, jax.random.PRNGKey(i))
  return m, state


def _images(n, seed=0):
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
  base = np.stack([0.5 + 0.3 * np.sin(6 * xx), 0.5 + 0.3 * np.cos(5 * yy), 0.4 + 0 * xx], -1)
  out = np.repeat(base[None], n, 0) + rng.normal(0, 0.02, (n, SIZE, SIZE, 3))
  for i in range(n):  # a bright square "defect" of varying size
    s = 2 + 2 * (i % 3)
    r, c = rng.integers(0, SIZE - s, 2)
    out[i, r:r + s, c:c + s] = rng.uniform(0.0, 1.0, 3)
  return jnp.asarray(np.clip(out, 0, 1), jnp.float32)


# -- independent NumPy implementation of eq. 12 and Algorithm 1 -----------------------
def _np_error(x, r):
  """eq. 12 for one image [H,W,3] (float64): L2 + (1 - GMS) + (1 - SSIM), channel means."""
  x = np.asarray(x, np.float64)
  r = np.asarray(r, np.float64)
  l2 = ((x - r) ** 2).mean(-1)
  hx = np.array([[1., 0., -1.]] * 3) / 3.0
  g = lambda a, k: ndimage.correlate(a, k, mode="constant")
  gm = lambda a: np.sqrt(g(a, hx) ** 2 + g(a, hx.T) ** 2 + 1e-12)
  gms = np.mean([(2 * gm(x[..., c]) * gm(r[..., c]) + 0.0026)
                 / (gm(x[..., c]) ** 2 + gm(r[..., c]) ** 2 + 0.0026 + 1e-12)
                 for c in range(3)], axis=0)
  w = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5 ** 2))
  w = np.outer(w, w) / np.outer(w, w).sum()
  s = []
  for c in range(3):
    a, b = x[..., c], r[..., c]
    ma, mb = g(a, w), g(b, w)
    saa, sbb, sab = g(a * a, w) - ma ** 2, g(b * b, w) - mb ** 2, g(a * b, w) - ma * mb
    s.append(((2 * ma * mb + 1e-4) * (2 * sab + 9e-4))
             / ((ma ** 2 + mb ** 2 + 1e-4) * (saa + sbb + 9e-4)))
  return l2 + (1 - gms) + (1 - np.mean(s, axis=0))


def _np_checkerboards(k):
  cells = (np.add.outer(np.arange(SIZE // k), np.arange(SIZE // k)) % 2 == 0).astype(float)
  first = np.kron(cells, np.ones((k, k)))
  return [first, 1 - first]


def _np_patch_mean(s, k):
  p = s.reshape(SIZE // k, k, SIZE // k, k).mean(axis=(1, 3))
  return np.kron(p, np.ones((k, k)))


def _np_algorithm1(net, x, eta, k, max_iters):
  """Algorithm 1 for one image, plain Python; `net(x, M)` -> raw image head [H,W,3]."""
  x = np.asarray(x, np.float64)

  def recon_error(mask):
    out = np.asarray(net(x, mask), np.float64)
    return _np_error(x, out * (1 - mask[..., None]) + x * mask[..., None])

  s = np.mean([recon_error(m) for m in _np_checkerboards(k)], axis=0)
  mask, prev, iters = np.ones((SIZE, SIZE)), None, 0
  while iters < max_iters:
    new = (_np_patch_mean(s, k) <= eta).astype(float)     # lines 6-9
    if prev is not None and np.array_equal(new, prev):    # line 14: M converged
      break
    mask = prev = new
    s = recon_error(mask)                                  # lines 11-13
    iters += 1
  eps = s.sum() / max(mask.sum(), 1.0)                     # line 15
  return mask, s, iters, eps


def _jitted_net(m, state):
  f = jax.jit(lambda x, mask: m.predict(state["params"], state["model_state"], x[None], mask[None])[0][0][0])
  return lambda x, mask: f(jnp.asarray(x, jnp.float32), jnp.asarray(mask, jnp.float32))


def _np_s0_patch_max(net, x, k):
  x = np.asarray(x, np.float64)
  maps = []
  for mask in _np_checkerboards(k):
    out = np.asarray(net(x, mask), np.float64)
    maps.append(_np_error(x, out * (1 - mask[..., None]) + x * mask[..., None]))
  return _np_patch_mean(np.mean(maps, 0), k).max()


def _etas(m, state, x, k, q):
  """Per-image eta between two neighbouring S^0 patch means at quantile q (forces
  mask changes and keeps eta away from the values it is compared with)."""
  s0 = np.asarray(jax.jit(m.initial_map, static_argnums=3)(state["params"], state["model_state"], x, k))
  out = []
  for s, qq in zip(s0, q):
    v = np.sort(np.unique(_np_patch_mean(s, k)))
    j = min(int(qq * (len(v) - 1)), len(v) - 2)
    out.append(0.5 * (v[j] + v[j + 1]))
  return np.array(out, np.float32)


# -- tests -------------------------------------------------------------------------------------
def test_batched_refinement_equals_numpy_algorithm1():
  m, state = _trained()
  x = _images(4, seed=1)
  net = _jitted_net(m, state)
  refine = jax.jit(lambda x, eta, k: ssm_lib.refine(
      m.error_fn(state["params"], state["model_state"], x),
      m.initial_map(state["params"], state["model_state"], x, k), eta, k, m.max_iters),
      static_argnums=2)
  for k in (4, 8):
    eta = _etas(m, state, x, k, [0.5, 0.7, 0.3, 0.85])
    mask, smap, iters = refine(x, jnp.asarray(eta), k)
    for i in range(x.shape[0]):
      ref_m, ref_s, ref_it, ref_eps = _np_algorithm1(net, x[i], eta[i], k, m.max_iters)
      np.testing.assert_array_equal(np.asarray(mask[i]), ref_m)
      np.testing.assert_allclose(np.asarray(smap[i]), ref_s, atol=2e-4)
      assert int(iters[i]) == ref_it
      eps = ssm_lib.image_score(smap[i:i + 1], mask[i:i + 1], "as_written")
      np.testing.assert_allclose(float(eps[0]), ref_eps, rtol=1e-4, atol=1e-6)
      # refinement replaced the all-visible start by a mask hiding a part
      assert ref_it >= 1 and 0 < ref_m.sum() < ref_m.size


class _SmoothingNet:
  """A deterministic stand-in inpainter: each hidden pixel becomes the mean of
  the visible pixels in its 7x7 neighbourhood (normalised box convolution), so
  reconstructions improve as the mask shrinks and refinement runs several
  iterations with masks that change between them."""

  def apply(self, params, rest, x, mask, train):
    m = mask[..., None]
    box = lambda t: jax.lax.reduce_window(t, 0.0, jax.lax.add, (1, 7, 7, 1), (1, 1, 1, 1),
                                          "SAME")
    img = box(x * m) / jnp.maximum(box(jnp.broadcast_to(m, x.shape)), 1e-3)
    return (jnp.clip(img, -1, 1), mask * 2 - 1), rest


def test_batched_refinement_equals_numpy_with_changing_masks():
  m = stage_helpers.build(_tiny_config(max_iters=8))
  m.f = _SmoothingNet()
  state = {"params": {}, "model_state": {}}
  x = _images(4, seed=7)
  net = _jitted_net(m, state)
  refine = jax.jit(lambda x, eta, k: ssm_lib.refine(
      m.error_fn({}, {}, x), m.initial_map({}, {}, x, k), eta, k, m.max_iters),
      static_argnums=2)
  iterations = []
  for k in (4, 8):
    eta = _etas(m, state, x, k, [0.2, 0.5, 0.7, 0.9])
    mask, smap, iters = refine(x, jnp.asarray(eta), k)
    for i in range(x.shape[0]):
      ref_m, ref_s, ref_it, _ = _np_algorithm1(net, x[i], eta[i], k, m.max_iters)
      np.testing.assert_array_equal(np.asarray(mask[i]), ref_m)
      np.testing.assert_allclose(np.asarray(smap[i]), ref_s, atol=2e-4)
      assert int(iters[i]) == ref_it
      iterations.append(ref_it)
  assert max(iterations) >= 3 and len(set(iterations)) >= 2, iterations


def test_per_image_convergence_independent_of_batch():
  m, state = _trained()
  x = _images(3, seed=2)
  k = 4
  eta = _etas(m, state, x, k, [0.2, 0.6, 0.9])
  refine = jax.jit(lambda x, eta: ssm_lib.refine(
      m.error_fn(state["params"], state["model_state"], x),
      m.initial_map(state["params"], state["model_state"], x, k), eta, k, m.max_iters))
  mask, smap, iters = refine(x, jnp.asarray(eta))
  for i in range(3):
    mi, si, it = refine(x[i:i + 1], jnp.asarray(eta[i:i + 1]))
    np.testing.assert_array_equal(mi[0], mask[i])
    np.testing.assert_allclose(si[0], smap[i], atol=1e-5)
    assert int(it[0]) == int(iters[i])
  # the same image beside different neighbours
  perm = jnp.asarray([2, 0, 1])
  m2, s2, it2 = refine(x[perm], jnp.asarray(eta)[perm])
  np.testing.assert_array_equal(m2, mask[perm])
  np.testing.assert_array_equal(it2, iters[perm])
  # max_iters caps every image
  capped = jax.jit(lambda x, eta: ssm_lib.refine(
      m.error_fn(state["params"], state["model_state"], x),
      m.initial_map(state["params"], state["model_state"], x, k), eta, k, 1))(x, jnp.asarray(eta))
  assert int(jnp.max(capped[2])) == 1


def test_score_ensembles_scales_with_per_category_eta():
  m, state = _trained()
  x = _images(2, seed=3)
  net = _jitted_net(m, state)
  e4 = float(_etas(m, state, x, 4, [0.6, 0.6])[0])
  e8 = float(_etas(m, state, x, 8, [0.4, 0.4])[0])
  # per category and per scale: [category, k index]; category 1 never refines at k=8
  table = [[e4, e8], [0.3, 100.0]]
  cal = {"eta": 1.0, "eta_per_category": [9.0, 9.0], "eta_per_scale": [1.0, 1.0],
         "eta_per_category_scale": table}
  out = jax.jit(m.score)(state, {"image": x, "category_id": jnp.asarray([0, 1])}, cal)
  want_map, want_score, want_iters = [], [], []
  for i, cat in enumerate([0, 1]):
    res = [_np_algorithm1(net, x[i], table[cat][j], k, m.max_iters) for j, k in enumerate(m.ks)]
    want_map.append(np.mean([r[1] for r in res], 0))
    want_score.append(np.mean([r[3] for r in res]))
    want_iters.append(sum(r[2] for r in res))
  np.testing.assert_allclose(out["anomaly_map"], np.stack(want_map), atol=2e-4)
  np.testing.assert_allclose(out["image_score"], want_score, rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(out["iterations"], want_iters)
  # one eta for every scale (the maximum over k): the per-category scalar is used
  m1 = stage_helpers.build(_tiny_config(eta_per_scale=False))
  cal1 = dict(cal, eta_per_category=[e4, 100.0])
  out1 = jax.jit(m1.score)(state, {"image": x, "category_id": jnp.asarray([0, 1])}, cal1)
  res = [_np_algorithm1(net, x[0], e4, k, m.max_iters) for k in m.ks]
  np.testing.assert_allclose(out1["anomaly_map"][0], np.mean([r[1] for r in res], 0), atol=2e-4)
  assert int(out1["iterations"][0]) == sum(r[2] for r in res)
  with pytest.raises(ConfigError, match="eta"):
    m.score(state, {"image": x}, {})
  with pytest.raises(ConfigError, match="eta_per_scale"):
    m.score(state, {"image": x}, {"eta": 1.0, "eta_per_category": [1.0]})


def test_calibrate_eta_is_max_validation_error():
  m, state = _trained()
  net = _jitted_net(m, state)
  x = _images(5, seed=4)
  noisy = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (1, SIZE, SIZE, 3)), jnp.float32)
  batches = [
      {"image": x[:3], "valid": jnp.asarray([True] * 3), "category_id": jnp.asarray([0, 1, 0])},
      {"image": jnp.concatenate([x[3:], noisy]), "valid": jnp.asarray([True, True, False]),
       "category_id": jnp.asarray([2, 0, 2])},
  ]
  # as the loop does: per-example stats on device, padding dropped, host reduction
  rows = [(np.asarray(m.calibration_stats(state, b)), np.asarray(b["valid"]),
           np.asarray(b["category_id"])) for b in batches]
  cal = m.calibrate(np.concatenate([s[v] for s, v, _ in rows]),
                    np.concatenate([c[v] for _, v, c in rows]))
  stat = np.array([[_np_s0_patch_max(net, x[i], k) for k in m.ks] for i in range(5)])
  cats = np.array([0, 1, 0, 2, 0])
  per_scale = np.stack([stat[cats == j].max(axis=0) for j in range(3)])   # [C, len(ks)]
  np.testing.assert_allclose(cal["eta"], stat.max(), rtol=1e-4)
  np.testing.assert_allclose(cal["eta_per_category"], per_scale.max(axis=1), rtol=1e-4)
  np.testing.assert_allclose(cal["eta_per_scale"], stat.max(axis=0), rtol=1e-4)
  np.testing.assert_allclose(cal["eta_per_category_scale"], per_scale, rtol=1e-4)
  # the scales differ, so a single eta would not be the same threshold
  assert not np.allclose(stat.max(axis=0)[0], stat.max(axis=0)[1], rtol=1e-3)
  with pytest.raises(Exception, match="val_fraction"):
    m.calibrate(np.zeros((0, len(m.ks))), np.zeros((0,), int))


def test_training_masks_and_step():
  m, state = _trained()
  masks, ks = m.train_masks(jax.random.PRNGKey(3), 64)
  masks, ks = np.asarray(masks), np.asarray(ks)
  assert set(np.unique(ks)) == {4, 8} and set(np.unique(masks)) == {0.0, 1.0}
  for mask, k in zip(masks, ks):   # constant on k x k cells, varying between cells
    cells = mask.reshape(SIZE // k, k, SIZE // k, k)
    assert np.all(cells == cells[:, :1, :, :1])
  assert 0.3 < masks.mean() < 0.7
  (stage,) = stage_helpers.stages(m)
  _, met = jax.jit(stage.train_step)(state, {"image": _images(4)}, jax.random.PRNGKey(9))
  assert set(met) >= {"loss", "loss/mse", "loss/gms", "loss/ssim", "loss/mask"}
  terms = [float(met[f"loss/{n}"]) * m.w[n] for n in ("mse", "gms", "ssim", "mask")]
  np.testing.assert_allclose(float(met["loss"]), sum(terms), rtol=1e-5)


def test_no_refine_baseline_and_configs():
  c = _tiny_config("no_refine")
  m = stage_helpers.build(c)
  _, state = _trained()
  out = jax.jit(m.score)(state, {"image": _images(2)}, {})
  assert out["anomaly_map"].shape == (2, SIZE, SIZE)
  np.testing.assert_allclose(out["image_score"], out["anomaly_map"].mean(axis=(1, 2)), rtol=1e-5)
  assert int(jnp.max(out["iterations"])) == 0
  full = ssm_config.get_config()
  assert full.input.image_size == 256 and tuple(full.model.widths) == (64, 128, 256, 512, 512)
  assert full.optim.schedule == "step" and full.optim.decay_every_epochs == 50
  assert full.model.use_mam and not ssm_config.get_config("no_mam").model.use_mam
  with pytest.raises(ConfigError, match="'bogus'.*no_refine"):
    ssm_config.get_config("bogus")
