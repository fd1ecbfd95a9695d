"""SSM's refined-map options against the independent NumPy Algorithm 1 of test_ssm."""
from __future__ import annotations

import os as _os
import sys as _sys

_sys.path.insert(0, _os.path.join(_os.path.dirname(__file__), ".."))
import stage_helpers  # noqa: E402

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskjax.errors import ConfigError
from tests.methods.test_ssm import (_etas, _images, _jitted_net, _np_algorithm1, _np_checkerboards,
                                    _np_error, _tiny_config, _trained)


def _np_s0(net, x, k):
  x = np.asarray(x, np.float64)
  maps = []
  for mask in _np_checkerboards(k):
    out = np.asarray(net(x, mask), np.float64)
    maps.append(_np_error(x, out * (1 - mask[..., None]) + x * mask[..., None]))
  return np.mean(maps, 0)


def test_as_written_zeroes_sub_threshold_maps_s0_visible_keeps_them():
  m, state = _trained()
  x = _images(2, seed=3)
  net = _jitted_net(m, state)
  e4 = float(_etas(m, state, x, 4, [0.6, 0.6])[0])
  e8 = float(_etas(m, state, x, 8, [0.4, 0.4])[0])
  # image 0 refines at both scales; image 1 never (eta far above every patch)
  table = [[e4, e8], [100.0, 100.0]]
  cal = {"eta": 1.0, "eta_per_category": [9.0, 9.0], "eta_per_scale": [1.0, 1.0],
         "eta_per_category_scale": table}
  batch = {"image": x, "category_id": jnp.asarray([0, 1])}
  out = jax.jit(m.score)(state, batch, cal)
  # as written: an image that never exceeds eta gets an exactly zero map and score
  assert float(jnp.abs(out["anomaly_map"][1]).max()) < 1e-4  # float round-off of f(I, I)
  assert abs(float(out["image_score"][1])) < 1e-4
  mv = stage_helpers.build(_tiny_config(refined_map="s0_visible", image_score="max"))
  outv = jax.jit(mv.score)(state, batch, cal)
  for i, cat in enumerate([0, 1]):
    want = []
    for j, k in enumerate(m.ks):
      mask, s, _, _ = _np_algorithm1(net, x[i], table[cat][j], k, m.max_iters)
      want.append(np.where(mask > 0.5, _np_s0(net, x[i], k), s))
    want_map = np.mean(want, 0)
    np.testing.assert_allclose(outv["anomaly_map"][i], want_map, atol=2e-4)
    np.testing.assert_allclose(outv["image_score"][i], np.mean([w.max() for w in want]),
                               rtol=1e-4, atol=1e-5)
  assert float(outv["anomaly_map"][1].max()) > 1e-3  # the S^0 evidence is kept
  with pytest.raises(ConfigError, match="refined_map"):
    stage_helpers.build(_tiny_config(refined_map="bogus"))
