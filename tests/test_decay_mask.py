"""optim.decay_mask: which tensors weight decay reaches, checked against the
update written out in NumPy (one Adam / AdamW step from zero moments)."""
from __future__ import annotations

import numpy as np
import pytest

from maskjax import config_base, train_utils
from maskjax.errors import ConfigError


def _params():
  rng = np.random.default_rng(0)
  return {"dense": {"kernel": rng.normal(size=(3, 4)).astype(np.float32),
                    "bias": rng.normal(size=(4,)).astype(np.float32)},
          "norm": {"scale": rng.normal(size=(4,)).astype(np.float32)},
          "pos_embed": rng.normal(size=(1, 5, 4)).astype(np.float32)}


STEPS = 3
PATHS = ("dense/kernel", "dense/bias", "norm/scale", "pos_embed")


def _flat(tree):
  return {"dense/kernel": tree["dense"]["kernel"], "dense/bias": tree["dense"]["bias"],
          "norm/scale": tree["norm"]["scale"], "pos_embed": tree["pos_embed"]}


def _grads(params, t):
  """Different gradients at every step, so decay changes the moments' ratio."""
  rng = np.random.default_rng(100 + t)
  return {k: ({kk: rng.normal(size=vv.shape).astype(np.float32) * 0.3 for kk, vv in v.items()}
              if isinstance(v, dict) else rng.normal(size=v.shape).astype(np.float32) * 0.3)
          for k, v in params.items()}


def _run(name, decay_mask, names=()):
  o = config_base.base_config().optim
  o.name, o.lr, o.weight_decay, o.decay_mask, o.no_decay_names = name, 0.1, 0.5, decay_mask, names
  tx = train_utils.make_optimizer(o, total_steps=10)
  params = _params()
  state = tx.init(params)
  for t in range(STEPS):
    updates, state = tx.update(_grads(params, t), state, params)
    params = {k: ({kk: np.asarray(vv + updates[k][kk]) for kk, vv in v.items()}
                  if isinstance(v, dict) else np.asarray(v + updates[k]))
              for k, v in params.items()}
  return _flat(params)


def _reference(name, decayed: set, lr=0.1, wd=0.5, b1=0.9, b2=0.999, eps=1e-8):
  """torch.optim.Adam(weight_decay=wd) (L2 in the gradient) / AdamW (decoupled),
  written out in float64, per tensor."""
  p = {k: v.astype(np.float64) for k, v in _flat(_params()).items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v2 = {k: np.zeros_like(v) for k, v in p.items()}
  for t in range(STEPS):
    tree = _params()
    tree = {"dense": {"kernel": p["dense/kernel"], "bias": p["dense/bias"]},
            "norm": {"scale": p["norm/scale"]}, "pos_embed": p["pos_embed"]}
    g_all = _flat(_grads(tree, t))
    for k in PATHS:
      g = g_all[k].astype(np.float64)
      if name == "adam" and k in decayed:
        g = g + wd * p[k]
      m[k] = b1 * m[k] + (1 - b1) * g
      v2[k] = b2 * v2[k] + (1 - b2) * g * g
      step = (m[k] / (1 - b1 ** (t + 1))) / (np.sqrt(v2[k] / (1 - b2 ** (t + 1))) + eps)
      if name == "adamw" and k in decayed:
        step = step + wd * p[k]
      p[k] = p[k] - lr * step
  return p


@pytest.mark.parametrize("name", ["adam", "adamw"])
@pytest.mark.parametrize("mask,names,decayed", [
    ("all", (), {"dense/kernel", "dense/bias", "norm/scale", "pos_embed"}),
    ("no_bias_norm", (), {"dense/kernel", "pos_embed"}),
    ("no_bias_norm", ("pos_embed",), {"dense/kernel"}),
    ("all", ("dense",), {"norm/scale", "pos_embed"}),
])
def test_decay_reaches_only_the_masked_tensors(name, mask, names, decayed):
  got = _run(name, mask, names)
  want = _reference(name, decayed)
  for k in PATHS:  # float32 bias corrections: ~1e-5 relative; a decay difference is O(1e-2)
    np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_unknown_decay_mask_names_the_key():
  with pytest.raises(ConfigError, match="optim.decay_mask"):
    _run("adam", "biases")
