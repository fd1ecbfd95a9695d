"""The run's data facts (`maskjax.methods.base.DataInfo`): built by the loop
from the splits it loaded, kept as `<workdir>/data_info.json` so that eval,
predict and export resolve the same stage durations without the dataset."""
from __future__ import annotations

import json
import os
from typing import Optional

from maskjax import fileio
from maskjax.errors import WorkdirError
from maskjax.methods.base import DataInfo

FILENAME = "data_info.json"


def dataset_name(config) -> str:
  """The name reports give the dataset: "demo", "mvtec", "visa", or the folder's name."""
  fmt = str(config.input.format)
  if not config.input.data_dir:
    return "demo"
  if fmt in ("mvtec", "visa"):
    return fmt
  return os.path.basename(os.path.normpath(str(config.input.data_dir))) or fmt


def from_splits(splits, config) -> DataInfo:
  counts = splits.counts()
  default = dataset_name(config)
  multi = str(config.input.format) == "multi"
  return DataInfo(
      categories=tuple(splits.categories),
      num_train={c: int(counts[c]["train"]) for c in splits.categories},
      image_size=int(config.input.image_size),
      datasets={c: (c.split("/", 1)[0] if multi and "/" in c else default)
                for c in splits.categories})


def load(workdir: str) -> Optional[DataInfo]:
  path = os.path.join(workdir, FILENAME)
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      return DataInfo.from_json(json.load(f))
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise WorkdirError(f"{path} is not a readable data description ({type(e).__name__}: "
                       f"{e}); delete it to rebuild it from the dataset") from e


def save(workdir: str, info: DataInfo) -> None:
  fileio.write_json(os.path.join(workdir, FILENAME), info.to_json())


def check_same(recorded: DataInfo, current: DataInfo, workdir: str) -> None:
  """A resumed run trains on the data it started with: stage lengths follow it."""
  if recorded.to_json() == current.to_json():
    return
  diff = [k for k, v in current.to_json().items() if recorded.to_json().get(k) != v]
  raise WorkdirError(
      f"--workdir={workdir} was trained on other data ({', '.join(diff)} differ from "
      f"{os.path.join(workdir, FILENAME)}: {recorded.total_train} training images in "
      f"{recorded.num_categories} categories then, {current.total_train} in "
      f"{current.num_categories} now); stage lengths depend on it: use a new --workdir")


def for_workdir(config, workdir: str) -> DataInfo:
  """The data facts of a trained run: its `data_info.json`, or (a run from before
  that file existed) rebuilt from the dataset."""
  info = load(workdir)
  if info is None:
    from maskjax.data import sources
    info = from_splits(sources.load_splits(config.input, int(config.seed)), config)
  return info
