"""Published per-category numbers of the papers maskjax reproduces.

Data: ``maskjax/eval/published/<method>.json``, transcribed from the papers
(``shared/papers``). Each file holds

  method, paper, source, unit ("percent"), default_variant, tables: [
    {id, table, dataset ("mvtec" | "visa"), metric (a `maskjax.eval.metrics`
     name), variant, setting, values: {category: value}, paper_mean,
     [note], [mean_inconsistent]}]

Values are stored in percent exactly as the paper prints them (EAR prints
fractions; those are stored x100). ``paper_mean`` is the paper's own mean /
average row, kept to catch transcription errors (``mean_inconsistent`` marks
the few columns where the paper's printed mean does not match its own values).
The functions below return **fractions** (percent / 100), like the metrics.

Category names are normalised: lower case, spaces and hyphens to "_", an
optional "<dataset>/" prefix ("mvtec/bottle", "visa/pcb1"), and the
spellings papers use ("Metal Nut", "Pipe fryum", "Chewing gum", "Candles").
"""
from __future__ import annotations

import functools
import json
import os
from typing import Any

_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "published")

MVTEC_CATEGORIES = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather",
                    "metal_nut", "pill", "screw", "tile", "toothbrush", "transistor", "wood",
                    "zipper")
VISA_CATEGORIES = ("candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1",
                   "macaroni2", "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum")
DATASET_CATEGORIES = {"mvtec": MVTEC_CATEGORIES, "visa": VISA_CATEGORIES}

_DATASET_ALIASES = {"mvtec": "mvtec", "mvtec_ad": "mvtec", "mvtecad": "mvtec", "mvtec-ad": "mvtec",
                    "visa": "visa"}
_CATEGORY_ALIASES = {"metalnut": "metal_nut", "pipefryum": "pipe_fryum",
                     "chewing_gum": "chewinggum", "candles": "candle"}


def methods() -> list[str]:
  """Methods with published tables (file stems)."""
  return sorted(f[:-5] for f in os.listdir(_DIR) if f.endswith(".json"))


@functools.lru_cache(maxsize=None)
def _load(method: str) -> dict:
  path = os.path.join(_DIR, f"{method}.json")
  if not os.path.exists(path):
    raise KeyError(f"no published numbers for method {method!r} (no {path}); "
                   f"known: {', '.join(methods())}")
  with open(path) as f:
    return json.load(f)


def load(method: str) -> dict:
  """The raw stored file of ``method`` (values in percent)."""
  return json.loads(json.dumps(_load(method)))  # a copy callers may change


def normalize_dataset(name: str) -> str:
  key = name.strip().lower().replace(" ", "_")
  if key not in _DATASET_ALIASES:
    raise KeyError(f"unknown dataset {name!r}; known: mvtec, visa")
  return _DATASET_ALIASES[key]


def normalize_category(name: str, dataset: str | None = None) -> tuple[str | None, str]:
  """(dataset or None, category) from names like "mvtec/Metal Nut" or "pcb1".

  Without a prefix or ``dataset``, the dataset is inferred from the category
  (MVTec AD and VisA names do not overlap); None when it is neither.
  """
  ds = normalize_dataset(dataset) if dataset else None
  if "/" in name:
    prefix, name = name.split("/", 1)
    try:
      ds = normalize_dataset(prefix)
    except KeyError:
      pass
  cat = name.strip().lower().replace("-", "_").replace(" ", "_")
  cat = _CATEGORY_ALIASES.get(cat, cat)
  if ds is None:
    ds = next((d for d, cats in DATASET_CATEGORIES.items() if cat in cats), None)
  return ds, cat


def variants(method: str) -> list[str]:
  d = _load(method)
  return sorted({t["variant"] for t in d["tables"]})


def _tables(method: str, dataset: str, variant: str | None) -> list[dict]:
  d = _load(method)
  variant = variant or d["default_variant"]
  if variant not in variants(method):
    raise KeyError(f"method {method!r} has no published variant {variant!r}; "
                   f"known: {', '.join(variants(method))}")
  ds = normalize_dataset(dataset)
  return [t for t in d["tables"] if t["dataset"] == ds and t["variant"] == variant]


def table(method: str, dataset: str, variant: str | None = None) -> dict[str, dict[str, float]]:
  """{category: {metric: fraction}} of ``method`` on ``dataset`` ({} when none published)."""
  out: dict[str, dict[str, float]] = {}
  for t in _tables(method, dataset, variant):
    for cat, v in t["values"].items():
      out.setdefault(cat, {})[t["metric"]] = v / 100.0
  return out


def paper_means(method: str, dataset: str, variant: str | None = None) -> dict[str, float]:
  """{metric: the paper's printed mean, as a fraction}."""
  return {t["metric"]: t["paper_mean"] / 100.0 for t in _tables(method, dataset, variant)}


def sources(method: str, dataset: str, variant: str | None = None) -> dict[str, str]:
  """{metric: "Table II"} for the report's caption."""
  return {t["metric"]: t["table"] for t in _tables(method, dataset, variant)}


def lookup(method: str, category: str, dataset: str | None = None,
           variant: str | None = None) -> dict[str, float]:
  """{metric: fraction} for one category (``{}`` when the paper does not report it)."""
  try:
    _load(method)
  except KeyError:
    return {}
  ds, cat = normalize_category(category, dataset)
  if ds is None:
    return {}
  return table(method, ds, variant).get(cat, {})


def citation(method: str) -> dict[str, Any]:
  d = _load(method)
  return {"paper": d["paper"], "source": d["source"], "default_variant": d["default_variant"]}
