"""grain input pipelines: records -> host-local numpy batches -> global arrays.

Training (`train_dataset`): `MapDataset.source(records)` -> seeded shuffle,
reshuffled every epoch (`repeat(reseed_each_epoch=True)`) -> per-host shard
`[process_index::process_count]` of that global stream (host p takes every
P-th example, so the hosts' local batches of step t together are the global
examples [t*B, (t+1)*B)) -> decode + resize (`map`) -> the method's
`host_transform(example, rng)` (`random_map`; grain seeds the numpy Generator
from the dataset seed and the element's index, so it is reproducible and
independent of worker count) -> `batch(local_batch, drop_remainder=True)` ->
`to_iter_dataset` (decode threads) -> `mp_prefetch` with
`config.input.num_workers` processes when > 0.

Per-example dict before the transform:
  image        float32 [H, W, 3] in [0, 1] (H = W = config.input.image_size)
  mask         float32 [H, W] in {0, 1} (zeros for normals)
  label        int32 []
  category_id  int32 []
  image_source float32 [S, S, 3] in [0, 1], only when S = config.input.source_size
               > 0: the same photo resized once from its decoded original (PIL
               bilinear, antialiased when shrinking, as `image`), never from
               `image`; for methods that cut crops or test scales larger or
               sharper than `image` (ACA; `Method.uses_source_image`: other
               methods refuse a positive size). It costs a second resize per
               decode and host-to-device bytes (S = 512: 5.2x a 224 image).
Batches stack these on a leading host-local batch axis. `iter(ds)` is a grain
`DatasetIterator`; `get_state()` / `set_state()` restore the exact position.

Evaluation (`eval_batches`): records in their given order, padded to a
multiple of the global batch size; batch t covers records [t*B, (t+1)*B), host
p holding the contiguous slice [p*b, (p+1)*b) of it (b = B / process_count).
Padding examples are zeros with `valid=False` and `index=-1` (and a zero
`image_source` when source_size > 0).
"""
from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Callable, Iterator, Optional, Sequence

import grain
import numpy as np

from maskjax.data import images
from maskjax.data.records import Record
from maskjax.errors import ConfigError

HostTransform = Callable[[dict, np.random.Generator], dict]


@dataclasses.dataclass(frozen=True)
class DecodeExample:
  """Picklable record -> example dict (see the module docstring); with
  `source_size` > 0 also "image_source" (the photo decoded once, resized to
  both sides)."""
  image_size: int
  convert_unusual: bool = False
  source_size: int = 0

  def __call__(self, r: Record) -> dict:
    n = self.image_size
    sizes = (n, self.source_size) if self.source_size else (n,)
    image, *source = images.load_image_sizes(r.path, sizes, convert_unusual=self.convert_unusual)
    mask = images.load_mask(r.mask_path, n) if r.mask_path else np.zeros((n, n), np.float32)
    ex = {"image": image, "mask": mask, "label": np.int32(r.label),
          "category_id": np.int32(r.category_id)}
    if source:
      ex["image_source"] = source[0]
    return ex


def source_size(input_cfg) -> int:
  """`config.input.source_size` (0 = off); anything but an int >= 0 is a
  ConfigError naming the key. (A run recorded before the key existed reads
  base_config's 0: `maskjax.workdir.with_schema_defaults`.)"""
  s = input_cfg.source_size
  if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 0:
    raise ConfigError(f"config.input.source_size={s!r} must be an int >= 0 (0 = off: no "
                      "image_source in the batches; > 0: the side of the image_source image)")
  return int(s)


def _decoder(input_cfg) -> DecodeExample:
  return DecodeExample(int(input_cfg.image_size), bool(input_cfg.convert_unusual_images),
                       source_size(input_cfg))


def _local_batch(global_batch_size: int, process_count: int) -> int:
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ConfigError(f"global batch size {global_batch_size} must be a positive multiple of the "
                      f"number of hosts ({process_count}); check config.input.batch_size")
  return global_batch_size // process_count


def _read_options(input_cfg) -> grain.ReadOptions:
  return grain.ReadOptions(num_threads=max(1, int(input_cfg.decode_threads)),
                           prefetch_buffer_size=max(1, 4 * int(input_cfg.prefetch)))


def _maybe_mp(ds: grain.IterDataset, input_cfg) -> grain.IterDataset:
  workers = int(input_cfg.num_workers)
  if workers > 0:
    from absl import flags
    if not flags.FLAGS.is_parsed():
      # grain's worker processes read absl flags; outside an absl app (tests,
      # notebooks, benchmarks) use their defaults.
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=workers, per_worker_buffer_size=max(1, int(input_cfg.prefetch))))
  return ds


