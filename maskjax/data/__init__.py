"""Data layer: dataset sources, the demo generator, grain pipelines, checker.

    from maskjax.data import load_splits, train_dataset, eval_batches, to_global

The names are imported on first use, so that light modules of this package
(`images`, `prepare`, used by an exported detector) do not pull in grain.
"""
from __future__ import annotations

_NAMES = {"Record": "maskjax.data.records", "Splits": "maskjax.data.records",
          "load_splits": "maskjax.data.sources", "train_dataset": "maskjax.data.pipeline",
          "eval_batches": "maskjax.data.pipeline", "to_global": "maskjax.data.pipeline"}
__all__ = list(_NAMES)


def __getattr__(name):
  if name in _NAMES:
    import importlib
    return getattr(importlib.import_module(_NAMES[name]), name)
  raise AttributeError(f"module 'maskjax.data' has no attribute {name!r}")
