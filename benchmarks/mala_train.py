"""MALA training throughput: stage-1 and stage-2 images/s.

    python benchmarks/mala_train.py                    # CPU: the demo model (tiny ViT, 64 px)
    python benchmarks/mala_train.py --model full --dtype bfloat16 --batch 32 --batch2 32
                                                       # accelerator: ViT-L/16 at 224, bf16

Builds the method and its resolved stages as the loop does
(`_common.build_stages`, one stated category) and times each stage's train step
compiled as the loop compiles it (`_common.TrainStep`:
`maskjax.train.CompiledStage`, state donated; synthetic data already on the
device, so the data pipeline is not measured) after `--warmup` untimed steps,
over one block of `--steps` steps. FLOPs per step come from XLA's cost
analysis of the compiled step; achieved TFLOP/s = FLOPs / step time, and model
FLOPs utilisation (MFU) = achieved / the device's peak dense bf16 (or fp32)
rate when the device is known (`_common.PEAK_TFLOPS`), otherwise left empty. Prints a table and writes
benchmarks/results/mala_train_<cpu|gpu>.json with the machine description.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

# The data facts the stages are built on (durations are fixed by train.steps).
CATEGORIES = ("bottle",)
NUM_TRAIN = 200


def build_config(model: str, dtype: str, batch1: int, batch2: int):
  c = C.load_config("mala", "demo" if model == "tiny" else "")
  c.train.compute_dtype = dtype
  c.method.stage1.batch_size = batch1
  c.method.stage2.batch_size = batch2
  c.train.steps = 1000
  return c


def synthetic_batch(b: int, img: int, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  return {"image": rng.random((b, img, img, 3), np.float32),
          "mask": (rng.random((b, img, img)) > 0.9).astype(np.float32),
          "label": np.ones((b,), np.int32), "category_id": np.zeros((b,), np.int32)}


def time_stage(stage, config, index: int, previous, img: int, warmup: int, steps: int):
  ts = C.TrainStep(stage, config, index, previous)
  ts.put(synthetic_batch(stage.batch_size, img))
  ts.compile()
  ts.run(warmup)
  dt = ts.time_block(steps)
  b = stage.batch_size
  return ts.state, {"batch": b, "step_s": dt, "images_per_s": b / dt,
                    "compile_s": ts.compile_s, "flops_per_step": ts.flops, "loss": ts.loss()}


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

  mach = C.machine()
  config = build_config(args.model, args.dtype, args.batch, args.batch2)
  method, stages = C.build_stages(config, CATEGORIES, NUM_TRAIN)
  dev = jax.devices()[0]
  peak = C.peak_tflops(args.dtype) if dev.platform != "cpu" else None
  rows = {}
  prev = None
  wanted = [x for x in args.stages.split(",") if x]
  for index, stage in enumerate(stages):
    if wanted and stage.name not in wanted:
      break
    prev, r = time_stage(stage, config, index, prev, method.img, args.warmup, args.steps)
    if r["flops_per_step"]:
      r["tflops_per_s"] = r["flops_per_step"] / r["step_s"] / 1e12
      r["mfu"] = r["tflops_per_s"] / peak if peak else None
    rows[stage.name] = r

  print(f"MALA training throughput, model={args.model} ({config.model.encoder}, "
        f"{method.img} px), dtype={args.dtype}, device={dev.device_kind} x{jax.device_count()}")
  C.print_table([dict(stage=n, **r) for n, r in rows.items()],
                ["stage", "batch", "step_s", "images_per_s", "tflops_per_s", "mfu", "compile_s"])
  result = {
      "benchmark": "mala_train", "model": args.model, "encoder": config.model.encoder,
      "image_size": method.img, "dtype": args.dtype, "warmup": args.warmup, "steps": args.steps,
      "stages": rows, "peak_tflops": peak, "machine": C.machine_end(mach),
  }
  C.write_json(args.out or C.result_path("mala_train"), result)


if __name__ == "__main__":
  main()
