"""The contract between a method and the generic training loop.

A method is a small object built from the run's config and the run's data
facts (`DataInfo`, built by the loop from the splits it loaded). The loop
(`maskjax.train`) never branches on the method's name: it asks the method for
its stages, resolves each stage's duration with the data size
(`maskjax.durations`), builds the stage's optimiser, init and train step
(`maskjax.train_state`), trains each stage in turn (each stage checkpointed
and resumable on its own), then calibrates on the validation split of
training normals and scores the test split.

State is one plain pytree layout for every method and stage
(`maskjax.train_state`): {"params", "model_state", "opt_state", "step",
"extras"}, so that it can be sharded, donated, checkpointed by Orbax and
restored without the model objects. Flax NNX modules are run functionally: a
method keeps its `graphdef` on the Python object and puts
`nnx.State.to_pure_dict()` trees into the state.

Batches reaching a stage / `score` are dicts of global `jax.Array`s,
sharded along the mesh's data axes on their leading dimension:

  image        float32 [B, H, W, 3] in [0, 1] (method-specific normalisation is
               done on device by the method)
  mask         float32 [B, H, W] ground-truth / synthetic anomaly mask (0/1)
  label        int32   [B]  0 normal, 1 anomalous
  category_id  int32   [B]
  valid        bool    [B]  False for padding examples in the last eval batch
  image_source float32 [B, S, S, 3] in [0, 1], only with `config.input.source_size`
               S > 0 (the photo resized once to S; for methods with
               `uses_source_image`: ACA's test scales and pretraining crops)
  plus whatever keys the stage's `host_transform` adds.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

import jax
import numpy as np

from maskjax.config_base import config_choice  # noqa: F401  (the methods' validator)

PyTree = Any
Batch = Mapping[str, jax.Array]
# Host-side (NumPy, inside grain workers) per-example transform:
# (example dict of numpy arrays, numpy Generator seeded per example) -> example dict.
HostTransform = Callable[[dict, np.random.Generator], dict]


@dataclasses.dataclass(frozen=True)
class DataInfo:
  """What a method may know about its data, built once by the loop.

  Attributes:
    categories: category names in run order (`category_id` indexes this).
    num_train: training images per category (the split the stages train on,
      after the validation hold-out).
    image_size: side of the square images the pipeline delivers.
    datasets: the dataset each category comes from ("mvtec", "visa", "demo",
      a folder name, ...).
  """
  categories: tuple[str, ...]
  num_train: Mapping[str, int]
  image_size: int
  datasets: Mapping[str, str]

  @property
  def total_train(self) -> int:
    return int(sum(self.num_train.values()))

  @property
  def num_categories(self) -> int:
    return len(self.categories)

  def to_json(self) -> dict:
    return {"categories": list(self.categories),
            "num_train": {c: int(self.num_train[c]) for c in self.categories},
            "image_size": int(self.image_size),
            "datasets": {c: str(self.datasets[c]) for c in self.categories}}

  @classmethod
  def from_json(cls, d: Mapping) -> "DataInfo":
    cats = tuple(str(c) for c in d["categories"])
    return cls(categories=cats, num_train={c: int(d["num_train"][c]) for c in cats},
               image_size=int(d["image_size"]),
               datasets={c: str(d["datasets"][c]) for c in cats})

  @classmethod
  def uniform(cls, categories, num_train: int, image_size: int,
              dataset: str = "demo") -> "DataInfo":
    """The same number of training images in every category (tests, benchmarks)."""
    cats = tuple(categories)
    return cls(categories=cats, num_train={c: int(num_train) for c in cats},
               image_size=int(image_size), datasets={c: dataset for c in cats})


@dataclasses.dataclass(frozen=True)
class Duration:
  """How long a stage trains, as the paper states it; the loop converts it to
  steps with the data size (`maskjax.durations.resolve`).

  Exactly one of:
    steps: a fixed number of optimisation steps;
    epochs: passes over the training split (steps = epochs x
      ceil(N_train / batch));
    epochs with samples_per_category: balanced epochs of that many images
      per category (steps = epochs x ceil(quota x categories / batch)), and
      the pipeline samples that way.
  `config.train.steps > 0` overrides every stage's steps.
  """
  steps: int = 0
  epochs: int = 0
  samples_per_category: int = 0

  def describe(self) -> str:
    if self.steps:
      return f"{self.steps} steps"
    if self.samples_per_category:
      return f"{self.epochs} epochs of {self.samples_per_category} images per category"
    return f"{self.epochs} epochs"


@dataclasses.dataclass(frozen=True)
class PretrainedWeights:
  """A module the paper starts from pretrained weights, and how to get them.

  key: the config key holding the converted checkpoint ("model.init_from").
  module: what it initialises ("ViT-S/16 encoder").
  source: the file the paper's authors publish (name or URL).
  convert: the command converting it (OUT = the directory the key names).
  """
  key: str
  module: str
  source: str
  convert: str

  @classmethod
  def from_url(cls, key: str, module: str, url: str, arch: str) -> "PretrainedWeights":
    """The authors' published .pth at `url`, converted for `arch`."""
    name = url.rsplit("/", 1)[-1]
    return cls(key=key, module=module, source=f"{name} ({url})",
               convert=f"python -m maskjax.weights.convert {name} OUT --arch {arch}")


