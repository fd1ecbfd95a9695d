"""Reports written by every evaluation: results.json and results.md.

results.json (schema "maskjax.eval.results/1"; metric values are fractions in
[0, 1], null when undefined)::

  {schema, method, dataset, created (UTC, ISO 8601), metrics: [names],
   per_category: {category: {metric: value | null, ..., undefined: {metric: reason}}},
   mean: {metric: {mean, count (categories averaged), of (categories)}},
   published: {paper, variant, tables: {metric: "Table II"},
               per_category: {category: {metric: value}}, paper_mean: {dataset: {metric: value}}}
              | null when the paper reports nothing for this dataset,
   baseline: {name, description, margin, compared: [metrics],
              per_category: {category: {metric: value | null}}, mean: {metric: value},
              below_baseline: {category: [metrics not beaten by margin]}}
             | null when no baseline was computed,
   run_config, versions: {python, maskjax, jax, flax, optax, numpy, scipy, sklearn},
   device, timings, run_info}

``baseline`` is the trivial per-pixel Gaussian detector of
``maskjax.eval.baseline`` fitted on the same training normals at the same
resolution; a category whose image or pixel AUROC is not at least ``margin``
above it is listed in ``below_baseline`` and marked in results.md.

``run_info`` is stored as given (``config``, ``timings``, ``device`` and
``published_variant`` are read from it when present).

results.md: a comparison table (ours | paper | difference, in percentage
points) for the metrics the method's paper reports on this dataset, then the
comparison with the trivial baseline (ours | baseline | difference per category,
"BELOW BASELINE" where the margin is not met), then all metrics per category
with the baseline's means as a reference row, means over the categories where a metric is defined
("n/a" marks undefined values, with the reasons listed below the table).
"""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
import platform
from typing import Any, Mapping

import numpy as np

from maskjax import fileio
from maskjax.eval import metrics as metrics_lib
from maskjax.eval import published

SCHEMA = "maskjax.eval.results/1"
TITLES = {"image_auroc": "Image AUROC", "pixel_auroc": "Pixel AUROC", "aupro": "AUPRO@0.3",
          "image_f1_max": "Image F1-max", "pixel_f1_max": "Pixel F1-max",
          "image_ap": "Image AP", "pixel_ap": "Pixel AP"}


def _jsonable(x: Any) -> Any:
  """Plain JSON types; NaN / inf become null."""
  if isinstance(x, Mapping):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return _jsonable(x.tolist())
  if isinstance(x, (np.bool_, bool)):
    return bool(x)
  if isinstance(x, (np.integer, int)):
    return int(x)
  if isinstance(x, (np.floating, float)):
    return float(x) if math.isfinite(float(x)) else None
  if x is None or isinstance(x, str):
    return x
  if hasattr(x, "to_dict"):
    return _jsonable(x.to_dict())
  return str(x)


def versions() -> dict[str, str | None]:
  """Installed versions of the packages a result depends on."""
  out: dict[str, str | None] = {"python": platform.python_version()}
  for name, dist in (("maskjax", "maskjax"), ("jax", "jax"), ("jaxlib", "jaxlib"),
                     ("flax", "flax"), ("optax", "optax"), ("numpy", "numpy"),
                     ("scipy", "scipy"), ("sklearn", "scikit-learn")):
    try:
      out[name] = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  if out["maskjax"] is None:
    import maskjax
    out["maskjax"] = getattr(maskjax, "__version__", None)
  out["maskjax_commit"] = _git_commit()
  return out


def _git_commit() -> str | None:
  """The commit of the maskjax checkout in use (with "+dirty" for local
  changes), None outside a git checkout (e.g. an installed wheel)."""
  import subprocess
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    head = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True,
                          text=True, timeout=5)
    if head.returncode != 0:
      return None
    dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=5)
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
  except (OSError, subprocess.SubprocessError):
    return None


def _device() -> str:
  try:
    import jax
    d = jax.devices()
    return f"{len(d)} x {d[0].device_kind} ({d[0].platform})"
  except Exception as e:  # noqa: BLE001 - a report never fails on this
    return f"unknown ({type(e).__name__})"


