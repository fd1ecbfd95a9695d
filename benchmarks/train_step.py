"""Train-step throughput of every implemented method, through the generic loop's jit.

For each method in `maskjax.methods.KNOWN_METHODS` whose module exists, the
`demo` variant of `configs/<method>.py` is built with its stages resolved as the
loop resolves them (`_common.build_stages`, on the demo data's categories and
its mean number of training images per category), and each stage is compiled
exactly as `maskjax.train` compiles it (`_common.TrainStep` over
`maskjax.train.CompiledStage`: explicit shardings over all devices, donated
state). One batch is drawn from the real data
pipeline (embedded demo data, with the stage's host transform) and the step is
timed on it `--steps` times after `--warmup` steps, so host data loading is
not counted. Reported: compile time, steps/s, images/s; on GPU/TPU also the
achieved TFLOP/s (model FLOPs from XLA's cost analysis of the compiled step)
and the device's peak memory. Exits with status 1 when a method fails (the
others are still measured and written).

  python benchmarks/train_step.py [--methods riad,ssm] [--steps 5] [--warmup 1]
      [--variant demo] [--out benchmarks/results/train_step_cpu.json]

Overrides for quick runs: --image_size, --batch_size (0 = the config's).
--model_from full: the demo's data with the `full` variant's model, method
cell sizes, image size and batch (the papers' 256 px U-Nets on the embedded
demo images, e.g. for the GPU suite, where no dataset is available).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from maskjax import train  # noqa: E402
from maskjax.data_access import DataAPI  # noqa: E402
from maskjax.methods import KNOWN_METHODS  # noqa: E402


def _implemented() -> list[str]:
  out = []
  for name, module in KNOWN_METHODS.items():
    if importlib.util.find_spec(module) is not None and os.path.exists(
        os.path.join(C.ROOT, "configs", f"{name}.py")):
      out.append(name)
  return out


def bench_method(name: str, args) -> list[dict]:
  cfg = C.load_config(name, args.variant)
  if args.model_from:
    big = C.load_config(name, args.model_from)
    cfg.model = big.model
    cfg.input.image_size = big.input.image_size
    cfg.input.batch_size = big.input.batch_size
    if "ks" in big.method:
      cfg.method.ks = big.method.ks
  if args.image_size:
    cfg.input.image_size = args.image_size
  if args.batch_size:
    cfg.input.batch_size = args.batch_size
  cfg.train.progress_bar = False
  data = DataAPI()
  splits = data.load_splits(cfg.input, int(cfg.seed))
  counts = splits.counts()
  num_train = max(1, round(float(np.mean([counts[c]["train"] for c in splits.categories]))))
  _, stages = C.build_stages(cfg, splits.categories, num_train)
  rows = []
  previous = None
  for index, stage in enumerate(stages):
    ts = C.TrainStep(stage, cfg, index, previous)
    it = data.train_iterator(cfg.input, getattr(splits, stage.train_split),
                             global_batch_size=stage.batch_size,
                             seed=train.data_seed(int(cfg.seed), index),
                             host_transform=stage.host_transform,
                             samples_per_epoch=stage.samples_per_epoch)
    ts.put(next(it))
    ts.compile()
    ts.run(args.warmup)
    t = ts.time(0, args.steps)
    mean = t["mean_s"]
    row = {"method": name, "stage": stage.name, "variant": args.variant,
           "image_size": int(cfg.input.image_size), "batch": int(stage.batch_size),
           "compute_dtype": str(cfg.train.get("compute_dtype", "float32")),
           "compile_s": ts.compile_s, "steps_timed": args.steps, "best_step_s": t["best_s"],
           "mean_step_s": mean, "steps_per_s": 1.0 / mean,
           "images_per_s": stage.batch_size / mean, "loss_after": ts.loss(),
           "model_flops_per_step": ts.flops}
    if jax.default_backend() != "cpu":
      row["achieved_tflops"] = ts.flops / mean / 1e12 if ts.flops else None
      row["peak_memory_bytes"] = C.peak_memory()
    rows.append(row)
    print(f"  {name}/{stage.name}: compile {ts.compile_s:.1f}s, {row['steps_per_s']:.3f} "
          f"steps/s, {row['images_per_s']:.2f} img/s", flush=True)
    previous = ts.state
  return rows


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--methods", default="", help="comma-separated; default: all implemented")
  p.add_argument("--variant", default="demo")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--image_size", type=int, default=0)
  p.add_argument("--batch_size", type=int, default=0)
  p.add_argument("--model_from", default="", help="variant whose model/size/batch to use")
  p.add_argument("--out", default="")
  a = p.parse_args()
  mach = C.machine()
  backend = jax.default_backend()
  names = [n for n in a.methods.split(",") if n] or _implemented()
  rows, failures = [], {}
  for name in names:
    print(f"{name}:", flush=True)
    try:
      rows.extend(bench_method(name, a))
    except Exception as e:  # noqa: BLE001 - one broken method does not hide the others
      failures[name] = f"{type(e).__name__}: {e}"[:500]
      print(f"  FAILED {failures[name]}", flush=True)

  for r in rows:
    r["method/stage"] = f"{r['method']}/{r['stage']}"
    r["gflop_per_step"] = (r["model_flops_per_step"] or 0) / 1e9
    if backend != "cpu":
      r["peak_gib"] = (r.get("peak_memory_bytes") or 0) / 2 ** 30
  cols = ["method/stage", "image_size", "batch", "compile_s", "steps_per_s", "images_per_s",
          "gflop_per_step"] + (["achieved_tflops", "peak_gib"] if backend != "cpu" else [])
  C.print_table(rows, cols)
  for r in rows:
    for k in ("method/stage", "gflop_per_step", "peak_gib"):
      r.pop(k, None)
  for n, e in failures.items():
    print(f"{n}: FAILED ({e})")
  C.write_json(a.out or C.result_path("train_step"),
               {"benchmark": "train_step", "rows": rows, "failures": failures, "args": vars(a),
                "machine": C.machine_end(mach)})
  if failures:
    sys.exit(1)


if __name__ == "__main__":
  main()
