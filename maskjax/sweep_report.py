r"""Aggregate every run under a root into one table per dataset.

  python -m maskjax.sweep_report --root=DIR [--reference=torch_results.csv ...]
      [--tolerance=0.01] [--out=DIR/report]

Reads every `<run>/eval/results.json` below --root (the runs of
`python -m maskjax.sweep`, or any workdirs). A run's column label is its path
below the root without the category and seed parts (e.g. `riad` or
`ear/mosaic_m=8`). A per-category run (one model per category, sub-runs
`<run>/<category>/`) counts once, through its merged report (`run_paths`).
For each dataset (MVTec AD, VisA, demo, ...) and each
metric (image AUROC, pixel AUROC, AUPRO, image F1-max) it writes:

  <out>/<dataset>_<metric>.md / .csv   rows: categories + mean;
      columns: each label as mean +- std over seeds (n seeds), the paper's
      published number for the label's method, and each PyTorch reference;
      differences to a reference beyond --tolerance are marked with "!".
      The trivial per-pixel Gaussian baseline that every evaluation computes
      (`maskjax.eval.baseline`) is a reference column `baseline (<N> px)` per
      resolution; a run's cell is marked "▼" where it is not at least the
      baseline's margin (2 points of AUROC) above the baseline at the run's
      resolution (image and pixel AUROC).
  <out>/<dataset>_<metric>.png         grouped bar chart (categories x labels)
  <out>/summary.md                     all tables in one file

PyTorch references (--reference, repeatable): a CSV with columns
`method,category,metric,value`, or anomalib's benchmark CSV as written
(a model column such as `model`/`model_name`/`model.class_path`, a category
column such as `category`/`data.category`/`data.init_args.category`, and
metric columns like `image_AUROC`, `pixel_AUROC`, `pixel_AUPRO`,
`image_F1Score`). Values above 1 are read as percentages.
"""
from __future__ import annotations

import collections
import csv
import glob
import json
import math
import os
import sys
from typing import Optional

import numpy as np
from absl import app, flags

from maskjax import fileio

FLAGS = flags.FLAGS
METRIC_TITLES = {"image_auroc": "Image AUROC", "pixel_auroc": "Pixel AUROC", "aupro": "AUPRO",
                 "image_f1_max": "Image F1-max"}
METRICS = ("image_auroc", "pixel_auroc", "aupro", "image_f1_max")
# anomalib / free-form metric names -> ours
_METRIC_ALIASES = {
    "image_auroc": "image_auroc", "img_auroc": "image_auroc", "auroc": "image_auroc",
    "pixel_auroc": "pixel_auroc", "aupro": "aupro", "pixel_aupro": "aupro", "pro": "aupro",
    "image_f1score": "image_f1_max", "image_f1_max": "image_f1_max", "f1_max": "image_f1_max",
    "image_f1max": "image_f1_max", "pixel_f1score": "pixel_f1_max", "pixel_f1_max": "pixel_f1_max",
}
_MODEL_COLS = ("method", "model", "model_name", "model.class_path", "model_class_path")
_CAT_COLS = ("category", "data.category", "data.init_args.category", "data_category")


def _split_category(cat: str, dataset: str) -> tuple[str, str]:
  """'mvtec/bottle' -> ('mvtec', 'bottle'); 'bottle' -> (dataset, 'bottle')."""
  if "/" in cat:
    d, c = cat.split("/", 1)
    return d, c
  return dataset, cat


def _metric_value(v) -> Optional[float]:
  if isinstance(v, dict):
    v = v.get("value")
  if v is None:
    return None
  try:
    v = float(v)
  except (TypeError, ValueError):
    return None
  return None if math.isnan(v) else v


def sub_run_parents(root: str) -> dict[str, str]:
  """{sub-run directory: its parent} for every per-category parent below root
  (a directory holding `sub_runs.json`, `maskjax.per_category`)."""
  from maskjax import per_category
  parents: dict[str, str] = {}
  for f in glob.glob(os.path.join(root, "**", per_category.SUB_RUNS), recursive=True):
    d = os.path.normpath(os.path.dirname(f))
    for c in per_category.read_sub_runs(d) or ():
      parents[os.path.normpath(per_category.sub_workdir(d, c))] = d
  return parents


