"""Stage durations, resolved by the loop from the data size (as big_vision's
steps helper does): a method states epochs, a balanced per-category quota x
epochs, or steps (`maskjax.methods.base.Duration`); this module turns that
into optimisation steps, and schedule lengths stated in epochs into steps by
the same rule.

  steps_per_epoch = ceil(N_train / batch)                 (epochs)
                  = ceil(quota x num_categories / batch)  (balanced epochs)
  steps = epochs x steps_per_epoch, or the stage's fixed steps;
  config.train.steps > 0 overrides every stage's steps.
"""
from __future__ import annotations

import math

import ml_collections

from maskjax.errors import ConfigError


def steps_per_epoch(duration, data, batch_size: int) -> int:
  """Steps of one epoch of `data` (a `DataInfo`) at `batch_size`."""
  if duration.samples_per_category:
    images = int(duration.samples_per_category) * data.num_categories
  else:
    images = data.total_train
  return max(1, math.ceil(images / int(batch_size)))


def fixed_steps(config, duration) -> int:
  """The steps given directly (train.steps, then the stage's own), else 0."""
  return int(config.train.steps) or int(duration.steps)


def resolve(stage, data, config, where: str = "") -> None:
  """Fill in `stage.steps` and `stage.steps_per_epoch` (in place)."""
  d = stage.duration
  where = where or f"stage {stage.name!r}"
  spe = steps_per_epoch(d, data, stage.batch_size)
  steps = fixed_steps(config, d) or int(d.epochs) * spe
  if steps <= 0:
    raise ConfigError(
        f"{where}: no duration: config.train.steps is {config.train.steps} and the stage "
        f"declares {d.describe()}; set --config.train.steps=N or the stage's epochs")
  stage.steps = int(steps)
  stage.steps_per_epoch = int(spe)


def optimizer_config(stage, config) -> ml_collections.ConfigDict:
  """The stage's optimiser config with schedule lengths in steps.

  warmup: `warmup_epochs` x steps_per_epoch when the stage's length comes from
  epochs; when its steps are fixed, `warmup_fraction` of them (a fixed-step run
  has no epochs to count); else `warmup_steps`; at most steps - 1.
  step decay: `decay_every_epochs` x steps_per_epoch when > 0, else `decay_every`.
  """
  o = ml_collections.ConfigDict(stage.optim.to_dict())
  fixed = fixed_steps(config, stage.duration) > 0
  warm_epochs = int(o.warmup_epochs) if "warmup_epochs" in o else 0
  fraction = float(o.warmup_fraction) if "warmup_fraction" in o else 0.0
  if warm_epochs or fraction:
    o.warmup_steps = (int(round(stage.steps * fraction)) if fixed
                      else warm_epochs * stage.steps_per_epoch)
  o.warmup_steps = min(int(o.warmup_steps), max(stage.steps - 1, 0))
  if "decay_every_epochs" in o and int(o.decay_every_epochs) > 0:
    o.decay_every = int(o.decay_every_epochs) * stage.steps_per_epoch
  return o
