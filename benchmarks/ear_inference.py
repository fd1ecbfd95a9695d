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
images/s.

  python benchmarks/ear_inference.py [--size 128] [--batch 8] [--iters 5]
      [--out benchmarks/results/ear_inference_cpu.json]

Default size: 256 (the paper's) on an accelerator, 128 on a CPU.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from maskjax.methods import build_method  # noqa: E402

PAPER_MS = {"riad": 366.0, "ear_wo_obf": 156.0, "ear_wo_attn": 37.0, "ear": 197.0}


def _config(name: str, variant: str, size: int):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config(variant)
  c.input.image_size = size
  c.train.steps = 1
  return c


def _methods(size: int) -> dict:
  out = {}
  for key, variant in (("ear", "full"), ("ear_wo_obf", "wo_obf"), ("ear_wo_attn", "wo_attn")):
    m = build_method(_config("ear", variant, size))
    m.set_categories(["bottle"])      # Table 1 m-hat = 32
    out[key] = m
  out["riad"] = build_method(_config("riad", "full", size))
  return out


def _time(fn, iters: int) -> list[float]:
  ts = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    ts.append(time.perf_counter() - t0)
  return ts


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--size", type=int, default=0)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--iters", type=int, default=5)
  p.add_argument("--out", default="")
  a = p.parse_args()
  backend = jax.default_backend()
  size = a.size or (256 if backend != "cpu" else 128)
  out_path = a.out or os.path.join(ROOT, "benchmarks", "results", f"ear_inference_{backend}.json")
  rng = np.random.default_rng(0)
  methods = _methods(size)
  rows = {}
  for key, m in methods.items():
    stage = m.stages()[0]
    state = jax.jit(stage.init)(jax.random.PRNGKey(0), None)
    score = jax.jit(lambda s, b, m=m: m.score(s, b, {}))
    rows[key] = {}
    for b in sorted({1, a.batch}):
      batch = {"image": jnp.asarray(rng.uniform(size=(b, size, size, 3)).astype(np.float32)),
               "category_id": jnp.zeros((b,), jnp.int32)}
      t0 = time.perf_counter()
      jax.block_until_ready(score(state, batch))
      compile_s = time.perf_counter() - t0
      ts = _time(lambda: score(state, batch), a.iters)
      med = float(np.median(ts))
      rows[key][b] = {"median_s": med, "min_s": float(np.min(ts)), "per_image_ms": 1e3 * med / b,
                      "images_per_s": b / med, "first_call_s": compile_s}
      print(f"{key:<12} batch {b:>3}: {1e3 * med:9.1f} ms/call  {1e3 * med / b:8.1f} ms/image  "
            f"{b / med:8.2f} img/s", flush=True)
  print()
  print(f"size {size}px, backend {backend}, device {jax.devices()[0].device_kind}")
  print(f"{'model':<12} {'ms/img (b=1)':>13} {f'ms/img (b={a.batch})':>14} "
        f"{'RIAD/model b=1':>15} {f'RIAD/model b={a.batch}':>15} {'paper ms':>9} {'paper ratio':>12}")
  ratios = {}
  for key in ("riad", "ear_wo_obf", "ear_wo_attn", "ear"):
    r1 = rows["riad"][1]["per_image_ms"] / rows[key][1]["per_image_ms"]
    rb = rows["riad"][a.batch]["per_image_ms"] / rows[key][a.batch]["per_image_ms"]
    pr = PAPER_MS["riad"] / PAPER_MS[key]
    ratios[key] = {"batch1": r1, f"batch{a.batch}": rb, "paper": pr}
    print(f"{key:<12} {rows[key][1]['per_image_ms']:>13.1f} {rows[key][a.batch]['per_image_ms']:>14.1f} "
          f"{r1:>14.2f}x {rb:>14.2f}x {PAPER_MS[key]:>9.0f} {pr:>11.2f}x")
  result = {
      "benchmark": "ear_inference",
      "what": "jitted Method.score latency: EAR (ViT-S/8 saliency + mosaic + U-Net + MSGMS max) "
              "vs RIAD (12 masks); random weights; U-Net widths 64-512",
      "image_size": size, "batch": a.batch, "iters": a.iters,
      "results": {k: {str(b): v for b, v in r.items()} for k, r in rows.items()},
      "speedup_vs_riad": ratios,
      "paper_table4_ms": PAPER_MS,
      "machine": dict(platform=platform.platform(), processor=platform.processor(),
                      cpu_count=os.cpu_count(), python=platform.python_version(),
                      jax=jax.__version__, backend=backend,
                      device=str(jax.devices()[0].device_kind)),
  }
  os.makedirs(os.path.dirname(out_path), exist_ok=True)
  with open(out_path, "w") as f:
    json.dump(result, f, indent=2)
  print("wrote", out_path)


if __name__ == "__main__":
  main()