@dataclasses.dataclass
class Stage:
  """One optimisation stage of a method: what the method declares.

  The loop owns the optimiser, the step counter, gradient accumulation and
  the train state layout; a method gives the pieces that are its own.

  Attributes:
    name: short name, used for the checkpoint directory (`<workdir>/checkpoints/<name>`)
      and in logs (e.g. "train", "pretrain", "finetune", "stage1").
    duration: `Duration` (epochs, balanced quota x epochs, or steps).
    batch_size: global batch size of this stage.
    optim: the stage's optimiser config (`config.optim` with the stage's own
      values put in); schedule lengths stated in epochs (`warmup_epochs`,
      `decay_every_epochs`) are converted by the loop.
    init_model: `init_model(rng, previous_state_or_None) -> (params,
      model_state, extras)`: the trainable parameters (the optimiser's
      target), other model state (BatchNorm statistics, frozen parts), and
      named extras (an EMA teacher, a discriminator and its optimiser
      state, ...). `previous_state` is the final state of the stage before.
      Runs under `jax.jit`, so it must be a pure function of its inputs.
    loss_fn: `loss_fn(params, state, batch, rng, step) -> (loss, aux)`, pure.
      `batch` is one micro-batch (the whole batch without accumulation) plus
      what `prepare` returned. `aux` is a dict of scalar metrics; every
      term of the loss under its own key ("loss/ssim", ...) so a NaN is
      named; optional keys "model_state" (the new model state, taken from
      the last micro-batch) and "outputs" (a dict of per-example arrays,
      concatenated over micro-batches, handed to `after_update`).
    prepare: optional `prepare(state, batch, rng, step) -> (per_example,
      shared)`: work on the whole batch before it is split into
      micro-batches (masks, synthetic anomalies, teacher targets), so that
      k micro-batches see what one k-times larger batch sees.
      `per_example` arrays have the batch as leading dimension (split with
      it); `shared` ones do not (every micro-batch gets them).
    after_update: optional `after_update(new_state, old_state, batch, outputs,
      rng, step) -> (state, metrics)` after the optimiser update (an EMA
      teacher, renormalised prototypes, a discriminator's own step).
    trainable: optional pytree of bools with the params' structure; False
      sub-trees get no updates and no optimiser state.
    host_transform: optional per-example NumPy transform applied in grain
      workers on training examples (synthetic anomalies, crops, ...).
    train_split: "train" (normals) by default.
    batch_key: the config key that sets `batch_size` (named in errors).

  Filled in by the loop (`maskjax.train_state.resolve_stages`): `steps`,
  `steps_per_epoch` (`maskjax.durations`), and the built `init(rng,
  previous) -> state`, `train_step(state, batch, rng) -> (state, metrics)`
  and learning-rate `schedule` (`maskjax.train_state.build`).
  """
  name: str
  duration: Duration
  batch_size: int
  optim: Any
  init_model: Callable[[jax.Array, Optional[PyTree]], tuple[PyTree, PyTree, dict]]
  loss_fn: Callable[..., tuple[jax.Array, dict]]
  prepare: Optional[Callable[..., tuple[dict, dict]]] = None
  after_update: Optional[Callable[..., tuple[PyTree, dict]]] = None
  trainable: Optional[PyTree] = None
  host_transform: Optional[HostTransform] = None
  train_split: str = "train"
  batch_key: str = "input.batch_size"
  steps: int = 0
  steps_per_epoch: int = 0
  init: Optional[Callable[[jax.Array, Optional[PyTree]], PyTree]] = None
  train_step: Optional[Callable[[PyTree, Batch, jax.Array], tuple[PyTree, dict]]] = None
  schedule: Optional[Callable] = None

  @property
  def samples_per_epoch(self) -> Optional[int]:
    """Balanced sampling quota for the pipeline (None = every image once per epoch)."""
    return int(self.duration.samples_per_category) or None


