"""Devices, meshes and shardings for the training loop; multi-host start-up.

Conventions:
  * The mesh has two axes, ("data", "fsdp"), built from `config.mesh`:
    `data = -1` takes every device not used by `fsdp`. All devices of all
    processes are in the mesh (JAX's multi-controller runtime: every process
    runs the same program on its own devices).
  * Batches are sharded along their leading (batch) dimension over both axes,
    `P(("data", "fsdp"))`: each device holds `global_batch / num_devices`
    examples.
  * State (parameters, optimizer state) is replicated, or, with `fsdp > 1`,
    each array of at least `config.mesh.fsdp_min_size` elements is sharded over
    "fsdp" along its largest dimension divisible by the fsdp size (FSDP-style
    parameter sharding; XLA inserts the all-gathers / reduce-scatters). Arrays
    too small or with no divisible dimension stay replicated.
"""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import jax
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

from maskjax.errors import ConfigError

PyTree = Any
MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")

ENV_COORDINATOR = "MASKJAX_COORDINATOR"
ENV_NUM_PROCESSES = "MASKJAX_NUM_PROCESSES"
ENV_PROCESS_ID = "MASKJAX_PROCESS_ID"

_initialized = False


# ----------------------------------------------------------------------------
# multi-host start-up
# ----------------------------------------------------------------------------
def _cluster_detected() -> bool:
  """True on clusters JAX auto-detects (SLURM job steps, Cloud TPU pods, ...)."""
  if "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    return True
  if os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") >= 1:
    return True
  return False


def maybe_initialize_distributed(coordinator_address: Optional[str] = None,
                                 num_processes: Optional[int] = None,
                                 process_id: Optional[int] = None) -> bool:
  """Start JAX's multi-controller runtime when this is a multi-process run.

  Sources, in order: the arguments (main.py's `--coordinator_address
  --num_processes --process_id` flags), the environment
  (`MASKJAX_COORDINATOR`, `MASKJAX_NUM_PROCESSES`, `MASKJAX_PROCESS_ID`), and
  finally JAX's own cluster auto-detection (SLURM, Cloud TPU VM pods), which
  needs no argument at all. A single-process run without any of these does
  nothing. Must be called before anything touches `jax.devices()`; calling it
  again is a no-op. Returns True when the distributed runtime is (now) up.
  """
  global _initialized
  if _initialized:
    return True
  coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
  if num_processes is None and os.environ.get(ENV_NUM_PROCESSES):
    num_processes = int(os.environ[ENV_NUM_PROCESSES])
  if process_id is None and os.environ.get(ENV_PROCESS_ID):
    process_id = int(os.environ[ENV_PROCESS_ID])
  explicit = coordinator_address is not None or (num_processes or 1) > 1
  if not explicit and not _cluster_detected():
    return False
  if explicit and (coordinator_address is None or num_processes is None or process_id is None):
    raise ConfigError(
        "multi-process run needs all of --coordinator_address, --num_processes and "
        f"--process_id (or ${ENV_COORDINATOR}, ${ENV_NUM_PROCESSES}, ${ENV_PROCESS_ID}); got "
        f"coordinator={coordinator_address!r}, num_processes={num_processes!r}, "
        f"process_id={process_id!r}")
  if explicit:
    if not 0 <= process_id < num_processes:
      raise ConfigError(f"--process_id={process_id} must be in [0, {num_processes})")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  else:
    jax.distributed.initialize()   # SLURM / TPU pod auto-detection
  _initialized = True
  logging.info("distributed runtime: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  return True


# ----------------------------------------------------------------------------
# mesh
# ----------------------------------------------------------------------------
def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, int]:
  """(data, fsdp) from `config.mesh` for `num_devices` devices."""
  fsdp = int(mesh_cfg.fsdp)
  data = int(mesh_cfg.data)
  if fsdp < 1 or num_devices % fsdp:
    raise ConfigError(f"config.mesh.fsdp={fsdp} must be >= 1 and divide the number of "
                      f"devices ({num_devices})")
  if data == -1:
    data = num_devices // fsdp
  if data < 1 or data * fsdp != num_devices:
    raise ConfigError(
        f"config.mesh.data={mesh_cfg.data} x config.mesh.fsdp={fsdp} must equal the "
        f"number of devices ({num_devices}); use data=-1 to take the remaining devices")
  return data, fsdp


def make_mesh(mesh_cfg, devices: Optional[Sequence[jax.Device]] = None) -> jax.sharding.Mesh:
  """The ("data", "fsdp") mesh over `devices` (default: all devices of all processes)."""
  devices = list(devices) if devices is not None else jax.devices()
  shape = mesh_shape(mesh_cfg, len(devices))
  axis_types = (jax.sharding.AxisType.Auto,) * 2
  return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh) -> NamedSharding:
  """Leading dimension over all devices ("data" then "fsdp")."""
  return NamedSharding(mesh, P(BATCH_AXES))


def _array_spec(shape: tuple[int, ...], fsdp: int, min_size: int) -> P:
  if fsdp <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  best = None
  for d, n in enumerate(shape):
    if n % fsdp == 0 and (best is None or n > shape[best]):
      best = d
  if best is None:
    return P()
  spec = [None] * len(shape)
  spec[best] = "fsdp"
  return P(*spec)


def state_shardings(abstract_state: PyTree, mesh, mesh_cfg=None) -> PyTree:
  """NamedShardings for a state pytree (of arrays or ShapeDtypeStructs).

  Replicated unless the mesh's "fsdp" axis is > 1; then FSDP-style (see the
  module docstring), with `mesh_cfg.fsdp_min_size` as the size threshold.
  """
  fsdp = int(mesh.shape["fsdp"])
  min_size = int(mesh_cfg.fsdp_min_size) if mesh_cfg is not None else 2 ** 18
  return jax.tree.map(lambda x: NamedSharding(mesh, _array_spec(tuple(x.shape), fsdp, min_size)),
                      abstract_state)


def with_shardings(abstract_state: PyTree, shardings: PyTree) -> PyTree:
  """ShapeDtypeStructs carrying shardings (what Orbax restores into)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      abstract_state, shardings)


def per_host_batch_size(global_batch_size: int, num_devices: int, process_count: int,
                        key: str = "input.batch_size") -> int:
  """Global batch -> this process's share; errors name the config key."""
  if global_batch_size % num_devices:
    raise ConfigError(
        f"config.{key}={global_batch_size} must be divisible by the number of devices "
        f"({num_devices}); e.g. {max(num_devices, global_batch_size // num_devices * num_devices)}")
  return global_batch_size // process_count


def host_to_global(batch: dict, mesh, data_axes=BATCH_AXES) -> dict:
  """Host-local numpy batch -> global jax.Arrays sharded on the leading dim.

  Each process passes its own rows (`global_batch / process_count` of them, in
  process order); the global batch is their concatenation.
  """
  sharding = NamedSharding(mesh, P(data_axes))
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def describe_devices() -> dict:
  """Facts about the devices, for logs, reports and benchmark results."""
  d = jax.devices()[0]
  return {"platform": d.platform, "device_kind": getattr(d, "device_kind", ""),
          "num_devices": jax.device_count(), "local_devices": jax.local_device_count(),
          "process_count": jax.process_count(), "jax_version": jax.__version__}
