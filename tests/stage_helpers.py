"""Methods and their resolved stages for unit tests, on stated data facts
(`DataInfo`) instead of a dataset scan."""
from __future__ import annotations

from maskjax import train_state
from maskjax.methods import DataInfo, build_method


def demo_categories(config) -> tuple[str, ...]:
  """The categories a config selects on the demo data ("*" = all of them)."""
  cats = tuple(config.input.categories)
  if cats != ("*",):
    return cats
  from maskjax.data import demo
  if str(config.input.demo_source) == "synthetic":
    return tuple(demo.SYNTHETIC_CATEGORIES)
  return tuple(demo.DEMO_CATEGORIES)


def data_info(config, num_train: int = 16) -> DataInfo:
  return DataInfo.uniform(demo_categories(config), num_train, int(config.input.image_size))


def build(config, num_train: int = 16):
  """`build_method(config, DataInfo)` with `num_train` training images per category."""
  return build_method(config, data_info(config, num_train))


def stages(method):
  """The method's stages, resolved and built as the loop does."""
  return train_state.resolve_stages(method, method.config)