def run_paths(root: str) -> list[tuple[str, str]]:
  """(results.json, the run directory it is reported under) of every run below root.

  A per-category run (`maskjax.per_category`) writes a report per category in
  its sub-runs and a merged one in the parent: the parent's report stands for
  all of them (counting both would report each model twice, under two
  labels); the sub-runs of a parent that has no merged report yet (stopped
  part-way) are reported under the parent's label."""
  paths = sorted(glob.glob(os.path.join(root, "**", "eval", "results.json"), recursive=True))
  parents = sub_run_parents(root)
  out = []
  for p in paths:
    run_dir = os.path.normpath(os.path.dirname(os.path.dirname(p)))
    parent = parents.get(run_dir)
    if parent is None:
      out.append((p, run_dir))
    elif not os.path.exists(os.path.join(parent, "eval", "results.json")):
      out.append((p, parent))
  return out


def read_run(path: str, root: str, run_dir: Optional[str] = None) -> list[dict]:
  """One results.json -> rows {label, method, dataset, category, seed, metric: value}.

  `run_dir`: the directory the label comes from (default: the run's own)."""
  with open(path) as f:
    res = json.load(f)
  run_dir = run_dir or os.path.dirname(os.path.dirname(path))
  rel = os.path.relpath(run_dir, root).split(os.sep)
  parts = [p for p in rel if not p.startswith("seed")]
  info = res.get("run_info", {}) or {}
  config = info.get("config", res.get("config", {})) or {}
  seed = config.get("seed", res.get("seed", 0))
  method = res.get("method") or (config.get("method", {}) or {}).get("name", "?")
  dataset = res.get("dataset") or "unknown"
  per_cat = res.get("per_category") or res.get("categories") or {}
  if parts and parts != ["."]:
    # drop the trailing category part written by the sweep (one category or "all")
    label = "/".join(parts[:-1]) if len(parts) > 1 else parts[0]
  else:
    label = method
  size = (config.get("input", {}) or {}).get("image_size")
  rows = []
  for cat, metrics in per_cat.items():
    ds, c = _split_category(cat, dataset)
    row = {"label": label, "method": method, "dataset": ds, "category": c, "seed": seed,
           "image_size": size}
    for m in METRICS:
      row[m] = _metric_value(metrics.get(m))
    rows.append(row)
  base = res.get("baseline") or {}
  for cat, metrics in (base.get("per_category") or {}).items():
    ds, c = _split_category(cat, dataset)
    row = {"label": baseline_label(size), "method": "baseline", "dataset": ds, "category": c,
           "seed": 0, "image_size": size, "baseline": True,
           "margin": float(base.get("margin", 0.0))}
    for m in METRICS:
      row[m] = _metric_value(metrics.get(m))
    rows.append(row)
  return rows


def baseline_label(size) -> str:
  return f"baseline ({size} px)" if size else "baseline"


# metrics a run is compared with the baseline on
BASELINE_COMPARED = ("image_auroc", "pixel_auroc")


def dedupe_baselines(rows: list[dict]) -> list[dict]:
  """One baseline row per (label, dataset, category): every run of the same data
  and resolution carries the same deterministic baseline."""
  seen, out = set(), []
  for r in rows:
    if r.get("baseline"):
      key = (r["label"], r["dataset"], r["category"])
      if key in seen:
        continue
      seen.add(key)
    out.append(r)
  return out


def read_reference(path: str) -> list[dict]:
  """A PyTorch reference CSV -> rows {method, category, metric, value}."""
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    cols = reader.fieldnames or []
    rows = list(reader)
  lower = {c.lower(): c for c in cols}
  out = []
  if {"method", "category", "metric", "value"} <= set(lower):
    for r in rows:
      m = _METRIC_ALIASES.get(r[lower["metric"]].strip().lower())
      if m:
        out.append({"method": r[lower["method"]].strip().lower(),
                    "category": r[lower["category"]].strip(), "metric": m,
                    "value": _pct(float(r[lower["value"]]))})
    return out
  model_col = next((lower[c] for c in _MODEL_COLS if c in lower), None)
  cat_col = next((lower[c] for c in _CAT_COLS if c in lower), None)
  if model_col is None or cat_col is None:
    raise ValueError(f"{path}: cannot find the model and category columns (have {cols}); "
                     "expected method,category,metric,value or anomalib's benchmark CSV")
  for r in rows:
    model = r[model_col].strip().rsplit(".", 1)[-1].lower()
    for c in cols:
      key = c.lower().replace("test_", "")
      m = _METRIC_ALIASES.get(key)
      if m and r[c] not in ("", None):
        out.append({"method": model, "category": r[cat_col].strip(), "metric": m,
                    "value": _pct(float(r[c]))})
  return out


def _pct(v: float) -> float:
  return v / 100.0 if v > 1.0 else v


