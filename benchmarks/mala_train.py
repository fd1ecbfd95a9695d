"""MALA training throughput: stage-1 and stage-2 images/s.

    python benchmarks/mala_train.py                    # CPU: the demo model (tiny ViT, 64 px)
    python benchmarks/mala_train.py --model full --dtype bfloat16 --batch 32 --batch2 32
                                                       # accelerator: ViT-L/16 at 224, bf16

Times the jitted `train_step` of each stage (the loop's own functions, state
donated, synthetic data already on the device, so the data pipeline is not
measured) after `--warmup` untimed steps, over `--steps` steps. FLOPs per step
come from XLA's cost analysis of the compiled step; achieved TFLOP/s = FLOPs /
step time, and model FLOPs utilisation (MFU) = achieved / the device's peak
dense bf16 (or fp32) rate when the device is known (H100 / H200 / A100),
otherwise left empty. Prints a table and writes
benchmarks/results/mala_train_<cpu|gpu>.json with the machine description.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

# Peak dense tensor-core rates (TFLOP/s), vendor data sheets (SXM parts).
PEAK_TFLOPS = {
    "H100": {"bfloat16": 989.0, "float32": 67.0},
    "H200": {"bfloat16": 989.0, "float32": 67.0},
    "A100": {"bfloat16": 312.0, "float32": 19.5},
}


def peak_for(device_kind: str, dtype: str):
  for key, rates in PEAK_TFLOPS.items():
    if key in device_kind.upper():
      return rates[dtype]
  return None


def build_config(model: str, dtype: str, batch1: int, batch2: int):
  from configs import mala as cfg_mod
  if model == "tiny":
    c = cfg_mod.get_config("demo")
  else:
    c = cfg_mod.get_config("")
  c.train.compute_dtype = dtype
  c.method.stage1.batch_size = batch1
  c.method.stage2.batch_size = batch2
  c.train.steps = 1000
  return c


def flops_of(compiled) -> float | None:
  try:
    ca = compiled.cost_analysis()
    if isinstance(ca, (list, tuple)):
      ca = ca[0]
    f = float(ca.get("flops", 0.0))
    return f if f > 0 else None
  except Exception:  # noqa: BLE001 - not every backend reports costs
    return None


def time_stage(stage, prev_state, img: int, warmup: int, steps: int, seed: int = 0):
  b = stage.batch_size
  rng = np.random.default_rng(seed)
  batch = {"image": jnp.asarray(rng.random((b, img, img, 3), np.float32)),
           "mask": jnp.asarray((rng.random((b, img, img)) > 0.9).astype(np.float32)),
           "label": jnp.ones((b,), jnp.int32), "category_id": jnp.zeros((b,), jnp.int32)}
  state = jax.jit(stage.init)(jax.random.key(seed), prev_state)
  step = jax.jit(stage.train_step, donate_argnums=(0,))
  t0 = time.perf_counter()
  compiled = step.lower(state, batch, jax.random.key(1)).compile()
  compile_s = time.perf_counter() - t0
  flops = flops_of(compiled)
  for i in range(warmup):
    state, m = compiled(state, batch, jax.random.key(i))
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  for i in range(steps):
    state, m = compiled(state, batch, jax.random.key(100 + i))
  jax.block_until_ready((state, m))
  dt = (time.perf_counter() - t0) / steps
  loss = float(m["loss"])
  return state, {"batch": b, "step_s": dt, "images_per_s": b / dt, "compile_s": compile_s,
                 "flops_per_step": flops, "loss": loss}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", choices=("tiny", "full"), default="tiny")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--batch", type=int, default=32, help="stage-1 batch")
  p.add_argument("--batch2", type=int, default=32, help="stage-2 batch")
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--stages", default="", help="comma-separated stage names (default: all)")
  p.add_argument("--out", default="")
  args = p.parse_args()

  from maskjax.methods import build_method
  config = build_config(args.model, args.dtype, args.batch, args.batch2)
  method = build_method(config)
  stages = method.stages()
  dev = jax.devices()[0]
  peak = peak_for(dev.device_kind, args.dtype) if dev.platform == "gpu" else None
  rows = {}
  prev = None
  wanted = [x for x in args.stages.split(",") if x]
  for stage in stages:
    if wanted and stage.name not in wanted:
      break
    prev, r = time_stage(stage, prev, method.img, args.warmup, args.steps)
    if r["flops_per_step"]:
      r["tflops_per_s"] = r["flops_per_step"] / r["step_s"] / 1e12
      r["mfu"] = r["tflops_per_s"] / peak if peak else None
    rows[stage.name] = r

  print(f"MALA training throughput, model={args.model} ({config.model.encoder}, "
        f"{method.img} px), dtype={args.dtype}, device={dev.device_kind} x{jax.device_count()}")
  print(f"{'stage':8s} {'batch':>5s} {'step s':>9s} {'img/s':>9s} {'TFLOP/s':>9s} {'MFU':>7s}"
        f" {'compile s':>9s}")
  for name, r in rows.items():
    tf = f"{r['tflops_per_s']:.3f}" if r.get("tflops_per_s") else "-"
    mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
    print(f"{name:8s} {r['batch']:5d} {r['step_s']:9.4f} {r['images_per_s']:9.1f} {tf:>9s} "
          f"{mfu:>7s} {r['compile_s']:9.1f}")

  result = {
      "benchmark": "mala_train", "model": args.model, "encoder": config.model.encoder,
      "image_size": method.img, "dtype": args.dtype, "warmup": args.warmup, "steps": args.steps,
      "stages": rows, "peak_tflops": peak,
      "machine": {"platform": platform.platform(), "processor": platform.processor(),
                  "cpu_count": os.cpu_count(), "python": platform.python_version(),
                  "jax": jax.__version__, "backend": jax.default_backend(),
                  "device": dev.device_kind, "num_devices": jax.device_count()},
  }
  out = args.out or os.path.join(HERE, "results",
                                 f"mala_train_{'gpu' if dev.platform == 'gpu' else 'cpu'}.json")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w", encoding="utf-8") as f:
    json.dump(result, f, indent=2)
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
