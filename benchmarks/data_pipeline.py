"""Input pipeline throughput: decoded, resized, augmented images per second.

    python benchmarks/data_pipeline.py [--seconds 12] [--workers 0,1,2,4]

Source images are demo-category PNGs rendered at 800x800 (MVTec AD images are
700-1024 px), decoded by PIL, resized to 256x256 (bilinear, antialiased),
augmented on the host (random horizontal flip + brightness jitter through
`random_map`) and batched (batch 16) by `maskjax.data.pipeline.train_dataset`.
workers = 0 runs in-process (decode threads only); >0 uses grain worker
processes. Writes benchmarks/results/data_pipeline_<device>.json and prints a table.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

from maskjax.config_base import base_config  # noqa: E402
from maskjax.data import demo, pipeline, sources  # noqa: E402

SOURCE_PX = 800
IMAGE_SIZE = 256
BATCH = 16


def augment(ex: dict, rng: np.random.Generator) -> dict:
  ex = dict(ex)
  if rng.uniform() < 0.5:
    ex["image"] = ex["image"][:, ::-1]
    ex["mask"] = ex["mask"][:, ::-1]
  ex["image"] = np.clip(ex["image"] * np.float32(rng.uniform(0.9, 1.1)), 0, 1)
  return ex


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--seconds", type=float, default=12.0)
  ap.add_argument("--workers", default="0,1,2,4")
  ap.add_argument("--num_images", type=int, default=24)
  ap.add_argument("--out", default="")
  args = ap.parse_args()
  mach = C.machine()
  root = tempfile.mkdtemp(prefix="maskjax-bench-")
  t0 = time.time()
  demo.generate(root, seed=0, image_size=SOURCE_PX, categories=("pill", "tiles"),
                num_train=args.num_images // 2, num_test_good=1, num_test_defect=3)
  print(f"rendered {args.num_images} source images at {SOURCE_PX}px in {time.time() - t0:.1f}s")
  c = base_config().input
  c.data_dir, c.image_size, c.val_fraction = root, IMAGE_SIZE, 0.0
  recs = sources.load_splits(c, 0).train
  rows = []
  for w in [int(x) for x in args.workers.split(",")]:
    c.num_workers = w
    it = iter(pipeline.train_dataset(c, recs, global_batch_size=BATCH, seed=0,
                                     host_transform=augment))
    for _ in range(2 + w):  # warm-up: start workers, fill buffers
      next(it)
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < args.seconds:
      b = next(it)
      n += b["image"].shape[0]
    dt = time.perf_counter() - t
    rows.append({"workers": w, "images": n, "seconds": round(dt, 2),
                 "images_per_s": round(n / dt, 1)})
    del it
  cpus = os.cpu_count() or 1
  best = max(r["images_per_s"] for r in rows)
  result = {
    "benchmark": "data_pipeline",
    "what": f"PNG {SOURCE_PX}px decode + resize to {IMAGE_SIZE} + flip/brightness augment + "
            f"batch {BATCH}, images per second",
    "machine": C.machine_end(mach),
    "results": rows,
    "per_core_images_per_s": round(best / cpus, 1),
  }
  C.print_table(rows, ["workers", "images", "seconds", "images_per_s"])
  print(f"per core (best / {cpus} cores): {result['per_core_images_per_s']} images/s")
  C.write_json(args.out or C.result_path("data_pipeline"), result)
  shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
  main()
