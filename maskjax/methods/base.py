"""The contract between a method and the generic training loop.

A method is a small object built from the run's config. The loop
(`maskjax.train`) never branches on the method's name: it asks the method for
its stages, trains each stage in turn (each stage checkpointed and resumable on
its own), then calibrates on the validation split of training normals and
scores the test split.

State is a plain pytree (nested dicts of arrays, optax states) so that it can be
sharded, donated, checkpointed by Orbax and restored without the model objects.
Flax NNX modules are run functionally: a method keeps its `graphdef` on the
Python object and puts `nnx.State.to_pure_dict()` trees into the state.

Batches reaching `train_step` / `score` are dicts of global `jax.Array`s,
sharded along the mesh's data axes on their leading dimension:

  image        float32 [B, H, W, 3] in [0, 1] (method-specific normalisation is
               done on device by the method)
  mask         float32 [B, H, W] ground-truth / synthetic anomaly mask (0/1)
  label        int32   [B]  0 normal, 1 anomalous
  category_id  int32   [B]
  valid        bool    [B]  False for padding examples in the last eval batch
  plus whatever keys the stage's `host_transform` adds.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Mapping, Optional

import jax
import numpy as np

PyTree = Any
Batch = Mapping[str, jax.Array]
# Host-side (NumPy, inside grain workers) per-example transform:
# (example dict of numpy arrays, numpy Generator seeded per example) -> example dict.
HostTransform = Callable[[dict, np.random.Generator], dict]


@dataclasses.dataclass
class Stage:
  """One optimisation stage of a method.

  Attributes:
    name: short name, used for the checkpoint directory (`<workdir>/checkpoints/<name>`)
      and in logs (e.g. "train", "pretrain", "finetune", "stage1").
    steps: total optimisation steps of this stage.
    batch_size: global batch size of this stage.
    init: `init(rng, previous_state_or_None) -> state`. `previous_state` is the
      final state of the stage before (e.g. MALA stage 2 starts from stage 1).
      Runs under `jax.jit` with the shardings chosen by the loop, so it must be
      a pure function of its inputs (shapes static).
    train_step: `train_step(state, batch, rng) -> (state, metrics)` pure; the
      loop jits it with explicit shardings and donates `state`. `metrics` is a
      flat dict of scalar arrays; the key "loss" is required. Every term of the
      loss should be reported under its own key ("loss/ssim", ...) so a NaN is
      named.
    host_transform: optional per-example NumPy transform applied in grain
      workers on training examples (synthetic anomalies, crops, ...).
    train_split: "train" (normals) by default.
    samples_per_epoch: optional n = balanced multi-category sampling, n
      training images per category per epoch (drawn without replacement
      within an epoch when the category has enough); None = every training
      image once per epoch.
  """
  name: str
  steps: int
  batch_size: int
  init: Callable[[jax.Array, Optional[PyTree]], PyTree]
  train_step: Callable[[PyTree, Batch, jax.Array], tuple[PyTree, dict]]
  host_transform: Optional[HostTransform] = None
  train_split: str = "train"
  samples_per_epoch: Optional[int] = None


class Method:
  """Base class. Subclasses register themselves with `maskjax.methods.register`."""

  #: registry key, e.g. "riad"
  name: str = ""
  #: the run directory, set by the loop before `stages()` (for files a method
  #: keeps with its run, e.g. EAR's fitted mosaic scales); None outside a run.
  workdir: Optional[str] = None
  #: whether the method's train steps honour `config.optim.accum_steps`
  #: (`train_utils.value_and_grad_accum`); the loop refuses accum_steps > 1 otherwise.
  supports_accumulation: bool = True
  #: whether the method reads `config.model.init_from` (pretrained weights);
  #: the loop refuses a non-empty value for a method that would ignore it.
  uses_init_from: bool = False

  def __init__(self, config):
    self.config = config

  # -- training -------------------------------------------------------------
  def stages(self) -> list[Stage]:
    raise NotImplementedError

  # -- calibration ------------------------------------------------------------
  def calibrate(self, state: PyTree, val_batches: Iterable[Batch]) -> dict:
    """Statistics computed on the validation split of training normals after
    training (e.g. SSM's eta). Returned dict of floats/arrays is saved with the
    checkpoint (`<workdir>/calibration.json`) and passed to `score`."""
    return {}

  # -- scoring ----------------------------------------------------------------
  def score(self, state: PyTree, batch: Batch, calibration: dict) -> dict:
    """Pure, jittable. Returns {"anomaly_map": float32 [B, H, W] at the input
    resolution, "image_score": float32 [B]} (higher = more anomalous)."""
    raise NotImplementedError

  # -- description for reports/logs -----------------------------------------
  def describe(self) -> dict:
    """Facts the report should state (e.g. {"init": "random (no checkpoint)"})."""
    return {}
