"""A tiny method and an in-memory dataset for tests of the training loop.

The "toy" method is a one-hidden-layer auto-encoder on flattened 8x8x3 images
(pure jax.numpy, no NNX), with the loss split into two named terms so NaN
reporting can be checked, input noise drawn from the step rng (so rng handling
is exercised), optional gradient accumulation, and an optional second stage
("fine") that starts from the first stage's parameters with `w1` frozen.

`config.method.nan_at_step = k` makes the term "loss/reg" NaN at loop step k
(1-based: the k-th optimisation step).

`ToyData` implements the loop's data contract (`maskjax.data_access.DataAPI`):
images are generated from their index (uniform [0, 1]; anomalous test images
carry a bright 3x3 square and its mask), batched with grain so the iterator
state is checkpointable, and each process takes its rows of every global batch.
"""
from __future__ import annotations

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from maskjax import config_base
from maskjax.data.records import Record, Splits
from maskjax.methods import Duration, Method, Stage, register

HIDDEN = 32


@register
class Toy(Method):
  name = "toy"

  def _dims(self):
    s = int(self.config.input.image_size)
    return s, s * s * 3

  def _forward(self, params, x):
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    return h, h @ params["w2"]

  def _make_stage(self, name: str, frozen_w1: bool) -> Stage:
    cfg = self.config
    size, d = self._dims()
    mask = {"w1": not frozen_w1, "b1": True, "w2": True} if frozen_w1 else None
    nan_at = int(cfg.method.nan_at_step)
    width = int(cfg.method.hidden)

    def init_model(rng, previous):
      if previous is not None:
        params = previous["params"]
      else:
        k1, k2 = jax.random.split(rng)
        params = {"w1": jax.random.normal(k1, (d, width)) / np.sqrt(d),
                  "b1": jnp.zeros((width,)),
                  "w2": jax.random.normal(k2, (width, d)) / np.sqrt(width)}
      return params, {}, {}

    def loss_fn(params, state, mb, r, step):
      x = mb["image"].reshape(mb["image"].shape[0], -1)
      noisy = x + 0.01 * jax.random.normal(r, x.shape)
      h, out = self._forward(params, noisy)
      recon = jnp.mean((out - x) ** 2)
      reg = 0.01 * jnp.mean(h ** 2)
      reg = jnp.where(step + 1 == nan_at, jnp.nan, reg)
      return recon + reg, {"loss/recon": recon, "loss/reg": reg}

    return Stage(name=name, duration=Duration(epochs=int(cfg.train.epochs)),
                 batch_size=int(cfg.input.batch_size), optim=cfg.optim, init_model=init_model,
                 loss_fn=loss_fn, trainable=mask)

  def stages(self):
    two = bool(self.config.method.two_stages)
    out = [self._make_stage("pre" if two else "train", False)]
    if two:
      out.append(self._make_stage("fine", True))
    return out

  calibrates = True

  def calibration_stats(self, state, batch):
    return self.score(state, batch, {})["image_score"]

  def calibrate(self, stats, category_ids):
    return {"num_val": int(len(stats))}

  def score(self, state, batch, calibration):
    size, _ = self._dims()
    x = batch["image"].reshape(batch["image"].shape[0], -1)
    _, out = self._forward(state["params"], x)
    err = ((out - x) ** 2).reshape(-1, size, size, 3).mean(-1)
    return {"anomaly_map": err, "image_score": err.reshape(err.shape[0], -1).max(-1)}

  def describe(self):
    return {"init": "random (no checkpoint)"}


def toy_config(**overrides) -> ml_collections.ConfigDict:
  c = config_base.base_config()
  c.method.name = "toy"
  c.method.nan_at_step = -1
  c.method.two_stages = False
  c.method.hidden = HIDDEN
  c.input.image_size = 8
  c.input.batch_size = 8
  c.input.eval_batch_size = 8
  c.input.categories = ("a", "b")
  c.optim.lr = 1e-2
  c.train.steps = 12
  c.train.log_every = 2
  c.train.checkpoint_every = 4
  c.train.keep_checkpoints = 3
  c.train.progress_bar = False
  c.mesh.fsdp_min_size = 64
  for k, v in overrides.items():
    node = c
    parts = k.split(".")
    for p in parts[:-1]:
      node = node[p]
    node[parts[-1]] = v
  return c


# ----------------------------------------------------------------------------
# in-memory data with the maskjax.data contract
# ----------------------------------------------------------------------------
def _image(index: int, size: int, anomalous: bool):
  rng = np.random.default_rng(1000 + index)
  img = rng.uniform(0.0, 0.5, size=(size, size, 3)).astype(np.float32)
  mask = np.zeros((size, size), np.float32)
  if anomalous:
    mask[2:5, 2:5] = 1.0
    img[2:5, 2:5] = 1.0
  return img, mask


