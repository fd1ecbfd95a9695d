"""Sinkhorn-Knopp vs a NumPy loop, marginals, and 8-device sharded equality."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np

from maskjax.ops import sinkhorn


def _numpy_sinkhorn(scores, eps=0.05, iters=3):
  s = scores.astype(np.float64)
  q = np.exp((s - s.max()) / eps).T
  q /= q.sum()
  k, b = q.shape
  for _ in range(iters):
    q /= q.sum(axis=1, keepdims=True)
    q /= k
    q /= q.sum(axis=0, keepdims=True)
    q /= b
  return (q * b).T


def test_sinkhorn_vs_numpy_and_marginals():
  rng = np.random.default_rng(0)
  scores = rng.uniform(-1, 1, (16, 6)).astype(np.float32)
  q = np.asarray(jax.jit(sinkhorn.sinkhorn)(scores))
  np.testing.assert_allclose(q, _numpy_sinkhorn(scores), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(q.sum(1), 1.0, atol=1e-5)      # last step normalises rows
  q30 = np.asarray(sinkhorn.sinkhorn(scores, eps=0.5, iters=50))
  np.testing.assert_allclose(q30.sum(0), 16 / 6, rtol=1e-3)  # balanced prototypes


def test_sinkhorn_bf16_no_overflow():
  scores = np.random.default_rng(1).uniform(-1, 1, (8, 5)).astype(np.float32)
  q = np.asarray(sinkhorn.sinkhorn(jnp.asarray(scores * 20, jnp.bfloat16)))
  assert np.isfinite(q).all()
  np.testing.assert_allclose(
      q, _numpy_sinkhorn(np.asarray(jnp.asarray(scores * 20, jnp.bfloat16), np.float32)),
      rtol=2e-3, atol=1e-5)


_SCRIPT = textwrap.dedent("""
  import json, sys
  import numpy as np
  import jax
  from jax.sharding import NamedSharding, PartitionSpec as P
  from maskjax.ops import sinkhorn
  assert jax.device_count() == 8, jax.devices()
  scores = np.random.default_rng(0).uniform(-1, 1, (32, 7)).astype(np.float32)
  mesh = jax.make_mesh((8,), ("data",))
  sh = NamedSharding(mesh, P("data"))
  x = jax.device_put(scores, sh)
  out = jax.jit(sinkhorn.sinkhorn, in_shardings=sh, out_shardings=sh)(x)
  assert len(out.sharding.device_set) == 8
  single = jax.jit(sinkhorn.sinkhorn)(jax.device_put(scores, jax.devices()[0]))
  json.dump({"sharded": np.asarray(out).tolist(), "single": np.asarray(single).tolist()},
            sys.stdout)
""")


def test_sinkhorn_sharded_over_8_devices_equals_single_device():
  env = dict(os.environ)
  env["JAX_NUM_CPU_DEVICES"] = "8"
  env["JAX_PLATFORMS"] = "cpu"
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8")
  res = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True,
                       text=True, timeout=120)
  assert res.returncode == 0, res.stderr[-2000:]
  import json
  data = json.loads(res.stdout)
  sharded, single = np.array(data["sharded"]), np.array(data["single"])
  np.testing.assert_allclose(sharded, single, rtol=1e-5, atol=1e-7)
  scores = np.random.default_rng(0).uniform(-1, 1, (32, 7)).astype(np.float32)
  np.testing.assert_allclose(sharded, _numpy_sinkhorn(scores), rtol=1e-4, atol=1e-6)
