"""Data layer: dataset sources, the demo generator, grain pipelines, checker.

    from maskjax.data import load_splits, train_dataset, eval_batches, to_global
"""
from __future__ import annotations

from maskjax.data.records import Record, Splits
from maskjax.data.sources import load_splits
from maskjax.data.pipeline import eval_batches, to_global, train_dataset

__all__ = ["Record", "Splits", "load_splits", "train_dataset", "eval_batches", "to_global"]