class ToyData:
  """Deterministic in-memory data; same interface as `maskjax.data_access.DataAPI`."""

  def __init__(self, num_train: int = 48, num_val: int = 8, num_test: int = 16):
    self.sizes = (num_train, num_val, num_test)

  def load_splits(self, input_cfg, seed):
    cats = list(input_cfg.categories)
    n_train, n_val, n_test = self.sizes
    def rec(i, split, label):
      c = i % len(cats)
      return Record(path=f"toy://{split}/{i}", mask_path=None if not label else f"toy://m/{i}",
                    label=label, category=cats[c], category_id=c,
                    defect="bright" if label else "good", split=split)
    train = [rec(i, "train", 0) for i in range(n_train)]
    val = [rec(n_train + i, "val", 0) for i in range(n_val)]
    test = [rec(n_train + n_val + i, "test", (i // 2) % 2) for i in range(n_test)]
    return Splits(categories=cats, train=train, val=val, test=test)

  @staticmethod
  def _example(rec: Record, size: int) -> dict:
    idx = int(rec.path.rsplit("/", 1)[1])
    img, mask = _image(idx, size, bool(rec.label))
    return {"image": img, "mask": mask, "label": np.int32(rec.label),
            "category_id": np.int32(rec.category_id)}

  def train_iterator(self, input_cfg, records, *, global_batch_size, seed, host_transform=None,
                     process_index=0, process_count=1, samples_per_epoch=None):
    size = int(input_cfg.image_size)
    per_host = global_batch_size // process_count
    lo = process_index * per_host
    ds = (grain.MapDataset.source(list(records)).shuffle(seed=seed).repeat(None)
          .map(lambda r: self._example(r, size)).batch(global_batch_size, drop_remainder=True)
          .map(lambda b: {k: v[lo:lo + per_host] for k, v in b.items()}))
    return iter(ds.to_iter_dataset())

  def eval_batches(self, input_cfg, records, *, global_batch_size, process_index=0,
                   process_count=1):
    size = int(input_cfg.image_size)
    per_host = global_batch_size // process_count
    lo = process_index * per_host
    for start in range(0, len(records), global_batch_size):
      idx = list(range(start, min(start + global_batch_size, len(records))))
      exs = [self._example(records[i], size) for i in idx]
      while len(exs) < global_batch_size:
        exs.append(exs[-1])
      b = {k: np.stack([e[k] for e in exs]) for k in exs[0]}
      n = len(idx)
      b["valid"] = np.arange(global_batch_size) < n
      b["index"] = np.arange(start, start + global_batch_size, dtype=np.int32)
      yield {k: v[lo:lo + per_host] for k, v in b.items()}

  def to_global(self, batch, mesh):
    from maskjax import mesh as mesh_lib
    return mesh_lib.host_to_global(batch, mesh)


# ----------------------------------------------------------------------------
# worker for subprocess tests: python tests/helpers_toy_method.py --workdir W ...
# ----------------------------------------------------------------------------
class _SlowData(ToyData):
  """ToyData whose training examples take `delay` seconds each (host side)."""

  def __init__(self, delay: float, **kw):
    super().__init__(**kw)
    self.delay = delay

  def _example(self, rec, size):
    import time
    time.sleep(self.delay)
    return ToyData._example(rec, size)


def _flat_params(state) -> dict:
  leaves = jax.tree_util.tree_leaves_with_path(state)
  return {jax.tree_util.keystr(p): np.asarray(jax.device_get(v)) for p, v in leaves
          if not jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key)}


def worker_main(argv=None) -> None:
  import argparse
  import json
  import os
  p = argparse.ArgumentParser()
  p.add_argument("--workdir", required=True)
  p.add_argument("--out", required=True, help="npz of the final state (per process)")
  p.add_argument("--method", default="toy", choices=("toy", "riad"))
  p.add_argument("--steps", type=int, default=12)
  p.add_argument("--checkpoint_every", type=int, default=4)
  p.add_argument("--delay", type=float, default=0.0)
  p.add_argument("--batch_size", type=int, default=8)
  p.add_argument("--mode", default="train", choices=("train", "eval", "predict"))
  p.add_argument("--lr", type=float, default=None, help="toy: config.optim.lr")
  p.add_argument("--evaluate", action="store_true", help="train mode: evaluate afterwards")
  p.add_argument("--output_dir", default=None)
  p.add_argument("--predict_dir", default=None)
  p.add_argument("--allow_config_change", action="store_true")
  args = p.parse_args(argv)
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.INFO)

  from maskjax import mesh as mesh_lib
  mesh_lib.maybe_initialize_distributed()   # MASKJAX_* environment
  from maskjax import runner
  if args.method == "toy":
    cfg = toy_config(**{"train.steps": args.steps, "train.checkpoint_every":
                        args.checkpoint_every, "input.batch_size": args.batch_size,
                        "eval.plots": False})
    if args.lr is not None:
      cfg.optim.lr = args.lr
    data = _SlowData(args.delay) if args.delay else ToyData()
  else:
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "riad_config", os.path.join(os.path.dirname(__file__), "..", "configs", "riad.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = mod.get_config("demo")
    cfg.input.image_size = 32
    cfg.input.batch_size = args.batch_size
    cfg.input.eval_batch_size = args.batch_size
    cfg.input.categories = (cfg.input.categories[0],) if cfg.input.categories[0] != "*" else (
        "*",)
    cfg.model.widths = (8, 8, 8, 8, 8)
    cfg.method.ks = (4, 8)
    cfg.train.protocol = "unified"   # one run directory (the demo trains one per category)
    cfg.train.steps = args.steps
    cfg.train.log_every = 1
    cfg.train.checkpoint_every = args.checkpoint_every
    cfg.train.progress_bar = False
    data = None
  import logging as logging_std

  from maskjax.errors import UserError
  from maskjax.main import _fail, _quiet_libraries  # the CLI's one-line error, its log filter
  logging_std.getLogger("absl").addFilter(_quiet_libraries)
  try:
    res = runner.run(cfg, args.workdir, mode=args.mode, data=data,
                    evaluate_after_train=args.evaluate, output_dir=args.output_dir,
                    predict_dir=args.predict_dir,
                    allow_config_change=args.allow_config_change)
  except UserError as e:
    _fail(str(e))
  if "state" not in res:
    return
  np.savez(args.out, **_flat_params(res["state"]))
  with open(args.out + ".json", "w") as f:
    json.dump({"process_index": jax.process_index(), "process_count": jax.process_count(),
               "devices": jax.device_count()}, f)


if __name__ == "__main__":
  import os
  import sys
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
  worker_main()
