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


def write_counts_dataset(root, counts: dict, size: int = 8) -> str:
  """An MVTec-layout dataset under `root` with `counts[category]` training
  normals (random images) and one good + one defective test image each."""
  import numpy as np
  from PIL import Image
  rng = np.random.default_rng(0)
  for cat, n in counts.items():
    for split, kind, count in (("train", "good", n), ("test", "good", 1), ("test", "hole", 1)):
      d = root / cat / split / kind
      d.mkdir(parents=True)
      for i in range(count):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), np.uint8)).save(d / f"{i:03d}.png")
    m = root / cat / "ground_truth" / "hole"
    m.mkdir(parents=True)
    mask = np.zeros((size, size), np.uint8)
    mask[size // 4:size // 2, size // 4:size // 2] = 255
    Image.fromarray(mask).save(m / "000_mask.png")
  return str(root)


def tiny_aca_config(*variants: str, scales=(32,)):
  """ACA's demo (plus `variants`) at test size: 32 px, a 2-block ViT of width
  32, 16 px local crops, 2 of them, `scales` as the test scales, 4 steps."""
  from maskjax import configs
  c = configs.get_config("aca:" + ",".join(("demo",) + tuple(variants)))
  c.input.image_size = 32
  c.model.backbone_overrides.dim = 32
  c.model.backbone_overrides.depth = 2
  c.model.backbone_overrides.heads = 2
  c.model.head_hidden = 32
  c.model.bottleneck = 16
  c.method.pretrain.global_size = 32
  c.method.pretrain.local_size = 16
  c.method.pretrain.num_local = 2
  c.method.test_scales = tuple(scales)
  c.train.steps = 4
  return c
