"""The papers' per-category protocol: one model per category, one report.

With `config.train.protocol = "per_category"` and several selected categories,
a run trains one model per category as a sub-run `<workdir>/<category>/` (a
complete run directory of its own: config.json with that one category,
checkpoints, resumable on its own or through the parent) one after the other,
then writes one report over all of them to `<workdir>/eval/` (results.md /
results.json, the same schema as a unified run's, every category's metrics
and baseline row taken from its sub-run's report). Durations resolve against
each category's own training images, as in the papers.

The parent directory records the parent config (`config.json`, so a resume
with another recipe is refused as for any run) and `sub_runs.json` (the
categories and their directories). A sweep executor may also start the
sub-runs itself: each is `--workdir=<workdir>/<category>` with
`--config.input.categories='("<category>",)'`; the parent's `--mode=eval`
then only merges the reports.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Optional

import ml_collections

from maskjax import fileio
from maskjax.errors import WorkdirError

SUB_RUNS = "sub_runs.json"


def is_per_category(config) -> bool:
  return str(config.train.protocol) == "per_category"


def sub_config(config, category: str) -> ml_collections.ConfigDict:
  """The parent config restricted to one category (the sub-run's config)."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.input.categories = (category,)
  return c


def sub_workdir(workdir: str, category: str) -> str:
  """`<workdir>/<category>`; "mvtec/bottle" -> `<workdir>/mvtec/bottle`."""
  return os.path.join(workdir, *category.split("/"))


def read_sub_runs(workdir: str) -> Optional[list[str]]:
  """The categories of a per-category parent directory, or None (not one)."""
  path = os.path.join(workdir, SUB_RUNS)
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      return list(json.load(f)["categories"])
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise WorkdirError(f"{path} is not a readable list of sub-runs ({type(e).__name__}: {e})") \
        from e


def write_sub_runs(workdir: str, categories: list[str]) -> None:
  fileio.write_json(os.path.join(workdir, SUB_RUNS), {
      "protocol": "per_category", "categories": list(categories),
      "workdirs": {c: os.path.relpath(sub_workdir(workdir, c), workdir) for c in categories}})


def refuse_single_model_use(workdir: str, what: str) -> None:
  """A per-category parent holds no model: name the sub-runs that do."""
  cats = read_sub_runs(workdir)
  if cats:
    raise WorkdirError(
        f"--workdir={workdir} holds one model per category ({len(cats)} sub-runs); {what} "
        f"one of them, e.g. --workdir={sub_workdir(workdir, cats[0])} (categories: "
        + ", ".join(cats) + ")")


def run_all(config, workdir: str, categories: list[str], run_one: Callable, *,
            mode: str, output_dir: Optional[str]) -> dict:
  """`run_one(sub_config, sub_workdir, sub_output_dir)` per category, then
  the merged report. Returns {"per_category_runs": {...}, "report_json", ...}."""
  runs = {}
  for i, cat in enumerate(categories):
    from maskjax import logging_utils
    logging_utils.info("per-category protocol: category %d of %d: %s", i + 1, len(categories),
                       cat)
    sub_out = sub_workdir(output_dir, cat) if output_dir else None
    runs[cat] = run_one(sub_config(config, cat), sub_workdir(workdir, cat), sub_out)
  results: dict = {"workdir": workdir, "mode": mode,
                   "per_category_runs": {c: r.get("report_json") for c, r in runs.items()}}
  reports = {c: r.get("report_json") for c, r in runs.items()}
  if all(reports.values()):
    results.update(merge_reports(config, reports, output_dir or os.path.join(workdir, "eval")))
  return results


def merge_reports(config, reports: dict[str, str], out_dir: str) -> dict:
  """One results.json / results.md over the sub-runs' reports."""
  from maskjax import data_info as data_info_lib
  from maskjax.eval import metrics as metrics_lib
  from maskjax.eval import report
  per_category, base, facts, trained, thresholds, timings = {}, {}, {}, {}, {}, {}
  device = None
  for cat, path in reports.items():
    with open(path, encoding="utf-8") as f:
      r = json.load(f)
    per_category.update(r["per_category"])
    if r.get("baseline"):
      base.update(r["baseline"]["per_category"])
    info = r.get("run_info") or {}
    for k, v in (info.get("describe") or {}).items():
      facts.setdefault(k, set()).add(str(v))
    for stage, v in (info.get("stages_trained") or {}).items():
      trained[f"{cat}/{stage}"] = v
    thresholds[cat] = info.get("threshold")
    for k, v in (r.get("timings") or {}).items():
      if isinstance(v, (int, float)):
        timings[k] = timings.get(k, 0.0) + v
    device = device or r.get("device")
  run_info = {
      "config": json.loads(config.to_json()), "timings": timings, "device": device,
      "describe": dict({"protocol": f"one model per category ({len(reports)} sub-runs)"},
                       **{k: "; ".join(sorted(v)) for k, v in facts.items()}),
      "stages_trained": trained, "sub_runs": dict(reports),
      "per_category_threshold": thresholds}
  json_path, md_path = report.write_reports(
      out_dir, method=str(config.method.name), dataset=data_info_lib.dataset_name(config),
      per_category=per_category, run_info=run_info, baseline=base or None)
  mean = {k: v["mean"] for k, v in metrics_lib.mean_over_categories(per_category).items()}
  print(f"report (all {len(reports)} categories): {md_path}")
  return {"report_json": str(json_path), "report_md": str(md_path), "mean": mean,
          "per_category": per_category}
