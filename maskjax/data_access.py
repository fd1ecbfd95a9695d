"""How the loop gets its data: `maskjax.data.sources` (splits) and
`maskjax.data.pipeline` (grain iterators), behind one small object so that
tests can pass another with the same four methods (`tests/helpers_toy_method.py`)."""
from __future__ import annotations

from typing import Iterable, Iterator

from maskjax import mesh as mesh_lib


class DataAPI:
  """How the loop gets its data: `maskjax.data.sources` / `maskjax.data.pipeline`.

  Tests pass another object with the same four methods to `run`/`train_all`.
  """

  def load_splits(self, input_cfg, seed: int):
    from maskjax.data import sources
    return sources.load_splits(input_cfg, seed)

  def train_iterator(self, input_cfg, records, *, global_batch_size: int, seed: int,
                     host_transform=None, process_index: int = 0, process_count: int = 1,
                     samples_per_epoch=None) -> Iterator[dict]:
    from maskjax.data import pipeline
    return iter(pipeline.train_dataset(
        input_cfg, records, global_batch_size=global_batch_size, seed=seed,
        host_transform=host_transform, process_index=process_index,
        process_count=process_count, samples_per_epoch=samples_per_epoch))

  def eval_batches(self, input_cfg, records, *, global_batch_size: int, process_index: int = 0,
                   process_count: int = 1) -> Iterable[dict]:
    from maskjax.data import pipeline
    return pipeline.eval_batches(input_cfg, records, global_batch_size=global_batch_size,
                                 process_index=process_index, process_count=process_count)

  def to_global(self, batch: dict, mesh) -> dict:
    return mesh_lib.host_to_global(batch, mesh, mesh_lib.BATCH_AXES)
