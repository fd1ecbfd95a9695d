"""Throughput of the shared ops.

  python benchmarks/ops.py [--batch 8] [--size 256] [--seconds 3]

Device ops (under jax.jit, on the default JAX backend): SSIM and MSGMS maps
per second on a [batch, size, size, 3] float32 batch. Host ops (NumPy, the
process pinned to one CPU core, BLAS threads 1): Perlin anomaly synthesis
(DRAEM-style, built-in textures, anomaly probability 0.5 and 1.0) and
attention-guided cut-paste (copy and Poisson) samples per second at
size x size, per wall second and per CPU second of the process (the latter is
what one dedicated core delivers when the machine is shared). Prints a table
and writes benchmarks/results/ops_<device>.json.
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
  os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

from maskjax.ops import cutpaste, gms, perlin, ssim  # noqa: E402


def _time_device(fn, args, seconds):
  out = fn(*args)
  jax.block_until_ready(out)          # compile + warm-up
  n, t0 = 0, time.perf_counter()
  while True:
    out = fn(*args)
    jax.block_until_ready(out)
    n += 1
    dt = time.perf_counter() - t0
    if dt >= seconds and n >= 3:
      return n / dt


def _time_host(fn, seconds):
  """-> (samples per wall second, samples per CPU second of this process)."""
  fn(0)                               # warm-up (texture bank, caches)
  n, t0, c0 = 0, time.perf_counter(), time.process_time()
  while True:
    fn(n + 1)
    n += 1
    dt = time.perf_counter() - t0
    if dt >= seconds and n >= 5:
      return n / dt, n / max(time.process_time() - c0, 1e-9)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--size", type=int, default=256)
  ap.add_argument("--seconds", type=float, default=3.0)
  ap.add_argument("--out", default="")
  args = ap.parse_args()
  b, s = args.batch, args.size
  mach = C.machine()
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((b, s, s, 3), dtype=np.float32))
  y = jnp.asarray(np.clip(np.asarray(x) + 0.1 * rng.standard_normal(x.shape), 0, 1)
                  .astype(np.float32))
  rows = []

  device_cases = [
      ("ssim_map", jax.jit(ssim.ssim_map)),
      ("msgms_map riad 4 scales", jax.jit(lambda a, c: gms.msgms_map(a, c, 4, "riad"))),
      ("msgms_map riad 3 scales", jax.jit(lambda a, c: gms.msgms_map(a, c, 3, "riad"))),
      ("msgms_map gray_median 4", jax.jit(lambda a, c: gms.msgms_map(a, c, 4, "gray_median"))),
      ("gms_map (SSM)", jax.jit(gms.gms_map)),
  ]
  for name, fn in device_cases:
    calls = _time_device(fn, (x, y), args.seconds)
    rows.append({"op": name, "kind": "device", "shape": [b, s, s, 3], "dtype": "float32",
                 "items_per_s": calls * b, "unit": "maps/s"})
    print(f"  {name:32s} {calls * b:10.1f} maps/s", flush=True)
  xb, yb = x.astype(jnp.bfloat16), y.astype(jnp.bfloat16)
  for name, fn in device_cases[:2]:
    calls = _time_device(fn, (xb, yb), args.seconds)
    rows.append({"op": name, "kind": "device", "shape": [b, s, s, 3], "dtype": "bfloat16",
                 "items_per_s": calls * b, "unit": "maps/s"})
    print(f"  {name + ' (bf16 in)':32s} {calls * b:10.1f} maps/s", flush=True)

  # Host ops on one core.
  pinned = None
  if hasattr(os, "sched_setaffinity"):
    pinned = sorted(os.sched_getaffinity(0))[0]
    os.sched_setaffinity(0, {pinned})
  img = rng.random((s, s, 3), dtype=np.float32)
  att = rng.random((s // 16, s // 16)).astype(np.float32)
  host_cases = [
      ("perlin_anomaly p=0.5", perlin.PerlinAnomaly(anomaly_prob=0.5), "perlin"),
      ("perlin_anomaly p=1.0", perlin.PerlinAnomaly(anomaly_prob=1.0), "perlin"),
      ("attention_cutpaste copy", False, "cutpaste"),
      ("attention_cutpaste poisson", True, "cutpaste"),
  ]
  for name, arg, kind in host_cases:
    if kind == "perlin":
      fn = lambda i, pa=arg: pa(img, np.random.default_rng(i))
    else:
      fn = lambda i, p=arg: cutpaste.attention_cutpaste(img, att, np.random.default_rng(i),
                                                         poisson=p)
    rate, cpu_rate = _time_host(fn, args.seconds)
    rows.append({"op": name, "kind": "host_1_core", "shape": [s, s, 3], "dtype": "float32",
                 "items_per_s": rate, "items_per_cpu_s": cpu_rate, "unit": "samples/s/core"})
    print(f"  {name:32s} {rate:10.1f} samples/s/core (wall), {cpu_rate:.1f} per CPU-second",
          flush=True)

  result = {
      "benchmark": "ops",
      "machine": dict(C.machine_end(mach), host_ops_pinned_to_cpu=pinned),
      "config": {"batch": b, "size": s, "seconds_per_case": args.seconds},
      "results": rows,
      "target": "host synthesis >= 65 samples/s/core (16 cores feed >= 1000 samples/s)",
  }
  out = C.write_json(args.out or C.result_path("ops"), result)
  print()
  print(f"{'op':34s} {'kind':12s} {'dtype':9s} {'rate':>10s} {'per CPU-s':>10s}  unit")
  for r in rows:
    cpu = f"{r['items_per_cpu_s']:10.1f}" if "items_per_cpu_s" in r else f"{'':10s}"
    print(f"{r['op']:34s} {r['kind']:12s} {r['dtype']:9s} {r['items_per_s']:10.1f} {cpu}  "
          f"{r['unit']}")
  print(f"load average before/after: {mach['load_avg_start']} / "
        f"{result['machine']['load_avg_end']}; results in {out}")


if __name__ == "__main__":
  main()
