r"""Compile + run time of each demo's jitted stage init, and exact parameter identity.

Each demo's method is built with its stages resolved as the loop does
(`_common.build_stages`: the demo categories the config selects, `NUM_TRAIN`
training images each), and each stage's `init` is jitted the way
`maskjax.train.CompiledStage.init_from_seed` does it (key made inside the
function, previous stage's state as argument, the CompiledStage's state
shardings as output shardings) and timed: trace+lower, XLA compile, run. `--dump FILE.npz` saves every initial
state leaf; `--compare FILE.npz` checks the current code gives bit-identical
leaves (used to verify that a faster init changes no value).

  python benchmarks/init_time.py [--methods riad,ssm,ear,mala,aca] [--variant demo]
      [--dump /tmp/before.npz | --compare /tmp/before.npz] [--out ...json]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import _common as C  # noqa: E402
from maskjax import mesh as mesh_lib  # noqa: E402
from maskjax import train  # noqa: E402

NUM_TRAIN = 16   # training images per category the stages are resolved with


def _flat(tree, prefix):
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
    out[prefix + jax.tree_util.keystr(path)] = np.asarray(leaf)
  return out


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--methods", default="riad,ssm,ear,mala,aca")
  p.add_argument("--variant", default="demo")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--dump", default="")
  p.add_argument("--compare", default="")
  p.add_argument("--label", default="")
  p.add_argument("--out", default="")
  a = p.parse_args()
  mach = C.machine()
  rows, leaves = [], {}
  for name in [m for m in a.methods.split(",") if m]:
    cfg = C.load_config(name, a.variant)
    _, stages = C.build_stages(cfg, C.demo_categories(cfg), NUM_TRAIN)
    mesh = mesh_lib.make_mesh(cfg.mesh)
    previous = None
    for index, stage in enumerate(stages):
      abstract_prev = jax.eval_shape(lambda x: x, previous) if previous is not None else None
      cs = train.CompiledStage(stage, mesh, cfg.mesh, abstract_prev)
      fn = jax.jit(lambda prev, stage=stage, index=index:
                   stage.init(train.init_key(a.seed, index), prev),
                   out_shardings=cs.state_shardings)
      t0 = time.perf_counter()
      lowered = fn.lower(previous)
      t1 = time.perf_counter()
      compiled = lowered.compile()
      t2 = time.perf_counter()
      state = jax.block_until_ready(compiled(previous))
      t3 = time.perf_counter()
      n_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(state)
                     if hasattr(x, "shape"))
      row = dict(method=name, stage=stage.name, lower_s=t1 - t0, compile_s=t2 - t1,
                 run_s=t3 - t2, total_s=t3 - t0, state_elements=n_params)
      rows.append(row)
      print(f"  {name}/{stage.name}: lower {row['lower_s']:.2f}s compile {row['compile_s']:.2f}s "
            f"run {row['run_s']:.2f}s", flush=True)
      leaves.update(_flat(state, f"{name}/{stage.name}"))
      previous = state
  identical = None
  if a.dump:
    np.savez(a.dump, **leaves)
    print(f"dumped {len(leaves)} leaves to {a.dump}")
  if a.compare:
    ref = np.load(a.compare)
    diff = [k for k in ref.files if k not in leaves or ref[k].dtype != leaves[k].dtype
            or not np.array_equal(ref[k], leaves[k])]
    missing = [k for k in leaves if k not in ref.files]
    identical = not diff and not missing
    print(f"compare with {a.compare}: {len(ref.files)} leaves, "
          f"{'bit-identical' if identical else f'{len(diff)} differ, {len(missing)} new'}")
    if not identical:
      print("  differing:", (diff + missing)[:10])
  C.print_table(rows, ["method", "stage", "lower_s", "compile_s", "run_s", "total_s"])
  mach = C.machine_end(mach)
  label = a.label or "current"
  C.write_json(a.out or C.result_path(f"init_time_{label}"),
               dict(benchmark="init_time", label=label, variant=a.variant, rows=rows,
                    bit_identical_to=(a.compare if identical is not None else None),
                    bit_identical=identical, machine=mach))
  if identical is False:
    sys.exit(1)


if __name__ == "__main__":
  main()