def _published(method: str, dataset: str) -> dict:
  try:
    from maskjax.eval import published
    return published.table(method, dataset) or {}
  except Exception:  # no table for this method/dataset
    return {}


def _fmt(mean: Optional[float], std: Optional[float] = None, n: int = 0) -> str:
  if mean is None:
    return "n/a"
  s = f"{100 * mean:.1f}"
  if std is not None and n > 1:
    s += f" ± {100 * std:.1f}"
  return s


def aggregate(rows: list[dict], references: dict[str, list[dict]], tolerance: float) -> dict:
  """-> {dataset: {metric: table}}; table = {"header": [...], "rows": [[...]], "values": ...}."""
  by_ds = collections.defaultdict(list)
  for r in rows:
    by_ds[r["dataset"]].append(r)
  out = {}
  for ds, drows in sorted(by_ds.items()):
    labels = sorted({r["label"] for r in drows})
    methods = {l: next(r["method"] for r in drows if r["label"] == l) for l in labels}
    cats = sorted({r["category"] for r in drows})
    out[ds] = {}
    for metric in METRICS:
      header = ["category"]
      for l in labels:
        header.append(l)
      pub_cols = sorted({methods[l] for l in labels})
      pubs = {m: _published(m, ds) for m in pub_cols}
      pub_cols = [m for m in pub_cols if any(metric in v for v in pubs[m].values())]
      header += [f"{m} (paper)" for m in pub_cols]
      ref_cols = []
      for name, refs in references.items():
        for m in sorted({x["method"] for x in refs if x["metric"] == metric}):
          ref_cols.append((name, m))
      header += [f"{m} ({os.path.basename(name)})" for name, m in ref_cols]
      table_rows, numeric = [], {}
      means_acc = collections.defaultdict(list)
      for cat in cats + ["mean"]:
        line = [cat]
        for l in labels:
          if cat == "mean":
            vals = means_acc[l]
            mean = float(np.mean(vals)) if vals else None
            line.append(_fmt(mean))
            numeric[(cat, l)] = mean
            continue
          vals = [r[metric] for r in drows if r["label"] == l and r["category"] == cat
                  and r[metric] is not None]
          if vals:
            mean, std = float(np.mean(vals)), float(np.std(vals))
            means_acc[l].append(mean)
          else:
            mean, std = None, None
          numeric[(cat, l)] = mean
          line.append(_fmt(mean, std, len(vals)) + (f" (n={len(vals)})" if len(vals) > 1 else ""))
        for m in pub_cols:
          v = pubs[m].get(cat, {}).get(metric) if cat != "mean" else _mean_of(
              [pubs[m].get(c, {}).get(metric) for c in cats])
          line.append(_fmt(_pct(v) if v is not None else None))
        for name, m in ref_cols:
          vals = [x["value"] for x in references[name] if x["method"] == m and x["metric"] == metric
                  and x["category"].split("/")[-1] == cat]
          ref = float(np.mean(vals)) if vals else (
              _mean_of([_ref(references[name], m, metric, c) for c in cats]) if cat == "mean"
              else None)
          cell = _fmt(ref)
          ours = [numeric.get((cat, l)) for l in labels if methods[l] == m]
          ours = [o for o in ours if o is not None]
          if ref is not None and ours and abs(ours[0] - ref) > tolerance:
            cell += f" ! ({100 * (ours[0] - ref):+.1f})"
          line.append(cell)
        table_rows.append(line)
      marked = _mark_below_baseline(drows, labels, cats, metric, numeric, table_rows)
      out[ds][metric] = {"header": header, "rows": table_rows, "labels": labels, "cats": cats,
                         "numeric": {f"{k[0]}|{k[1]}": v for k, v in numeric.items()},
                         "below_baseline": marked}
  return out


def _mark_below_baseline(drows, labels, cats, metric, numeric, table_rows) -> list[list[str]]:
  """Append " ▼" to the cells of runs not at least the margin above the baseline
  of their resolution; returns [[category, label], ...] of the marked cells."""
  if metric not in BASELINE_COMPARED:
    return []
  marked = []
  for j, l in enumerate(labels):
    lrows = [r for r in drows if r["label"] == l]
    if not lrows or lrows[0].get("baseline"):
      continue
    sizes = {r.get("image_size") for r in lrows}
    if len(sizes) != 1:
      continue
    b = baseline_label(sizes.pop())
    brow = [r for r in drows if r["label"] == b]
    if not brow:
      continue
    margin = brow[0].get("margin", 0.0)
    for i, cat in enumerate(cats):
      ours, base = numeric.get((cat, l)), numeric.get((cat, b))
      if base is not None and (ours is None or ours < base + margin):
        table_rows[i][1 + j] += " ▼"
        marked.append([cat, l])
  return marked


