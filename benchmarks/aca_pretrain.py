"""ACA pretraining throughput: APMask (r = 0.3) against no masking, same run.

    python benchmarks/aca_pretrain.py                  # CPU: the demo model (tiny ViT /8)
    python benchmarks/aca_pretrain.py --model full --batch 16 --steps 20
                                                       # accelerator: ViT-S/16, 224 + 8 x 96

Builds the `configs/aca.py` pretraining stage twice (masking "apmask" and
"none", everything else equal; `_common.build_stages`, one stated category),
compiles each train step as the loop does (`_common.TrainStep`:
`maskjax.train.CompiledStage`, state donated; synthetic images already on the
device, so the data pipeline is not measured), runs `--warmup` untimed steps,
then alternates timed blocks of
`--steps` steps between the two variants `--rounds` times (so machine load
drifts hit both alike) and reports the median steps/s. XLA's cost analysis of
each compiled step gives its FLOPs; the paper reports that masking 30% of the
patches costs ~70% of the unmasked compute. Note that APMask adds a
forward-only attention pass over each full student view, which the paper's
figure does not count. Prints a table and writes
benchmarks/results/aca_pretrain_<device>.json with the machine description.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

# The data facts the stage is built on (its duration is fixed by train.steps).
CATEGORIES = ("bottle",)
NUM_TRAIN = 200


def build(model: str, masking: str, batch: int, ratio: float):
  c = C.load_config("aca", "demo" if model == "tiny" else "")
  c.method.pretrain.masking = masking
  c.method.pretrain.mask_ratio = ratio
  c.method.pretrain.batch_size = batch
  c.train.steps = 1000
  method, stages = C.build_stages(c, CATEGORIES, NUM_TRAIN)
  return c, method, stages[0]


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--model", choices=("tiny", "full"), default="tiny")
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--ratio", type=float, default=0.3)
  ap.add_argument("--warmup", type=int, default=2)
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--out", default="")
  args = ap.parse_args()

  mach = C.machine()
  dev = jax.devices()[0]
  runs = {}
  for masking in ("apmask", "none"):
    c, _, stage = build(args.model, masking, args.batch, args.ratio)
    size = int(c.input.image_size)
    x = np.random.default_rng(0).random((args.batch, size, size, 3), np.float32)
    ts = C.TrainStep(stage, c)
    ts.put({"image": x, "mask": np.zeros(x.shape[:3], np.float32),
            "label": np.zeros((args.batch,), np.int32)})
    ts.compile()
    m = ts.run(max(args.warmup, 1))  # at least one step: its metrics give the token counts
    runs[masking] = dict(config=c, ts=ts, times=[],
                         tokens={k: float(v) for k, v in m.items() if k.startswith("tokens/")})
  for _ in range(args.rounds):
    for run in runs.values():
      run["times"].append(run["ts"].time_block(args.steps))

  c = runs["apmask"]["config"]
  rows = []
  for masking, run in runs.items():
    t = float(np.median(run["times"]))
    rows.append({"masking": masking, "steps_per_s": 1.0 / t, "step_ms": 1000 * t,
                 "images_per_s": args.batch / t, "flops_per_step": run["ts"].flops,
                 "compile_s": run["ts"].compile_s, "tokens_per_view": run["tokens"],
                 "step_ms_all_rounds": [1000 * v for v in run["times"]]})
  a, n = rows
  rel_time = a["step_ms"] / n["step_ms"]
  rel_flops = (a["flops_per_step"] / n["flops_per_step"]
               if a["flops_per_step"] and n["flops_per_step"] else None)
  p = c.method.pretrain
  desc = (f"{c.model.backbone} {dict(c.model.backbone_overrides)}, views 1 teacher "
          f"{p.global_size} + {p.num_global} x {p.global_size} + {p.num_local} x {p.local_size}, "
          f"batch {args.batch}, r = {args.ratio}, attention from {p.attention_source}")
  print(f"ACA pretraining step: {desc}; device {dev.device_kind} ({dev.platform})")
  for r in rows:
    r["gflop_per_step"] = r["flops_per_step"] / 1e9 if r["flops_per_step"] else None
  C.print_table(rows, ["masking", "steps_per_s", "step_ms", "images_per_s", "gflop_per_step",
                       "tokens_per_view"])
  for r in rows:
    r.pop("gflop_per_step")
  print(f"apmask / none: time {rel_time:.3f}" +
        (f", FLOPs {rel_flops:.3f}" if rel_flops else "") + " (paper: ~0.70 of the compute)")
  result = {
      "benchmark": "aca_pretrain", "model": args.model, "description": desc,
      "batch": args.batch, "mask_ratio": args.ratio, "steps_per_round": args.steps,
      "rounds": args.rounds, "warmup": args.warmup, "rows": rows,
      "apmask_over_none_time": rel_time, "apmask_over_none_flops": rel_flops,
      "machine": C.machine_end(mach),
  }
  C.write_json(args.out or C.result_path("aca_pretrain"), result)


if __name__ == "__main__":
  main()
