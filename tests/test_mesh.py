"""Meshes and shardings: 8 simulated CPU devices (subprocess) vs one device."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import ml_collections
import pytest

from maskjax import mesh as mesh_lib
from maskjax.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SCRIPT = textwrap.dedent("""
  import json, os, sys
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  os.environ["JAX_PLATFORMS"] = "cpu"
  sys.path[:0] = [{root!r}, os.path.join({root!r}, "tests")]
  import jax, numpy as np
  import helpers_toy_method as toy
  import stage_helpers
  from maskjax import mesh as mesh_lib, train
  assert jax.device_count() == 8

  cfg = toy.toy_config(**{{"input.batch_size": 16, "mesh.fsdp_min_size": 64}})
  data = toy.ToyData()
  splits = data.load_splits(cfg.input, 0)
  host_batch = next(data.train_iterator(cfg.input, splits.train, global_batch_size=16, seed=0))

  def one_step(mesh_cfg, devices):
    mesh = mesh_lib.make_mesh(mesh_cfg, devices)
    stage = stage_helpers.stages(stage_helpers.build(cfg))[0]
    cs = train.CompiledStage(stage, mesh, mesh_cfg, donate=False)
    state = cs.init_from_seed(0, 0, None)
    batch = data.to_global(host_batch, mesh)
    new, metrics = cs.step(state, batch, cs.stage_key(0, 0))
    step = new["step"]
    specs = {{k: str(v.sharding.spec) for k, v in new["params"].items()}}
    out = {{k: np.asarray(v).tolist() for k, v in toy._flat_params(new).items()}}
    metrics = {{k: float(v) for k, v in metrics.items()}}
    return out, metrics, specs, int(step), str(batch["image"].sharding.spec)

  cfg1 = cfg.mesh.copy_and_resolve_references(); cfg1.data, cfg1.fsdp = 1, 1
  cfg_dp = cfg.mesh.copy_and_resolve_references(); cfg_dp.data, cfg_dp.fsdp = -1, 1
  cfg_fs = cfg.mesh.copy_and_resolve_references(); cfg_fs.data, cfg_fs.fsdp = 2, 4
  res = {{"single": one_step(cfg1, jax.devices()[:1]), "dp": one_step(cfg_dp, None),
          "fsdp": one_step(cfg_fs, None)}}
  print("RESULT" + json.dumps(res))
""")


def test_eight_devices_data_parallel_and_fsdp_equal_single_device():
  import numpy as np
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop("XLA_FLAGS", None)
  p = subprocess.run([sys.executable, "-c", _SCRIPT.format(root=ROOT)], env=env,
                     capture_output=True, text=True, timeout=240)
  assert p.returncode == 0, p.stderr[-3000:]
  line = [l for l in p.stdout.splitlines() if l.startswith("RESULT")][0]
  res = json.loads(line[len("RESULT"):])
  single_params, single_metrics, single_specs, step, _ = res["single"]
  assert step == 1
  for name in ("dp", "fsdp"):
    params, metrics, specs, step, batch_spec = res[name]
    assert step == 1
    assert "data" in batch_spec and "fsdp" in batch_spec
    for k in single_params:
      np.testing.assert_allclose(np.asarray(params[k]), np.asarray(single_params[k]),
                                 rtol=1e-5, atol=1e-5, err_msg=f"{name} {k}")
    for k in single_metrics:
      np.testing.assert_allclose(metrics[k], single_metrics[k], rtol=1e-5, atol=1e-6,
                                 err_msg=f"{name} {k}")
  assert res["dp"][2]["w1"] == "P()"
  # FSDP: w1 [192, 32] and w2 [32, 192] sharded on their 192 dim, b1 (32 < 64) replicated
  fs = res["fsdp"][2]
  assert fs["w1"] == "P('fsdp', None)", fs
  assert fs["w2"] == "P(None, 'fsdp')", fs
  assert fs["b1"] == "P()", fs


def test_state_sharding_rule_and_mesh_shape():
  import jax
  assert mesh_lib._array_spec((10, 12), 4, 16) == jax.sharding.PartitionSpec(None, "fsdp")
  assert mesh_lib._array_spec((12, 10), 4, 16) == jax.sharding.PartitionSpec("fsdp", None)
  assert mesh_lib._array_spec((10, 10), 4, 16) == jax.sharding.PartitionSpec()   # no divisor
  assert mesh_lib._array_spec((3, 4), 4, 16) == jax.sharding.PartitionSpec()     # too small
  assert mesh_lib._array_spec((4, 4), 1, 1) == jax.sharding.PartitionSpec()      # fsdp off
  cfg = ml_collections.ConfigDict({"data": -1, "fsdp": 2})
  assert mesh_lib.mesh_shape(cfg, 8) == (4, 2)
  with pytest.raises(ConfigError, match="config.mesh.fsdp=3"):
    mesh_lib.mesh_shape(ml_collections.ConfigDict({"data": -1, "fsdp": 3}), 8)
  with pytest.raises(ConfigError, match="config.mesh.data=2"):
    mesh_lib.mesh_shape(ml_collections.ConfigDict({"data": 2, "fsdp": 2}), 8)


def test_distributed_needs_all_three_settings(monkeypatch):
  monkeypatch.setenv(mesh_lib.ENV_COORDINATOR, "localhost:1234")
  monkeypatch.delenv(mesh_lib.ENV_NUM_PROCESSES, raising=False)
  monkeypatch.delenv(mesh_lib.ENV_PROCESS_ID, raising=False)
  with pytest.raises(ConfigError, match="--num_processes"):
    mesh_lib.maybe_initialize_distributed()
  monkeypatch.delenv(mesh_lib.ENV_COORDINATOR)
  monkeypatch.delenv("SLURM_JOB_ID", raising=False)
  monkeypatch.delenv("TPU_WORKER_HOSTNAMES", raising=False)
  assert mesh_lib.maybe_initialize_distributed() is False   # single process: nothing to do
