"""Images as users hand them to a detector -> model inputs, and maps back.

`collect` accepts one image file, a folder (its image files, sorted), a glob
pattern, a list of paths, a PIL image, an [H, W(, C)] array or an
[N, H, W, C] batch. `to_model_input` prepares an item exactly as training
read its images (`maskjax.data.images.load_image`: PIL bilinear resize to the
model's square input, 8-bit values / 255). `to_original_size` resizes an
anomaly map back to the image's own size (bilinear), so a map lies on the
picture it came from.
"""
from __future__ import annotations

import glob as glob_lib
import os
from typing import Any, NamedTuple, Optional

import numpy as np
from PIL import Image

from maskjax.data import images
from maskjax.errors import DataError


class Item(NamedTuple):
  path: Optional[str]          # None for in-memory images
  array: Optional[np.ndarray]  # in-memory image (None for files)
  size: tuple[int, int]        # original (width, height)
  folder: Optional[str]        # name of the sub-folder the file sits in (a category hint)


def _from_file(path: str) -> Item:
  info, problems = images.inspect_file(path)
  bad = [m for k, m in problems if k not in images.UNUSUAL_KINDS]
  if info is None or bad:
    raise DataError(f"{path}: " + "; ".join(bad or ["not a readable image"]))
  return Item(path, None, (info.width, info.height),
              os.path.basename(os.path.dirname(os.path.abspath(path))))


def _from_array(a: np.ndarray) -> Item:
  if a.ndim == 2:
    a = a[..., None]
  if a.ndim != 3 or a.shape[-1] not in (1, 3):
    raise DataError(f"an image array must be [H, W], [H, W, 1] or [H, W, 3]; got {a.shape}")
  return Item(None, a, (a.shape[1], a.shape[0]), None)


def collect(inputs: Any) -> list[Item]:
  """Every image `inputs` names (see the module docstring); DataError when none."""
  if isinstance(inputs, Image.Image):
    return [_from_array(np.asarray(inputs.convert("RGB")))]
  if isinstance(inputs, np.ndarray) or hasattr(inputs, "__array__") and not isinstance(
      inputs, (str, os.PathLike, list, tuple)):
    a = np.asarray(inputs)
    return [_from_array(x) for x in a] if a.ndim == 4 else [_from_array(a)]
  if isinstance(inputs, (list, tuple)):
    out = []
    for x in inputs:
      out += collect(x)
    return out
  path = os.fspath(inputs)
  if os.path.isdir(path):
    names = sorted(n for n in os.listdir(path) if not n.startswith("."))
    files = [os.path.join(path, n) for n in names if os.path.isfile(os.path.join(path, n))]
    imgs = [f for f in files if f.lower().endswith(images.IMAGE_EXTENSIONS)]
    if not imgs:
      what = (f"only non-image files: {', '.join(os.path.basename(f) for f in files)}"
              if files else "it is empty")
      raise DataError(f"{path}: no images to score ({what}); expected files ending in "
                      f"{', '.join(images.IMAGE_EXTENSIONS)}")
    skipped = [os.path.basename(f) for f in files if f not in imgs]
    if skipped:
      from absl import logging
      logging.warning("%s: not images, left out: %s", path, ", ".join(skipped))
    return [_from_file(f) for f in imgs]
  if os.path.isfile(path):
    return [_from_file(path)]
  if any(c in path for c in "*?["):
    hits = sorted(p for p in glob_lib.glob(path, recursive=True) if os.path.isfile(p))
    imgs = [p for p in hits if p.lower().endswith(images.IMAGE_EXTENSIONS)]
    if not imgs:
      raise DataError(f"{path}: the pattern matches no image file"
                      + (f" (only: {', '.join(hits[:10])})" if hits else ""))
    return [_from_file(p) for p in imgs]
  raise DataError(f"{path}: no such file, folder or pattern")


def to_model_input(item: Item, size: int) -> np.ndarray:
  """float32 [size, size, 3] in [0, 1], prepared as training prepared its images."""
  if item.path is not None:
    return images.load_image(item.path, size, convert_unusual=True)
  a = item.array
  if a.dtype == np.uint8:
    img = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)
    if img.size != (size, size):
      img = img.resize((size, size), Image.BILINEAR)
    out = np.asarray(img, np.float32) * (1.0 / 255.0)
  else:
    a = np.asarray(a, np.float32)
    if a.min() < 0.0 or a.max() > 1.0:
      raise DataError(f"a float image array must hold values in [0, 1]; got "
                      f"[{a.min():.3g}, {a.max():.3g}] (pass uint8 for 0..255 values)")
    out = images.resize_float(a, size) if a.shape[:2] != (size, size) else a
  if out.ndim == 2:
    out = out[..., None]
  if out.shape[-1] == 1:
    out = np.repeat(out, 3, axis=-1)
  return np.ascontiguousarray(out, np.float32)


def as_float_rgb(a: np.ndarray) -> np.ndarray:
  """An in-memory image as float32 [H, W, 3] in [0, 1] at its own size."""
  a = np.asarray(a)
  out = a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)
  return np.repeat(out, 3, axis=-1) if out.shape[-1] == 1 else out


def to_original_size(anomaly_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """[h, w] map -> float32 [H, W] of the original (W, H) `size`, bilinear."""
  m = np.asarray(anomaly_map, np.float32)
  if (m.shape[1], m.shape[0]) == tuple(size):
    return m
  return np.asarray(Image.fromarray(m, mode="F").resize(tuple(size), Image.BILINEAR), np.float32)


def category_for(item: Item, given: Optional[str], known: list[str]) -> tuple[Optional[str], str]:
  """(category, threshold source) of one image for a model trained on `known`.

  `given` wins (it must be known); else the file's sub-folder name when the
  model knows it ("folder"); else the only category of a one-category model;
  else None with the global threshold ("global")."""
  if given is not None:
    if given not in known:
      raise DataError(f"category {given!r} is not one the model was trained on "
                      f"({', '.join(known)})")
    return given, "category"
  if item.folder and item.folder in known:
    return item.folder, "folder"
  if len(known) == 1:
    return known[0], "category"
  return None, "global"
