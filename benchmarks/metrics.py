"""Time exact pixel metrics on an MVTec-AD-sized test set against a sklearn baseline.

    python benchmarks/metrics.py                 # 1,725 maps at 256x256 (113 M pixels)
    python benchmarks/metrics.py --num-maps 100  # quick run

Builds float32 anomaly maps (uniform noise, raised inside elliptical
ground-truth blobs) and, in two separate child processes so each peak RSS is
its own, computes pixel AUROC + AUPRO (FPR 0.3) + pixel F1-max
1. with `maskjax.eval.metrics.pixel_metrics` (one sweep gives all three), and
2. the straightforward way: sklearn `roc_auc_score`, `precision_recall_curve`
   for F1-max, and AUPRO twice:
   (a) a global-sort AUPRO (argsort of all pixels, cumulative FPR / PRO, MVTec
       style): measured in full, this is the baseline time and value;
   (b) a plain AUPRO evaluating region overlaps at every threshold of sklearn's
       `roc_curve(drop_intermediate=False)` with FPR <= 0.3. That loop costs one
       pass over all pixels per threshold; when it would run for more than
       --sklearn-aupro-budget seconds it is timed on 8 evenly spaced thresholds
       and extrapolated, and the JSON says so ("aupro_plain_extrapolated").
Prints a table and writes benchmarks/results/metrics_<device>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _common as C  # noqa: E402


def make_data(num_maps: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """maps float32 [N,S,S] in [0, 1.6), masks uint8 [N,S,S]; 2 in 3 images anomalous."""
  rng = np.random.default_rng(seed)
  maps = rng.random((num_maps, size, size), dtype=np.float32)
  masks = np.zeros((num_maps, size, size), np.uint8)
  yy, xx = np.mgrid[0:size, 0:size]
  for i in range(num_maps):
    if i % 3 == 0:
      continue
    for _ in range(int(rng.integers(1, 4))):
      cy, cx = rng.integers(0, size, 2)
      ry, rx = rng.integers(2, size // 8, 2)
      blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
      masks[i][blob] = 1
    maps[i] += masks[i] * np.float32(0.6) * rng.random(dtype=np.float32)
  return maps, masks


def peak_rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # Linux: KiB


def run_ours(maps, masks) -> dict:
  from maskjax.eval import metrics
  t0 = time.perf_counter()
  res = metrics.pixel_metrics(maps, masks, fpr_limit=0.3)
  dt = time.perf_counter() - t0
  return {"seconds": dt, "pixel_auroc": res["pixel_auroc"], "aupro": res["aupro"],
          "pixel_f1_max": res["pixel_f1_max"], "num_regions": res["num_regions"]}


def _global_sort_aupro(s, labels, sizes, n_regions, limit=0.3) -> float:
  """MVTec-style AUPRO: argsort all pixels, cumulative FPR / PRO increments."""
  order = np.argsort(-s, kind="stable")
  lab = labels[order]
  ss = s[order]
  del order
  normal = lab == 0
  fpr = np.cumsum(normal, dtype=np.float64) / normal.sum()
  w = np.zeros(lab.size, np.float64)
  w[~normal] = 1.0 / (sizes[lab[~normal] - 1] * n_regions)
  pro = np.cumsum(w)
  del w
  last = np.append(np.flatnonzero(ss[1:] != ss[:-1]), ss.size - 1)  # end of each tie group
  fpr = np.concatenate([[0.0], fpr[last]])
  pro = np.concatenate([[0.0], pro[last]])
  keep = fpr <= limit
  x = np.append(fpr[keep], limit)
  y = np.append(pro[keep], np.interp(limit, fpr, pro))
  return float(np.trapezoid(y, x) / limit)


def run_sklearn(maps, masks, aupro_budget_s: float) -> dict:
  from scipy import ndimage
  from sklearn import metrics as skm
  y = masks.reshape(-1).astype(bool)
  s = maps.reshape(-1)
  out = {}
  t0 = time.perf_counter()
  out["pixel_auroc"] = float(skm.roc_auc_score(y, s))
  t1 = time.perf_counter()
  p, r, _ = skm.precision_recall_curve(y, s)
  with np.errstate(invalid="ignore", divide="ignore"):
    out["pixel_f1_max"] = float(np.nanmax(2 * p * r / (p + r)))
  del p, r
  t2 = time.perf_counter()
  labels = np.zeros(masks.shape, np.int32)
  offset = 0
  for i in range(masks.shape[0]):
    lab, n = ndimage.label(masks[i], structure=np.ones((3, 3)))
    labels[i] = np.where(lab > 0, lab + offset, 0)
    offset += n
  labels = labels.reshape(-1)
  sizes = np.bincount(labels, minlength=offset + 1)[1:]
  t_label = time.perf_counter() - t2
  # (a) global sort, MVTec style: measured in full
  t3 = time.perf_counter()
  out["aupro"] = _global_sort_aupro(s, labels, sizes, offset)
  out["seconds_aupro_global_sort"] = t_label + time.perf_counter() - t3
  # (b) plain per-threshold region overlaps at sklearn roc_curve's thresholds
  t4 = time.perf_counter()
  fpr, _, thr = skm.roc_curve(y, s, drop_intermediate=False)
  keep = np.flatnonzero(fpr <= 0.3)
  t_roc = time.perf_counter() - t4

  def pro_at(t):
    hit = np.bincount(labels[s >= t], minlength=offset + 1)[1:]
    return float(np.mean(hit / sizes))

  n_thr = len(keep)
  sample = np.unique(np.linspace(1, n_thr - 1, 8).round().astype(int))
  t5 = time.perf_counter()
  for k in sample:
    pro_at(thr[keep[k]])
  per_threshold = (time.perf_counter() - t5) / len(sample)
  if per_threshold * n_thr <= aupro_budget_s:
    t5 = time.perf_counter()
    pros = np.array([0.0] + [pro_at(t) for t in thr[keep[1:]]])  # thr[0] is +inf
    nxt = keep[-1] + 1
    y_cut = np.interp(0.3, fpr[keep[-1]:nxt + 1], [pros[-1], pro_at(thr[nxt])])
    out["aupro_plain"] = float(np.trapezoid(np.append(pros, y_cut),
                                            np.append(fpr[keep], 0.3)) / 0.3)
    loop = time.perf_counter() - t5
    out["aupro_plain_extrapolated"] = False
  else:
    out["aupro_plain"] = None
    loop = per_threshold * n_thr
    out["aupro_plain_extrapolated"] = True
  out["aupro_plain_thresholds"] = int(n_thr)
  out["aupro_plain_seconds_per_threshold"] = per_threshold
  out["seconds_aupro_plain"] = t_label + t_roc + loop
  out["seconds_auroc"] = t1 - t0
  out["seconds_f1"] = t2 - t1
  out["seconds"] = out["seconds_auroc"] + out["seconds_f1"] + out["seconds_aupro_global_sort"]
  out["seconds_with_plain_aupro"] = (out["seconds_auroc"] + out["seconds_f1"]
                                     + out["seconds_aupro_plain"])
  return out


def child(args) -> None:
  t0 = time.perf_counter()
  maps, masks = make_data(args.num_maps, args.size, args.seed)
  gen = time.perf_counter() - t0
  rss_data = peak_rss_gb()
  res = run_ours(maps, masks) if args.part == "ours" else run_sklearn(
      maps, masks, args.sklearn_aupro_budget)
  res.update(data_seconds=gen, peak_rss_gb=peak_rss_gb(), rss_after_data_gb=rss_data,
             input_gb=(maps.nbytes + masks.nbytes) / 1024 ** 3)
  print("RESULT " + json.dumps(res))


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--num-maps", type=int, default=1725)
  ap.add_argument("--size", type=int, default=256)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--sklearn-aupro-budget", type=float, default=300.0,
                  help="seconds the plain AUPRO loop may take before it is extrapolated")
  ap.add_argument("--skip-sklearn", action="store_true")
  ap.add_argument("--part", choices=["ours", "sklearn"], default=None, help=argparse.SUPPRESS)
  ap.add_argument("--out", default="", help="default: benchmarks/results/metrics_<device>.json")
  args = ap.parse_args()
  if args.part:
    child(args)
    return

  def spawn(part):
    cmd = [sys.executable, os.path.abspath(__file__), "--part", part,
           "--num-maps", str(args.num_maps), "--size", str(args.size), "--seed", str(args.seed),
           "--sklearn-aupro-budget", str(args.sklearn_aupro_budget)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                          cwd=os.path.dirname(HERE))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
      raise SystemExit(f"{part} run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])

  mach = C.machine()
  ours = spawn("ours")
  sk = None if args.skip_sklearn else spawn("sklearn")

  n_pix = args.num_maps * args.size * args.size
  rows = [("maskjax exact (pixel AUROC+AUPRO+F1)", ours["seconds"], ours["peak_rss_gb"],
           ours["pixel_auroc"], ours["aupro"], ours["pixel_f1_max"])]
  if sk:
    rows.append(("sklearn AUROC/PR curve + global-sort AUPRO", sk["seconds"], sk["peak_rss_gb"],
                 sk["pixel_auroc"], sk["aupro"], sk["pixel_f1_max"]))
    label = "sklearn + per-threshold AUPRO" + (
        " (EXTRAPOLATED)" if sk["aupro_plain_extrapolated"] else "")
    rows.append((label, sk["seconds_with_plain_aupro"], sk["peak_rss_gb"], sk["pixel_auroc"],
                 sk["aupro_plain"], sk["pixel_f1_max"]))
  print(f"{args.num_maps} maps x {args.size}x{args.size} = {n_pix / 1e6:.1f} M pixels, "
        f"{ours['num_regions']} GT regions, {os.cpu_count()} CPUs")
  print(f"{'method':<52} {'seconds':>9} {'peak RSS GB':>12} {'pixAUROC':>10} {'AUPRO':>8} "
        f"{'pixF1max':>9}")

  def fmt(v, spec):
    return format(v, spec) if v is not None else "n/a".rjust(int(spec.split('.')[0]))

  for name, sec, rss, a, p, f in rows:
    print(f"{name:<52} {sec:>9.2f} {rss:>12.2f} {fmt(a, '10.6f')} {fmt(p, '8.5f')} "
          f"{fmt(f, '9.6f')}")
  if sk:
    print(f"speed-up vs sklearn + global-sort AUPRO: {sk['seconds'] / ours['seconds']:.1f}x; "
          f"vs per-threshold AUPRO ({sk['aupro_plain_thresholds']} thresholds at FPR <= 0.3"
          f"{', extrapolated from ' + format(sk['aupro_plain_seconds_per_threshold'], '.3f') + ' s each' if sk['aupro_plain_extrapolated'] else ''}): "
          f"{sk['seconds_with_plain_aupro'] / ours['seconds']:.0f}x")
  result = {
      "benchmark": "metrics", "num_maps": args.num_maps, "size": args.size,
      "num_pixels": n_pix, "seed": args.seed, "ours": ours, "sklearn": sk,
      "speedup": (sk["seconds"] / ours["seconds"]) if sk else None,
      "speedup_vs_per_threshold_aupro": (sk["seconds_with_plain_aupro"] / ours["seconds"])
                                        if sk else None,
      "note": ("sklearn.seconds = roc_auc_score + precision_recall_curve F1-max + a global-sort "
               "AUPRO (all measured). The per-threshold AUPRO loop is measured in full only when "
               "it fits --sklearn-aupro-budget; otherwise its time is per-threshold time x "
               "number of thresholds (aupro_plain_extrapolated = true)."),
      "machine": dict(C.machine_end(mach), numpy=np.__version__),
  }
  if sk:
    import sklearn
    result["machine"]["sklearn"] = sklearn.__version__
  C.write_json(args.out or C.result_path("metrics"), result)


if __name__ == "__main__":
  main()
