from __future__ import annotations

import collections
import itertools

import jax
import numpy as np
import pytest

from maskjax.data import images, pipeline, sources

from conftest import cfg


@pytest.fixture(scope="module")
def splits(small_mvtec):
  return sources.load_splits(cfg(data_dir=small_mvtec, val_fraction=0.0), 0)


def _take(ds_or_it, n):
  it = iter(ds_or_it)
  return [next(it) for _ in range(n)]


def _fingerprints(records, size=32):
  """Independent decode of every record -> {rounded image sum: index}."""
  return {round(float(images.load_image(r.path, size).sum()), 3): i for i, r in enumerate(records)}


def test_batches_shapes_and_epoch_coverage(splits):
  recs = splits.train  # 16 records
  ds = pipeline.train_dataset(cfg(), recs, global_batch_size=len(recs), seed=0)
  fp = _fingerprints(recs)
  orders = []
  for b in _take(ds, 2):
    assert b["image"].shape == (16, 32, 32, 3) and b["image"].dtype == np.float32
    assert b["mask"].shape == (16, 32, 32) and b["label"].dtype == np.int32
    assert 0.0 <= b["image"].min() and b["image"].max() <= 1.0
    order = [fp[round(float(x.sum()), 3)] for x in b["image"]]
    assert sorted(order) == list(range(16))  # each epoch holds every record once
    np.testing.assert_array_equal(b["category_id"], [recs[i].category_id for i in order])
    orders.append(order)
  assert orders[0] != orders[1]  # reshuffled per epoch


def test_masks_resized_nearest_binary(splits):
  recs = [r for r in splits.test if r.label]
  b = next(iter(pipeline.train_dataset(cfg(image_size=16), recs, global_batch_size=4, seed=0)))
  assert set(np.unique(b["mask"])) <= {0.0, 1.0} and b["mask"].sum() > 0


def test_determinism_seed_and_transform(splits):
  def transform(ex, rng):
    ex = dict(ex)
    ex["noise"] = np.float32(rng.uniform())
    return ex
  mk = lambda seed: pipeline.train_dataset(cfg(), splits.train, global_batch_size=4, seed=seed,
                                           host_transform=transform)
  a, b, c = _take(mk(0), 3), _take(mk(0), 3), _take(mk(1), 3)
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert not np.array_equal(a[0]["noise"], c[0]["noise"])
  assert len(set(np.concatenate([x["noise"] for x in a]).tolist())) == 12


def test_iterator_state_restore(splits):
  ds = pipeline.train_dataset(cfg(), splits.train, global_batch_size=6, seed=0)
  it = iter(ds)
  _take(it, 3)
  state = it.get_state()
  expected = _take(it, 4)  # crosses an epoch boundary (16 records)
  it2 = iter(pipeline.train_dataset(cfg(), splits.train, global_batch_size=6, seed=0))
  it2.set_state(state)
  for x, y in zip(expected, _take(it2, 4)):
    np.testing.assert_array_equal(x["image"], y["image"])


def test_hosts_split_the_global_batch(splits):
  one = _take(pipeline.train_dataset(cfg(), splits.train, global_batch_size=8, seed=0), 3)
  hosts = [_take(pipeline.train_dataset(cfg(), splits.train, global_batch_size=8, seed=0,
                                        process_index=p, process_count=2), 3) for p in range(2)]
  for t in range(3):
    assert hosts[0][t]["image"].shape[0] == 4
    glob = sorted(float(x.sum()) for x in one[t]["image"])
    both = sorted(float(x.sum()) for h in hosts for x in h[t]["image"])
    np.testing.assert_allclose(glob, both)


def test_multiprocessing_workers_match_in_process(splits):
  a = _take(pipeline.train_dataset(cfg(), splits.train, global_batch_size=4, seed=0), 2)
  b = _take(pipeline.train_dataset(cfg(num_workers=1), splits.train, global_batch_size=4,
                                   seed=0), 2)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])


def test_eval_padding_and_hosts(splits):
  recs = splits.test[:10]
  bs = list(pipeline.eval_batches(cfg(), recs, global_batch_size=4))
  assert len(bs) == 3 and all(b["image"].shape == (4, 32, 32, 3) for b in bs)
  np.testing.assert_array_equal(np.concatenate([b["index"] for b in bs]),
                                list(range(10)) + [-1, -1])
  np.testing.assert_array_equal(bs[-1]["valid"], [True, True, False, False])
  assert bs[-1]["image"][2:].max() == 0.0
  np.testing.assert_allclose(bs[1]["image"][1], images.load_image(recs[5].path, 32))
  np.testing.assert_array_equal(bs[0]["label"], [r.label for r in recs[:4]])
  h1 = list(pipeline.eval_batches(cfg(), recs, global_batch_size=4, process_index=1,
                                  process_count=2))
  np.testing.assert_array_equal([b["index"].tolist() for b in h1], [[2, 3], [6, 7], [-1, -1]])


def test_to_global_single_device(splits):
  b = next(pipeline.eval_batches(cfg(), splits.test, global_batch_size=4))
  mesh = jax.make_mesh((1,), ("data",))
  g = pipeline.to_global(b, mesh)
  assert set(g) == set(b)
  for k in b:
    assert isinstance(g[k], jax.Array) and g[k].shape == b[k].shape
    np.testing.assert_array_equal(np.asarray(g[k]), b[k])
  assert g["image"].sharding.spec == jax.sharding.PartitionSpec(("data",))


def test_balanced_sampling_draws_n_per_category_per_epoch():
  from maskjax.data.pipeline import _BalancedSampler
  from maskjax.data.records import Record
  recs = tuple(Record(f"c{c}_{i}.png", None, 0, f"c{c}", c, "good", "train")
               for c, n in enumerate([3, 10, 40]) for i in range(n))
  s = _BalancedSampler(recs, 8, seed=5)
  assert s.epoch_len == 24
  for epoch in range(3):
    got = [s(epoch * 24 + j) for j in range(24)]
    counts = collections.Counter(r.category_id for r in got)
    assert counts == {0: 8, 1: 8, 2: 8}
    # categories with >= 8 images give 8 distinct images in an epoch
    assert len({r.path for r in got if r.category_id == 2}) == 8
    assert len({r.path for r in got if r.category_id == 0}) == 3
  # a pure function of (seed, index): a fresh sampler agrees, in any access order
  t = _BalancedSampler(recs, 8, seed=5)
  assert [t(i).path for i in range(50, 20, -1)] == [s(i).path for i in range(50, 20, -1)]
  assert [_BalancedSampler(recs, 8, seed=6)(i).path for i in range(24)] != \
      [s(i).path for i in range(24)]
