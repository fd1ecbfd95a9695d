"""maskjax.checkpoint: state + grain iterator position + meta round trip."""
from __future__ import annotations

import os

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from maskjax import checkpoint as ckpt_lib
from maskjax import mesh as mesh_lib
from maskjax.errors import CheckpointError


def _iterator():
  return iter(grain.MapDataset.range(50).shuffle(seed=3).repeat(None).batch(4).to_iter_dataset())


def test_round_trip_state_data_and_meta_keep_last(tmp_path):
  mesh = mesh_lib.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1}))
  state = {"w": jnp.arange(12.0).reshape(3, 4), "n": jnp.int32(7), "key": jax.random.key(5)}
  c = ckpt_lib.StageCheckpointer(str(tmp_path / "ck"), max_to_keep=2, async_save=True)
  it = _iterator()
  expected_after = None
  for step in (1, 2, 3):
    next(it)
    c.save(step, jax.tree.map(lambda x: x, state), data_iterator=it,
           meta={"stage": "s", "final": step == 3})
    if step == 2:
      c.wait()
      expected_after = next(_iter_at(2))
  c.close()
  assert sorted(os.listdir(tmp_path / "ck")) == ["2", "3"]   # keep-last-2

  abstract = jax.eval_shape(lambda: state)
  target = mesh_lib.with_shardings(abstract, mesh_lib.state_shardings(abstract, mesh))
  c = ckpt_lib.StageCheckpointer(str(tmp_path / "ck"), async_save=False)
  assert c.latest_step() == 3
  it2 = _iterator()
  restored, meta = c.restore(2, target, data_iterator=it2)
  assert meta == {"stage": "s", "final": False, "step": 2}
  np.testing.assert_array_equal(np.asarray(restored["w"]), np.arange(12.0).reshape(3, 4))
  assert int(restored["n"]) == 7
  np.testing.assert_array_equal(jax.random.key_data(restored["key"]),
                                jax.random.key_data(jax.random.key(5)))
  np.testing.assert_array_equal(next(it2), expected_after)   # continues after 2 batches
  assert c.read_meta(3)["final"] is True
  # a missing step is a CheckpointError naming the checkpoint
  with pytest.raises(CheckpointError, match=str(tmp_path / "ck" / "7")):
    c.restore(7, target)
  c.close()


def _iter_at(n):
  it = _iterator()
  for _ in range(n):
    next(it)
  return it
