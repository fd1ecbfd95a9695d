"""Inference latency of EAR against RIAD with 12 masks (the paper's Table 4).

Timed unit, per method, one jitted `Method.score` call on a batch of images in
[0, 1] until the anomaly map and image score are ready:
  EAR          saliency (ViT-S/8 last-block CLS attention, random weights: the
               cost does not depend on them) + threshold + mosaic hint +
               U-Net recovery + MSGMS(3 scales) map + max;
  EAR w/o obf  the same with binary masking;
  EAR w/o attn no ViT, mosaic over the whole image;
  RIAD         4 cell sizes x 3 disjoint masks = 12 U-Net passes, MSGMS(4)
               maps summed, 21x21 box filter, max.
Both U-Nets use RIAD's widths (64, 128, 256, 512, 512) and the same image size,
in the same process, batch 1 (per-image latency) and a larger batch
(throughput). Reported: median of `--iters` timed calls after one warm-up
(compile) call, the RIAD / EAR latency ratio next to the paper's 1.86x, and
images/s. Methods are built on one stated category, "bottle" (Table 1's
m-hat = 32), with their stages resolved and their states initialised as the
loop does (`_common.build_stages`, `_common.TrainStep`).

  python benchmarks/ear_inference.py [--size 128] [--batch 8] [--iters 5]
      [--out benchmarks/results/ear_inference_cpu.json]

Default size: 256 (the paper's) on an accelerator, 128 on a CPU.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

PAPER_MS = {"riad": 366.0, "ear_wo_obf": 156.0, "ear_wo_attn": 37.0, "ear": 197.0}
CATEGORIES = ("bottle",)      # Table 1 m-hat = 32
NUM_TRAIN = 209               # MVTec AD bottle's training images


def _config(name: str, variant: str, size: int):
  c = C.load_config(name, variant)
  c.input.image_size = size
  c.train.steps = 1
  return c


def _methods(size: int) -> dict:
  """key -> (config, method, first stage)."""
  out = {}
  for key, name, variant in (("ear", "ear", "full"), ("ear_wo_obf", "ear", "wo_obf"),
                             ("ear_wo_attn", "ear", "wo_attn"), ("riad", "riad", "full")):
    c = _config(name, variant, size)
    m, stages = C.build_stages(c, CATEGORIES, NUM_TRAIN)
    out[key] = (c, m, stages[0])
  return out


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--size", type=int, default=0)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--iters", type=int, default=5)
  p.add_argument("--out", default="")
  a = p.parse_args()
  mach = C.machine()
  backend = jax.default_backend()
  size = a.size or (256 if backend != "cpu" else 128)
  rng = np.random.default_rng(0)
  rows = {}
  for key, (c, m, stage) in _methods(size).items():
    state = C.TrainStep(stage, c).state        # initialised as the loop does
    score = jax.jit(lambda s, b, m=m: m.score(s, b, {}))
    rows[key] = {}
    for b in sorted({1, a.batch}):
      batch = {"image": jnp.asarray(rng.uniform(size=(b, size, size, 3)).astype(np.float32)),
               "category_id": jnp.zeros((b,), jnp.int32)}
      t0 = time.perf_counter()
      jax.block_until_ready(score(state, batch))
      compile_s = time.perf_counter() - t0
      t = C.timeit(lambda score=score, state=state, batch=batch: score(state, batch), 0,
                   a.iters)
      med = t["median_s"]
      rows[key][b] = {"median_s": med, "min_s": t["best_s"], "per_image_ms": 1e3 * med / b,
                      "images_per_s": b / med, "first_call_s": compile_s}
      print(f"{key:<12} batch {b:>3}: {1e3 * med:9.1f} ms/call  {1e3 * med / b:8.1f} ms/image  "
            f"{b / med:8.2f} img/s", flush=True)
  print()
  print(f"size {size}px, backend {backend}, device {jax.devices()[0].device_kind}")
  table, ratios = [], {}
  for key in ("riad", "ear_wo_obf", "ear_wo_attn", "ear"):
    r1 = rows["riad"][1]["per_image_ms"] / rows[key][1]["per_image_ms"]
    rb = rows["riad"][a.batch]["per_image_ms"] / rows[key][a.batch]["per_image_ms"]
    pr = PAPER_MS["riad"] / PAPER_MS[key]
    ratios[key] = {"batch1": r1, f"batch{a.batch}": rb, "paper": pr}
    table.append({"model": key, "ms/img b=1": rows[key][1]["per_image_ms"],
                  f"ms/img b={a.batch}": rows[key][a.batch]["per_image_ms"],
                  "RIAD/model b=1": r1, f"RIAD/model b={a.batch}": rb,
                  "paper ms": PAPER_MS[key], "paper ratio": pr})
  C.print_table(table, list(table[0]))
  result = {
      "benchmark": "ear_inference",
      "what": "jitted Method.score latency: EAR (ViT-S/8 saliency + mosaic + U-Net + MSGMS max) "
              "vs RIAD (12 masks); random weights; U-Net widths 64-512",
      "image_size": size, "batch": a.batch, "iters": a.iters, "categories": list(CATEGORIES),
      "results": {k: {str(b): v for b, v in r.items()} for k, r in rows.items()},
      "speedup_vs_riad": ratios,
      "paper_table4_ms": PAPER_MS,
      "machine": C.machine_end(mach),
  }
  C.write_json(a.out or C.result_path("ear_inference"), result)


if __name__ == "__main__":
  main()
