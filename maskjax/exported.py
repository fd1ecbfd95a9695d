"""Run an exported maskjax detector with jax and numpy alone.

`python -m maskjax.export` writes a directory:

  detector.jaxexport   `jax.export` serialized StableHLO of
                       image [B, S, S, 3] float32 in [0, 1], category_id [B] int32
                       -> image_score [B], anomaly_map [B, S, S],
                          normalized_score [B], decision [B] bool
                       (lowered for CPU and CUDA; B symbolic when the method allows)
  weights.npz          the trained state, flattened (leaf_0 ... leaf_N)
  detector.json        input size, normalisation, thresholds, categories, batch

This module imports no method or model code (nor Flax or Orbax): the
computation is the StableHLO in the artifact. Images are prepared on the host
the way training read them (PIL bilinear resize to S x S, 8-bit values / 255).
"""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np

ARTIFACT = "detector.jaxexport"
WEIGHTS = "weights.npz"
META = "detector.json"


class ExportedDetector:
  """`ExportedDetector(out_dir)`: `.score(images, category_ids)` on prepared
  arrays, `.predict(inputs)` on paths / arrays like `maskjax.Detector`."""

  def __init__(self, out_dir: str):
    from jax import export as jax_export
    self.out_dir = os.path.abspath(out_dir)
    try:
      with open(os.path.join(self.out_dir, META), encoding="utf-8") as f:
        self.meta = json.load(f)
      with open(os.path.join(self.out_dir, ARTIFACT), "rb") as f:
        self._exported = jax_export.deserialize(bytearray(f.read()))
      with np.load(os.path.join(self.out_dir, WEIGHTS)) as z:
        self._weights = [z[f"leaf_{i}"] for i in range(len(z.files))]
    except (OSError, ValueError, KeyError) as e:
      from maskjax.errors import CheckpointError
      raise CheckpointError(f"{self.out_dir} is not a maskjax export ({type(e).__name__}: {e}); "
                            "write one with python -m maskjax.export") from e
    self.image_size = int(self.meta["image_size"])
    self.categories = list(self.meta["categories"])
    self.batch = self.meta["batch_size"]  # None: any batch size

  # -- arrays in, arrays out -------------------------------------------------------
  def score(self, images: np.ndarray, category_ids: Sequence[int] | None = None) -> dict:
    """images float32 [N, S, S, 3] in [0, 1] -> dict of numpy arrays (N rows)."""
    images = np.asarray(images, np.float32)
    n = images.shape[0]
    cats = np.zeros((n,), np.int32) if category_ids is None else np.asarray(category_ids,
                                                                           np.int32)
    if self.batch is None:
      return _numpy(self._exported.call(self._weights, images, cats))
    parts = []
    for start in range(0, n, self.batch):  # fixed batch: pad the last chunk
      chunk, cat = images[start:start + self.batch], cats[start:start + self.batch]
      m = chunk.shape[0]
      if m < self.batch:
        chunk = np.concatenate([chunk, np.zeros((self.batch - m,) + chunk.shape[1:], np.float32)])
        cat = np.concatenate([cat, np.zeros((self.batch - m,), np.int32)])
      out = _numpy(self._exported.call(self._weights, chunk, cat))
      parts.append({k: v[:m] for k, v in out.items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  # -- inputs as users have them ---------------------------------------------------------
  def predict(self, inputs: Any, category: str | None = None) -> list[dict]:
    """Per input image: {path, category, score, normalized_score, decision,
    anomaly_map (at the image's original size), threshold}."""
    from maskjax.data import prepare  # host-side image preparation (PIL), no model code
    items = prepare.collect(inputs)
    cats = [prepare.category_for(it, category, self.categories) for it in items]
    arrays = np.stack([prepare.to_model_input(it, self.image_size) for it in items])
    out = self.score(arrays, [self.categories.index(c) if c in self.categories else 0
                              for c, _ in cats])
    results = []
    for i, it in enumerate(items):
      results.append({
          "path": it.path, "category": cats[i][0], "threshold": cats[i][1],
          "score": float(out["image_score"][i]),
          "normalized_score": float(out["normalized_score"][i]),
          "decision": bool(out["decision"][i]),
          "anomaly_map": prepare.to_original_size(out["anomaly_map"][i], it.size)})
    return results


def _numpy(tree) -> dict:
  return {k: np.asarray(v) for k, v in tree.items()}