def train_dataset(input_cfg, records: Sequence[Record], *, global_batch_size: int, seed: int,
                  host_transform: Optional[HostTransform] = None, process_index: int = 0,
                  process_count: int = 1,
                  samples_per_epoch: Optional[int] = None) -> grain.IterDataset:
  """Infinite training pipeline yielding host-local numpy batches (module doc).

  samples_per_epoch: None = every record once per epoch, reshuffled each
  epoch. An int n = balanced multi-category sampling: every epoch draws n
  records from each category (a fresh seeded permutation of the category's
  records per epoch, cycled when it has fewer than n), shuffled together, so
  small categories are not drowned by large ones (MALA: 200 per category).
  """
  if not records:
    raise ConfigError("train_dataset got no records; the training split is empty")
  local = _local_batch(global_batch_size, process_count)
  if samples_per_epoch:
    ds = grain.MapDataset.range(0, 2 ** 40).seed(int(seed)).map(
        _BalancedSampler(tuple(records), int(samples_per_epoch), int(seed)))
  else:
    ds = grain.MapDataset.source(list(records)).seed(int(seed))
    ds = ds.shuffle().repeat(None, reseed_each_epoch=True)
  ds = ds[process_index::process_count]
  ds = ds.map(_decoder(input_cfg))
  if host_transform is not None:
    ds = ds.random_map(host_transform)
  ds = ds.batch(local, drop_remainder=True)
  ds = ds.to_iter_dataset(_read_options(input_cfg))
  return _maybe_mp(ds, input_cfg)


class _BalancedSampler:
  """Global sample index -> record, with n records per category per epoch.

  Epoch e's order is a pure function of (seed, e), so the stream is
  deterministic, resumable from any index and identical in every worker.
  """

  def __init__(self, records: tuple, per_category: int, seed: int):
    self.records = records
    cats = sorted({r.category_id for r in records})
    self.by_cat = [np.array([i for i, r in enumerate(records) if r.category_id == c])
                   for c in cats]
    self.per_category = per_category
    self.seed = seed
    self.epoch_len = per_category * len(cats)
    self._epoch, self._order = -1, None

  def _epoch_order(self, epoch: int) -> np.ndarray:
    rng = np.random.default_rng([self.seed, epoch])
    parts = []
    for idx in self.by_cat:
      reps = -(-self.per_category // len(idx))
      perm = np.concatenate([rng.permutation(idx) for _ in range(reps)])
      parts.append(perm[:self.per_category])
    order = np.concatenate(parts)
    return order[rng.permutation(len(order))]

  def __call__(self, i: int):
    epoch, j = divmod(int(i), self.epoch_len)
    if epoch != self._epoch:
      self._epoch, self._order = epoch, self._epoch_order(epoch)
    return self.records[int(self._order[j])]


@dataclasses.dataclass(frozen=True)
class _EvalExample:
  decode: DecodeExample
  records: tuple

  def __call__(self, index: int) -> dict:
    if index < 0:
      n = self.decode.image_size
      ex = {"image": np.zeros((n, n, 3), np.float32), "mask": np.zeros((n, n), np.float32),
            "label": np.int32(0), "category_id": np.int32(0)}
      if self.decode.source_size:
        s = self.decode.source_size
        ex["image_source"] = np.zeros((s, s, 3), np.float32)
      ex["valid"] = np.bool_(False)
      ex["index"] = np.int32(-1)
      return ex
    ex = self.decode(self.records[index])
    ex["valid"] = np.bool_(True)
    ex["index"] = np.int32(index)
    return ex


def eval_indices(num_records: int, global_batch_size: int, process_index: int = 0,
                 process_count: int = 1) -> np.ndarray:
  """[num_batches, local_batch] record indices of this host, -1 = padding."""
  local = _local_batch(global_batch_size, process_count)
  num_batches = max(1, -(-num_records // global_batch_size))
  idx = np.full(num_batches * global_batch_size, -1, np.int64)
  idx[:num_records] = np.arange(num_records)
  idx = idx.reshape(num_batches, process_count, local)[:, process_index]
  return idx


def eval_batches(input_cfg, records: Sequence[Record], *, global_batch_size: int,
                 process_index: int = 0, process_count: int = 1) -> Iterator[dict]:
  """Deterministic, finite, fixed-size host-local batches with "valid" and "index"."""
  idx = eval_indices(len(records), global_batch_size, process_index, process_count)
  local = idx.shape[1]
  ds = grain.MapDataset.source(idx.reshape(-1).tolist())
  ds = ds.map(_EvalExample(_decoder(input_cfg), tuple(records))).batch(local)
  return iter(_maybe_mp(ds.to_iter_dataset(_read_options(input_cfg)), input_cfg))


def to_global(batch: dict, mesh, data_axes: Sequence[str] = ("data",)) -> dict[str, Any]:
  """Host-local numpy batch -> global `jax.Array`s sharded on their leading axis."""
  import jax
  from jax.sharding import NamedSharding, PartitionSpec as P
  sharding = NamedSharding(mesh, P(tuple(data_axes)))
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}