class Method:
  """Base class. Built-in methods are listed in `maskjax.methods.KNOWN_METHODS`;
  others join the same registry with `maskjax.methods.register`.

  `Method(config, data)`: `data` is the run's `DataInfo` (categories, training
  images per category, image size, datasets); methods never read the dataset
  themselves.
  """

  #: registry key, e.g. "riad"
  name: str = ""
  #: the run directory, set by the loop before `stages()` (for files a method
  #: keeps with its run, e.g. EAR's fitted mosaic scales); None outside a run.
  workdir: Optional[str] = None
  #: whether the method reads `config.model.init_from` (pretrained weights);
  #: the loop refuses a non-empty value for a method that would ignore it.
  uses_init_from: bool = False
  #: whether the method reads the batches' `image_source` (`config.input.source_size`
  #: > 0); the loop refuses a positive size for a method that would ignore it.
  uses_source_image: bool = False
  #: the modules the paper initialises from pretrained weights: a training run
  #: without their checkpoint is refused unless `config.model.allow_random_init`
  pretrained: tuple[PretrainedWeights, ...] = ()
  #: whether the anomaly synthesis reads `config.input.texture_dir`
  uses_textures: bool = False
  #: how the model sees its [0, 1] input (stated in plans and reports)
  input_normalization: str = "[0, 1] images as loaded"

  def __init__(self, config, data: DataInfo):
    self.config = config
    self.data = data

  @classmethod
  def pretrained_modules(cls, config) -> tuple[PretrainedWeights, ...]:
    """The `pretrained` modules this config actually uses (a method whose
    config can switch the pretrained part off overrides this)."""
    return cls.pretrained

  # -- training -------------------------------------------------------------
  def stages(self) -> list[Stage]:
    raise NotImplementedError

  def stage_setting(self, key: str, stage_value):
    """A stage's own value for the global `key` ("optim.lr", "input.batch_size",
    "train.epochs"), unless the config sets that global key (multi-stage
    configs leave it None): then the global value, so an override on the
    command line reaches every stage."""
    section, name = key.split(".")
    value = self.config[section][name]
    return stage_value if value is None else value

  # -- calibration ------------------------------------------------------------
  #: whether the method calibrates on the validation normals (then it defines
  #: `calibration_stats` and `calibrate`)
  calibrates: bool = False

  def calibration_stats(self, state: PyTree, batch: Batch) -> jax.Array:
    """Pure, jittable: per-example statistics [B, ...] of a batch of
    validation normals (e.g. SSM's S^0 patch maxima per scale)."""
    raise NotImplementedError

  def calibrate(self, stats: np.ndarray, category_ids: np.ndarray) -> dict:
    """Host reduction of `calibration_stats` over the whole validation split
    (the loop runs it on device, drops padding and gathers the rows of every
    process, so a method calls no multi-host utility): stats [N, ...],
    category_ids [N]. The returned dict of floats/lists is saved as
    `<workdir>/calibration.json` and passed to `score`."""
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