def _ref(refs, m, metric, cat):
  vals = [x["value"] for x in refs if x["method"] == m and x["metric"] == metric
          and x["category"].split("/")[-1] == cat]
  return float(np.mean(vals)) if vals else None


def _mean_of(vals):
  vals = [v for v in vals if v is not None]
  return float(np.mean(vals)) if vals else None


def write(tables: dict, out_dir: str) -> list[str]:
  os.makedirs(out_dir, exist_ok=True)
  written, summary = [], ["# maskjax results", ""]
  for ds, per_metric in tables.items():
    for metric, t in per_metric.items():
      base = os.path.join(out_dir, f"{ds}_{metric}")
      md = [f"## {ds}: {METRIC_TITLES[metric]} (%)", "",
            "| " + " | ".join(t["header"]) + " |",
            "|" + "|".join(["---"] + ["---:"] * (len(t["header"]) - 1)) + "|"]
      md += ["| " + " | ".join(r) + " |" for r in t["rows"]]
      if any(str(h).startswith("baseline") for h in t["header"]) and metric in BASELINE_COMPARED:
        md += ["", "▼ = not at least 2 points (the baseline's margin) above the trivial "
               "per-pixel Gaussian baseline at the run's resolution."]
      fileio.write_text(base + ".md", "\n".join(md) + "\n")
      with fileio.atomic_open(base + ".csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(t["header"])
        w.writerows(t["rows"])
      _bar_chart(t, f"{ds}: {METRIC_TITLES[metric]}", base + ".png")
      written += [base + ".md", base + ".csv", base + ".png"]
      summary += md + [""]
  fileio.write_text(os.path.join(out_dir, "summary.md"), "\n".join(summary))
  written.append(os.path.join(out_dir, "summary.md"))
  return written


def _bar_chart(t: dict, title: str, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  cats, labels = t["cats"] + ["mean"], t["labels"]
  x = np.arange(len(cats))
  w = 0.8 / max(1, len(labels))
  fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(cats) * max(1, len(labels)) + 2), 3.2))
  for i, l in enumerate(labels):
    vals = [t["numeric"].get(f"{c}|{l}") for c in cats]
    ax.bar(x + i * w, [100 * v if v is not None else 0 for v in vals], w, label=l)
  ax.set_xticks(x + w * (len(labels) - 1) / 2)
  ax.set_xticklabels(cats, rotation=45, ha="right", fontsize=7)
  ax.set_ylabel("%")
  ax.set_ylim(0, 100)
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def build_report(root: str, references: list[str] = (), tolerance: float = 0.01,
                 out_dir: Optional[str] = None) -> list[str]:
  paths = run_paths(root)
  if not paths:
    from maskjax.errors import DataError
    raise DataError(f"no runs with eval/results.json found under {root}")
  rows = []
  for p, run_dir in paths:
    rows += read_run(p, root, run_dir)
  rows = dedupe_baselines(rows)
  refs = {r: read_reference(r) for r in references}
  tables = aggregate(rows, refs, tolerance)
  return write(tables, out_dir or os.path.join(root, "report"))


def define_flags() -> None:
  """Command-line flags (defined only when run as a program)."""
  flags.DEFINE_string("root", None, "directory holding runs (searched recursively)")
  flags.DEFINE_multi_string("reference", [], "PyTorch reference CSV (ours or anomalib's)")
  flags.DEFINE_float("tolerance", 0.01, "mark |ours - reference| above this (metric units, 0-1)")
  flags.DEFINE_string("out", None, "output directory (default: <root>/report)")


def main(argv) -> None:
  from maskjax.errors import UserError
  if not FLAGS.root:
    print("maskjax.sweep_report: error: --root is required", file=sys.stderr)
    sys.exit(2)
  try:
    written = build_report(FLAGS.root, FLAGS.reference, FLAGS.tolerance, FLAGS.out)
  except (UserError, ValueError, OSError) as e:
    print(f"maskjax.sweep_report: error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"report: {len(written)} files in {os.path.dirname(written[-1])}")
  print(f"report: {written[-1]}")


if __name__ == "__main__":
  define_flags()
  from maskjax.cli_utils import maybe_print_help
  maybe_print_help(__doc__)
  app.run(main)