def _published_block(method: str, dataset: str, categories: list[str],
                     variant: str | None) -> dict | None:
  """The paper's numbers for the run's categories, or None when there are none."""
  if method not in published.methods():
    return None
  per_cat: dict[str, dict[str, float]] = {}
  tables: dict[str, str] = {}
  means: dict[str, dict[str, float]] = {}
  for cat in categories:
    try:
      ds_given = published.normalize_dataset(dataset)
    except KeyError:
      ds_given = None
    ds, name = published.normalize_category(cat, ds_given)
    if ds is None or (ds_given is None and "/" not in cat):
      continue  # a folder / demo dataset: nothing to compare with
    vals = published.table(method, ds, variant).get(name)
    if vals:
      per_cat[cat] = vals
      tables.update(published.sources(method, ds, variant))
      means.setdefault(ds, {}).update(published.paper_means(method, ds, variant))
  if not per_cat:
    return None
  cit = published.citation(method)
  return {"paper": cit["paper"], "variant": variant or cit["default_variant"], "tables": tables,
          "per_category": per_cat, "paper_mean": means}


def _pct(v: float | None, digits: int = 2) -> str:
  return "n/a" if v is None else f"{100 * v:.{digits}f}"


def _diff(a: float | None, b: float | None) -> str:
  return "" if a is None or b is None else f"{100 * (a - b):+.2f}"


def _baseline_lines(per_category: Mapping[str, Mapping[str, Any]], base: Mapping) -> list[str]:
  keys = list(base.get("compared") or ("image_auroc", "pixel_auroc"))
  margin = float(base.get("margin", 0.0))
  below = base.get("below_baseline") or {}
  lines = [f"## Ours vs. the trivial baseline ({base.get('name')})", "",
           f"Baseline: {base.get('description')}; fitted on the same training normals at the "
           f"same resolution. A category is marked when ours is not at least "
           f"{100 * margin:.1f} points above the baseline.", ""]
  head = ["Category"]
  for k in keys:
    head += [f"{TITLES[k]} ours", "baseline", "diff"]
  head.append("vs. baseline")
  lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  bper = base.get("per_category") or {}
  for cat in per_category:
    if cat not in bper:
      continue
    row = [cat]
    for k in keys:
      o, b = per_category[cat].get(k), bper[cat].get(k)
      row += [_pct(o), _pct(b), _diff(o, b)]
    bad = below.get(cat, [])
    row.append("**BELOW BASELINE** (" + ", ".join(TITLES.get(k, k) for k in bad) + ")"
               if bad else "beats")
    lines.append("| " + " | ".join(row) + " |")
  n_bad = sum(1 for c in below if below[c])
  lines += ["", f"{n_bad} of {len(below)} categories below the baseline (+margin).", ""]
  return lines


