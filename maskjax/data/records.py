"""Plain records describing one dataset example, and the split bundle.

A `Record` points at files; nothing is decoded until the pipeline maps it.
Paths are ordinary file paths, or `tfds://...` keys for datasets written by
`maskjax.data.tfds_builders` (resolved by `maskjax.data.images.read_bytes`).
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Record:
  """One image of a dataset.

  Attributes:
    path: image file (or a `tfds://` key).
    mask_path: ground-truth mask file; None for normal images (and for
      anomalous images of datasets without pixel masks, folder format only).
    label: 0 normal, 1 anomalous.
    category: e.g. "bottle", or "mvtec/bottle" when several datasets are combined.
    category_id: index into the run's sorted category list (`Splits.categories`).
    defect: defect kind, "good" for normals.
    split: "train" | "val" | "test".
  """
  path: str
  mask_path: str | None
  label: int
  category: str
  category_id: int
  defect: str
  split: str


@dataclasses.dataclass
class Splits:
  """The selected categories (sorted; `category_id` indexes this list) and
  the three splits. `val` is a seeded fraction of the training normals, used
  for thresholds and calibration; `test` is never used for either."""
  categories: list[str]
  train: list[Record]
  val: list[Record]
  test: list[Record]

  def counts(self) -> dict[str, dict[str, int]]:
    """{category: {"train": n, "val": n, "test_good": n, "test_defect": n}}."""
    out = {c: {"train": 0, "val": 0, "test_good": 0, "test_defect": 0} for c in self.categories}
    for r in self.train:
      out[r.category]["train"] += 1
    for r in self.val:
      out[r.category]["val"] += 1
    for r in self.test:
      out[r.category]["test_defect" if r.label else "test_good"] += 1
    return out
