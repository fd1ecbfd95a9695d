"""ACA pretraining throughput: APMask (r = 0.3) against no masking, same run.

    python benchmarks/aca_pretrain.py                  # CPU: the demo model (tiny ViT /8)
    python benchmarks/aca_pretrain.py --model full --batch 16 --steps 20
                                                       # accelerator: ViT-S/16, 224 + 8 x 96

Builds the `configs/aca.py` pretraining stage twice (masking "apmask" and
"none", everything else equal), jits each `train_step` (state donated,
synthetic images already on the device, so the data pipeline is not
measured), runs `--warmup` untimed steps, then alternates timed blocks of
`--steps` steps between the two variants `--rounds` times (so machine load
drifts hit both alike) and reports the median steps/s. XLA's cost analysis of
each compiled step gives its FLOPs; the paper reports that masking 30% of the
patches costs ~70% of the unmasked compute. Note that APMask adds a
forward-only attention pass over each full student view, which the paper's
figure does not count. Prints a table and writes
benchmarks/results/aca_pretrain_<cpu|gpu>.json with the machine description.
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


def build(model: str, masking: str, batch: int, ratio: float):
  from configs import aca as cfg_mod
  from maskjax import methods
  c = cfg_mod.get_config("demo" if model == "tiny" else "")
  c.method.pretrain.masking = masking
  c.method.pretrain.mask_ratio = ratio
  c.method.pretrain.batch_size = batch
  c.train.steps = 1000
  method = methods.build_method(c)
  return c, method, method.stages()[0]


def flops_of(compiled):
  try:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
      cost = cost[0]
    return float(cost.get("flops", 0.0)) or None
  except Exception:  # noqa: BLE001 -- cost analysis is optional
    return None


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      return next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
  except (OSError, StopIteration):
    return platform.processor()


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

  dev = jax.devices()[0]
  runs = {}
  for masking in ("apmask", "none"):
    c, method, stage = build(args.model, masking, args.batch, args.ratio)
    size = int(c.input.image_size)
    x = jnp.asarray(np.random.default_rng(0).random((args.batch, size, size, 3), np.float32))
    batch = {"image": x, "mask": jnp.zeros(x.shape[:3]), "label": jnp.zeros((args.batch,), jnp.int32)}
    state = jax.jit(stage.init)(jax.random.key(0), None)
    step = jax.jit(stage.train_step, donate_argnums=(0,))
    t0 = time.perf_counter()
    compiled = step.lower(state, batch, jax.random.key(0)).compile()
    compile_s = time.perf_counter() - t0
    for i in range(args.warmup):
      state, m = compiled(state, batch, jax.random.key(i))
    jax.block_until_ready(state)
    runs[masking] = dict(config=c, compiled=compiled, state=state, batch=batch,
                         flops=flops_of(compiled), compile_s=compile_s, times=[],
                         tokens={k: float(v) for k, v in m.items() if k.startswith("tokens/")})
  for r in range(args.rounds):
    for masking, run in runs.items():
      state = run["state"]
      t0 = time.perf_counter()
      for i in range(args.steps):
        state, m = run["compiled"](state, run["batch"], jax.random.key(100 + i))
      jax.block_until_ready(state)
      run["times"].append((time.perf_counter() - t0) / args.steps)
      run["state"] = state

  c = runs["apmask"]["config"]
  rows = []
  for masking, run in runs.items():
    t = float(np.median(run["times"]))
    rows.append({"masking": masking, "steps_per_s": 1.0 / t, "step_ms": 1000 * t,
                 "images_per_s": args.batch / t, "flops_per_step": run["flops"],
                 "compile_s": run["compile_s"], "tokens_per_view": run["tokens"],
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
  print(f"{'masking':<8} {'steps/s':>8} {'ms/step':>9} {'img/s':>8} {'GFLOP/step':>11} tokens/view")
  for r in rows:
    gf = f"{r['flops_per_step'] / 1e9:.2f}" if r["flops_per_step"] else "-"
    print(f"{r['masking']:<8} {r['steps_per_s']:8.3f} {r['step_ms']:9.1f} {r['images_per_s']:8.1f} "
          f"{gf:>11} {r['tokens_per_view']}")
  print(f"apmask / none: time {rel_time:.3f}" +
        (f", FLOPs {rel_flops:.3f}" if rel_flops else "") + " (paper: ~0.70 of the compute)")
  result = {
      "benchmark": "aca_pretrain", "model": args.model, "description": desc,
      "batch": args.batch, "mask_ratio": args.ratio, "steps_per_round": args.steps,
      "rounds": args.rounds, "warmup": args.warmup, "rows": rows,
      "apmask_over_none_time": rel_time, "apmask_over_none_flops": rel_flops,
      "machine": {"platform": platform.platform(), "processor": platform.processor(),
                  "cpu_count": os.cpu_count(), "python": platform.python_version(),
                  "jax": jax.__version__, "backend": dev.platform,
                  "device": dev.device_kind, "num_devices": jax.device_count(),
                  "cpu_model": _cpu_model(), "load_avg_end": list(os.getloadavg())},
      "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
  }
  out = args.out or os.path.join(HERE, "results",
                                 f"aca_pretrain_{'gpu' if dev.platform == 'gpu' else 'cpu'}.json")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w") as f:
    json.dump(result, f, indent=2)
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
