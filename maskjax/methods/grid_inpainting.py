"""What the grid-masking U-Net inpainting methods (RIAD and SSM, which builds
on it) share: grid cell sizes, U-Net widths and switches read and checked
once, the image size they imply, compute dtype, and the fixed key of their
test-time masks. Each method keeps its own model, losses and score."""
from __future__ import annotations

import jax

from maskjax import train_utils
from maskjax.methods.base import Duration, Method, Stage
from maskjax.models.unet import grid_geometry, unet_options
from maskjax.ops import normalize


class GridInpaintingMethod(Method):
  """A `Method` whose net is one of `maskjax.models.unet`'s U-Nets, fed
  mean = std = 0.5 images and grid masks of the cell sizes `config.method.ks`.

  Subclasses name the `config.model` switches their U-Net takes (`UNET_KEYS`);
  `geometry_ks` adds cell sizes besides `ks` that the image size must admit
  (SSM's training sizes)."""

  input_normalization = normalize.HALF_NAME
  UNET_KEYS: tuple[str, ...] = ()

  def __init__(self, config, data, *, geometry_ks: tuple[int, ...] = ()):
    super().__init__(config, data)
    self.ks = tuple(int(k) for k in config.method.ks)
    self.widths, self.size = grid_geometry(config, self.ks + tuple(geometry_ks), self.name)
    self.unet = unet_options(config.model, self.UNET_KEYS)
    self.score_seed = int(config.method.score_seed)
    self.dtype = train_utils.compute_dtype(config.train)

  def score_key(self, k: int) -> jax.Array:
    """The fixed key of the test-time masks of cell size k
    (`config.method.score_seed` folded with k: the same masks for every image
    and every call)."""
    return jax.random.fold_in(jax.random.PRNGKey(self.score_seed), k)

  def init_model(self, rng: jax.Array, previous):
    """The U-Net from random weights (`_factory`): (params, BatchNorm
    statistics, no extras). No pretrained weights exist for these nets."""
    del previous
    params, rest = train_utils.init_pure(self._factory, rng)
    return params, rest, {}

  def train_stage(self, loss_fn, prepare) -> Stage:
    """The method's one stage: `config.train.epochs` over the training split
    at `config.input.batch_size`, with `config.optim`."""
    return Stage(name="train", duration=Duration(epochs=int(self.config.train.epochs)),
                 batch_size=int(self.config.input.batch_size), optim=self.config.optim,
                 init_model=self.init_model, loss_fn=loss_fn, prepare=prepare)
