"""Train-step throughput of every implemented method, through the generic loop's jit.

For each method in `maskjax.methods.KNOWN_METHODS` whose module exists, the
`demo` variant of `configs/<method>.py` is built and each of its stages is
compiled exactly as `maskjax.train` does (`CompiledStage`: explicit shardings
over all devices, donated state). One batch is drawn from the real data
pipeline (embedded demo data, with the stage's host transform) and the step is
timed on it `--steps` times after `--warmup` steps, so host data loading is
not counted. Reported: compile time, steps/s, images/s; on GPU/TPU also the
achieved TFLOP/s (model FLOPs from XLA's cost analysis of the compiled step)
and the device's peak memory.

  python benchmarks/train_step.py [--methods riad,ssm] [--steps 5] [--warmup 1]
      [--variant demo] [--out benchmarks/results/train_step_cpu.json]

Overrides for quick runs: --image_size, --batch_size (0 = the config's).
--model_from full: the demo's data with the `full` variant's model, method
cell sizes, image size and batch (the papers' 256 px U-Nets on the embedded
demo images, e.g. for the GPU suite, where no dataset is available).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from maskjax import mesh as mesh_lib  # noqa: E402
from maskjax import train  # noqa: E402
from maskjax.methods import KNOWN_METHODS, build_method  # noqa: E402
from _common import compiled_flops, peak_memory  # noqa: E402


def _load_config(name: str, variant: str):
  path = os.path.join(ROOT, "configs", f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"configs_{name}", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(variant)


def _implemented() -> list[str]:
  out = []
  for name, module in KNOWN_METHODS.items():
    if importlib.util.find_spec(module) is not None and os.path.exists(
        os.path.join(ROOT, "configs", f"{name}.py")):
      out.append(name)
  return out


def bench_method(name: str, args, workroot: str) -> list[dict]:
  cfg = _load_config(name, args.variant)
  if args.model_from:
    big = _load_config(name, args.model_from)
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
  method = build_method(cfg)
  mesh = mesh_lib.make_mesh(cfg.mesh)
  data = train.DataAPI()
  splits = data.load_splits(cfg.input, int(cfg.seed))
  rows = []
  previous, abstract_prev = None, None
  for index, stage in enumerate(method.stages()):
    cs = train.CompiledStage(stage, mesh, cfg.mesh, abstract_prev)
    state = cs.init_from_seed(int(cfg.seed), index, previous)
    it = data.train_iterator(cfg.input, getattr(splits, stage.train_split),
                             global_batch_size=stage.batch_size,
                             seed=train.data_seed(int(cfg.seed), index),
                             host_transform=stage.host_transform,
                             samples_per_epoch=stage.samples_per_epoch)
    batch = data.to_global(next(it), mesh)
    key = cs.stage_key(int(cfg.seed), index)
    step = cs.step_counter(0)
    t0 = time.perf_counter()
    compiled = cs.step.lower(state, batch, key, step).compile()
    compile_s = time.perf_counter() - t0
    flops = compiled_flops(compiled)
    for _ in range(args.warmup):
      state, metrics, step = compiled(state, batch, key, step)
    jax.block_until_ready((state, metrics))
    times = []
    for _ in range(args.steps):
      t0 = time.perf_counter()
      state, metrics, step = compiled(state, batch, key, step)
      jax.block_until_ready((state, metrics))
      times.append(time.perf_counter() - t0)
    best = min(times)
    mean = float(np.mean(times))
    loss = float(jax.device_get(metrics["loss"]))
    row = {"method": name, "stage": stage.name, "variant": args.variant,
           "image_size": int(cfg.input.image_size), "batch": int(stage.batch_size),
           "compute_dtype": str(cfg.train.get("compute_dtype", "float32")),
           "compile_s": compile_s, "steps_timed": args.steps, "best_step_s": best,
           "mean_step_s": mean, "steps_per_s": 1.0 / mean,
           "images_per_s": stage.batch_size / mean, "loss_after": loss,
           "model_flops_per_step": flops}
    if jax.default_backend() != "cpu":
      row["achieved_tflops"] = flops / mean / 1e12 if flops else None
      row["peak_memory_bytes"] = peak_memory()
    rows.append(row)
    print(f"  {name}/{stage.name}: compile {compile_s:.1f}s, {row['steps_per_s']:.3f} steps/s, "
          f"{row['images_per_s']:.2f} img/s", flush=True)
    previous, abstract_prev = state, jax.eval_shape(lambda x: x, state)
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
  backend = jax.default_backend()
  out_path = a.out or os.path.join(ROOT, "benchmarks", "results", f"train_step_{backend}.json")
  names = [n for n in a.methods.split(",") if n] or _implemented()
  rows, failures = [], {}
  with tempfile.TemporaryDirectory() as work:
    for name in names:
      print(f"{name}:", flush=True)
      try:
        rows.extend(bench_method(name, a, work))
      except Exception as e:  # noqa: BLE001 - one broken method does not hide the others
        failures[name] = f"{type(e).__name__}: {e}"[:500]
        print(f"  FAILED {failures[name]}", flush=True)

  hdr = (f"{'method/stage':<22}{'size':>5}{'batch':>6}{'compile s':>10}{'steps/s':>9}"
         f"{'img/s':>9}{'GFLOP/step':>11}")
  if backend != "cpu":
    hdr += f"{'TFLOP/s':>9}{'peak GiB':>9}"
  print("\n" + hdr)
  for r in rows:
    line = (f"{r['method'] + '/' + r['stage']:<22}{r['image_size']:>5}{r['batch']:>6}"
            f"{r['compile_s']:>10.1f}{r['steps_per_s']:>9.3f}{r['images_per_s']:>9.2f}"
            f"{(r['model_flops_per_step'] or 0) / 1e9:>11.2f}")
    if backend != "cpu":
      tf = r.get("achieved_tflops")
      pm = r.get("peak_memory_bytes")
      line += f"{tf if tf is not None else float('nan'):>9.2f}"
      line += f"{(pm or 0) / 2 ** 30:>9.2f}"
    print(line)
  for n, e in failures.items():
    print(f"{n}: FAILED ({e})")

  d = jax.devices()[0]
  result = {
      "benchmark": "train_step", "rows": rows, "failures": failures,
      "args": vars(a),
      "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                  "python": platform.python_version(), "jax": jax.__version__,
                  "jax_backend": backend, "device": f"{d.platform}:{getattr(d, 'device_kind', '')}",
                  "num_devices": jax.device_count(),
                  "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
  }
  os.makedirs(os.path.dirname(out_path), exist_ok=True)
  with open(out_path, "w") as f:
    json.dump(result, f, indent=1)
  print(f"\nwrote {out_path}")


if __name__ == "__main__":
  main()