def _markdown(method: str, dataset: str, per_category: Mapping[str, Mapping[str, Any]],
              mean: dict, pub: dict | None, run_info: Mapping[str, Any],
              base: Mapping | None = None) -> str:
  cats = list(per_category)
  lines = [f"# {method} on {dataset}", "",
           "Values in percent. Means are over the categories where the metric is defined "
           "(count in brackets); n/a = undefined (reasons below).", ""]
  if pub:
    metrics = [k for k in metrics_lib.METRICS
               if any(k in v for v in pub["per_category"].values())]
    src = ", ".join(sorted({pub["tables"][k] for k in metrics if k in pub["tables"]}))
    lines += [f"## Ours vs. the paper ({src}, variant `{pub['variant']}`)", "",
              f"Paper: {pub['paper']}. Difference = ours - paper, in points.", ""]
    head = ["Category"]
    for k in metrics:
      head += [f"{TITLES[k]} ours", "paper", "diff"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cat in cats:
      row = [cat]
      p = pub["per_category"].get(cat, {})
      for k in metrics:
        ours = per_category[cat].get(k)
        row += [_pct(ours), _pct(p.get(k), 1) if k in p else "", _diff(ours, p.get(k))]
      lines.append("| " + " | ".join(row) + " |")
    row = ["**mean**"]
    for k in metrics:
      both = [c for c in cats if per_category[c].get(k) is not None
              and k in pub["per_category"].get(c, {})]
      om = float(np.mean([per_category[c][k] for c in both])) if both else None
      pm = float(np.mean([pub["per_category"][c][k] for c in both])) if both else None
      row += [f"{_pct(om)} ({len(both)})", _pct(pm), _diff(om, pm)]
    lines += ["| " + " | ".join(row) + " |", "",
              "The mean row averages the categories where both numbers exist (count in brackets); "
              "the paper's own printed "
              "means: " + ", ".join(f"{ds} {TITLES[k]} {100 * v:.1f}"
                                     for ds, m in pub["paper_mean"].items()
                                     for k, v in m.items()) + ".",
              ""]
  if base:
    lines += _baseline_lines(per_category, base)
  lines += ["## All metrics", ""]
  head = ["Category"] + [TITLES[k] for k in metrics_lib.METRICS]
  lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for cat in cats:
    lines.append("| " + " | ".join([cat] + [_pct(per_category[cat].get(k))
                                          for k in metrics_lib.METRICS]) + " |")
  lines.append("| " + " | ".join(
      ["**mean**"] + [f"{_pct(mean[k]['mean'])} ({mean[k]['count']}/{mean[k]['of']})"
                      for k in metrics_lib.METRICS]) + " |")
  if base:
    bmean = base.get("mean") or {}
    lines.append("| " + " | ".join(["*baseline (mean)*"] + [_pct(bmean.get(k))
                                                          for k in metrics_lib.METRICS]) + " |")
  reasons = [(c, k, r) for c in cats for k, r in (per_category[c].get("undefined") or {}).items()]
  if reasons:
    lines += ["", "Undefined:", ""]
    lines += [f"- {c} {TITLES.get(k, k)}: {r}" for c, k, r in reasons]
  facts = run_info.get("describe")
  if isinstance(facts, Mapping) and facts:
    lines += ["", "Run:", ""] + [f"- {k}: {v}" for k, v in facts.items()]
  trained = run_info.get("stages_trained")
  if isinstance(trained, Mapping) and trained:
    lines += ["", "Trained: " + ", ".join(f"stage {k} {v.get('steps')} of {v.get('planned')} steps"
                                          for k, v in trained.items()) + "."]
  if run_info.get("maskjax_commit"):
    lines += ["", f"maskjax commit: {run_info['maskjax_commit']}."]
  thr = run_info.get("threshold")
  if isinstance(thr, Mapping) and "threshold" in thr:
    lines += ["", f"Decision threshold (predict mode): {thr['threshold']:.6g} = quantile "
              f"{thr.get('quantile')} of {thr.get('count', '?')} normal validation image scores."]
  phases = run_info.get("config_phases")
  if isinstance(phases, list) and len(phases) > 1:
    lines += ["", f"Config phases (the run was resumed with changed keys, {len(phases)} phases):",
              ""]
    for i, ph in enumerate(phases, start=1):
      changed = ph.get("changed") or {}
      what = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()) or "first"
      lines.append(f"- phase {i} (`{ph.get('file')}`): {what}")
  timings = run_info.get("timings")
  if timings:
    lines += ["", "Timings: " + ", ".join(f"{k} {v:.1f} s" if isinstance(v, (int, float))
                                         else f"{k} {v}" for k, v in timings.items()) + "."]
  return "\n".join(lines) + "\n"


def write_reports(out_dir: str, *, method: str, dataset: str,
                  per_category: Mapping[str, Mapping[str, Any]],
                  run_info: Mapping[str, Any] | None = None,
                  baseline: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[str, str]:
  """Write <out_dir>/results.json and results.md; returns their paths.

  per_category: {category: `metrics.evaluate_category` dict}; categories may be
  "mvtec/bottle" in multi-dataset runs. run_info: free-form, stored as given;
  ``config``, ``timings``, ``device``, ``threshold`` and ``published_variant``
  are also read from it. baseline: {category: `metrics.evaluate_category` dict}
  of `maskjax.eval.baseline` (None: no baseline section).
  """
  run_info = dict(run_info or {})
  vers = versions()
  run_info.setdefault("maskjax_commit", vers.get("maskjax_commit"))
  os.makedirs(out_dir, exist_ok=True)
  per_category = {c: dict(v) for c, v in per_category.items()}
  mean = metrics_lib.mean_over_categories(per_category)
  pub = _published_block(method, dataset, list(per_category), run_info.get("published_variant"))
  base = None
  if baseline:
    from maskjax.eval import baseline as baseline_lib
    base = baseline_lib.block(per_category, baseline)
  result = {
      "schema": SCHEMA, "method": method, "dataset": dataset,
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "metrics": list(metrics_lib.METRICS), "units": "fraction",
      "per_category": per_category, "mean": mean, "published": pub, "baseline": base,
      "run_config": run_info.get("config"), "versions": vers,
      "device": run_info.get("device") or _device(), "timings": run_info.get("timings", {}),
      "run_info": run_info,
  }
  json_path = os.path.join(out_dir, "results.json")
  md_path = os.path.join(out_dir, "results.md")
  fileio.write_text(json_path, json.dumps(_jsonable(result), indent=2, allow_nan=False))
  fileio.write_text(md_path, _markdown(method, dataset, per_category, mean, pub, run_info,
                                             _jsonable(base) if base else None))
  return json_path, md_path
