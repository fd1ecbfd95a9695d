r"""EAR's mosaic-scale estimator (paper section 3.4), refittable.

  python -m maskjax.methods.ear.fit_mosaic --config=configs/ear.py[:variant] \
      --workdir=DIR [--config.key=value ...]

For every configured category: r10 = mean over its training normals (at most
`config.method.fit_max_images`, 0 = all) of the per-image mean of the top 10%
of the Hessian edge response r = Tr(H)^2 / Det(H) (`maskjax.ops.mosaic.
hessian_edge_response` on the gray = channel-mean image in [0, 1], at
`config.input.image_size`) inside the saliency region S (the run's own
saliency source and threshold; the whole image when use_attention is False).

Fit: categories that are in the paper's Table 1 (when config.method.mosaic_table) (`mosaic_table.json`, MVTec AD
names) give (r10, m*) pairs; a least-squares line m* = a r10 + b is fitted per
group ("object", "texture", as the paper does) when the group has >= 2 pairs,
and over all pairs ("all") when there are >= 2. Without pairs (e.g. the demo
data), the line comes from `config.method.fit_from` (an earlier mosaic.json)
when given; otherwise no estimate is made and the run uses Table 1 / the
fallback (the file says so).

Estimate: m_hat = 2^round(log2(f(r10))), at least 2 (also when f(r10) <= 0, as
for 'wood' in the paper), at most the image size. A category uses its group's
line (table categories: their group; others: `config.method.category_groups`
{name: "object"|"texture"} when given), else the "all" line.

Output: `<workdir>/mosaic.json`
  {"image_size", "saliency", "fraction": 0.1,
   "fit": {group: {"slope", "intercept", "categories": [...]}} (may be empty),
   "fit_source": "data" | path of fit_from | null,
   "categories": {name: {"r10", "n_images", "group", "m_star" (table or null),
                         "m_hat" (estimate or null)}}}
which the EAR method reads (config.method.mosaic = "estimated", or for
categories missing from Table 1). Note: r10 depends on resolution and
preprocessing, so a fit only transfers between runs with the same image size.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Mapping, Optional

import numpy as np

from maskjax.methods.ear import core

FRACTION = 0.1


def fit_groups(r10: Mapping[str, float], table: Optional[Mapping] = None,
               use_table: bool = True) -> dict:
  """{group: {"slope", "intercept", "categories"}} from the categories of `r10`
  that are in Table 1 (per group with >= 2 pairs, and "all" with >= 2)."""
  table = table if table is not None else core.load_table()
  pairs = [(c, float(v), table["categories"][core.base_name(c)])
           for c, v in sorted(r10.items()) if use_table and core.in_table(c, table)]
  out = {}
  groups = {"all": pairs}
  for c, v, row in pairs:
    groups.setdefault(row["group"], []).append((c, v, row))
  for g, ps in groups.items():
    rs = [v for _, v, _ in ps]
    if len(ps) >= 2 and np.ptp(rs) > 0:
      slope, icpt = core.fit_line(rs, [row["m_star"] for _, _, row in ps])
      out[g] = {"slope": slope, "intercept": icpt, "categories": [c for c, _, _ in ps]}
  return out


def estimate(r10: Mapping[str, float], fits: Mapping[str, Mapping], *, cap: Optional[int] = None,
             groups: Optional[Mapping[str, str]] = None, table: Optional[Mapping] = None,
             use_table: bool = True) -> dict:
  """{category: {"group", "m_star", "m_hat"}}; m_hat None when no line applies."""
  table = table if table is not None else core.load_table()
  groups = dict(groups or {})
  out = {}
  for c, v in sorted(r10.items()):
    row = (table["categories"][core.base_name(c)] if use_table and core.in_table(c, table)
           else None)
    g = row["group"] if row else groups.get(c, "all")
    line = fits.get(g) or fits.get("all")
    m_hat = None
    if line is not None:
      m_hat = core.quantise_pow2(line["slope"] * float(v) + line["intercept"], 2, cap)
    out[c] = {"group": g, "m_star": row["m_star"] if row else None, "m_hat": m_hat}
  return out


def compute_r10(method, config, splits, data) -> dict:
  """{category: (r10, n_images)} from the training normals (see module doc);
  `data` is the loop's data access (`maskjax.data_access.DataAPI`)."""
  import jax
  import jax.numpy as jnp
  from maskjax.ops import mosaic as mosaic_ops

  state = method.saliency_state(jax.random.PRNGKey(int(config.seed)))

  @jax.jit
  def r10_fn(st, x):
    s = method.saliency_mask(st, x)
    r = mosaic_ops.hessian_edge_response(jnp.mean(x, axis=-1))
    return mosaic_ops.top_fraction_mean(r, s, FRACTION)

  limit = int(config.method.fit_max_images)
  bs = int(config.input.eval_batch_size)
  out = {}
  for c in splits.categories:
    recs = [r for r in splits.train if r.category == c]
    if limit > 0:
      recs = recs[:limit]
    vals = []
    for b in data.eval_batches(config.input, recs, global_batch_size=bs):
      valid = np.asarray(b["valid"], bool)
      vals.append(np.asarray(r10_fn(state, jnp.asarray(b["image"], jnp.float32)))[valid])
    out[c] = (float(np.mean(np.concatenate(vals))), len(recs))
  return out


def run(config, workdir: str) -> dict:
  """Compute r10, fit (or load a fit), estimate, write `<workdir>/mosaic.json`."""
  from maskjax.errors import ConfigError
  from maskjax import data_access, data_info
  from maskjax.methods import build_method
  data = data_access.DataAPI()
  splits = data.load_splits(config.input, int(config.seed))
  method = build_method(config, data_info.from_splits(splits, config))
  r10n = compute_r10(method, config, splits, data)
  r10 = {c: v for c, (v, _) in r10n.items()}
  use_table = bool(config.method.mosaic_table)
  fits = fit_groups(r10, use_table=use_table)
  fit_source = "data" if fits else None
  fit_from = str(config.method.fit_from)
  if not fits and fit_from:
    try:
      with open(fit_from) as f:
        fits = json.load(f)["fit"]
    except (OSError, ValueError, KeyError) as e:
      raise ConfigError(f"config.method.fit_from: cannot read a fit from {fit_from!r} ({e}); "
                        "expected a mosaic.json written by this command") from None
    fit_source = fit_from
  groups = dict(config.method.category_groups)
  est = estimate(r10, fits, cap=int(config.input.image_size), groups=groups,
                 use_table=use_table)
  result = {
      "image_size": int(config.input.image_size),
      "saliency": method.describe().get("saliency", ""),
      "fraction": FRACTION,
      "fit": fits,
      "fit_source": fit_source,
      "categories": {c: dict(r10=r10n[c][0], n_images=r10n[c][1], **est[c]) for c in r10n},
  }
  if not fits:
    result["note"] = ("fewer than 2 (r10, m*) pairs (categories in Table 1, "
                      "config.method.mosaic_table) and "
                      "config.method.fit_from is empty; no estimate was made (the run uses "
                      "Table 1 / config.method.mosaic_fallback)")
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "mosaic.json")
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(result, f, indent=2)
  os.replace(tmp, path)
  return result


def main(argv) -> None:
  from absl import flags
  from maskjax.errors import UserError
  del argv
  FLAGS = flags.FLAGS
  if not FLAGS.workdir:
    print("fit_mosaic: error: --workdir is required", file=sys.stderr)
    sys.exit(2)
  try:
    res = run(FLAGS.config, FLAGS.workdir)
  except UserError as e:
    print(f"fit_mosaic: error: {' '.join(str(e).split())}", file=sys.stderr)
    sys.exit(2)
  print(f"{'category':<20} {'r10':>10} {'m*':>5} {'m_hat':>6}")
  for c, v in res["categories"].items():
    print(f"{c:<20} {v['r10']:>10.3f} {str(v['m_star'] or '-'):>5} {str(v['m_hat'] or '-'):>6}")
  for g, line in res["fit"].items():
    print(f"fit[{g}]: m = {line['slope']:.4g} * r10 + {line['intercept']:.4g} "
          f"({len(line['categories'])} categories)")
  if "note" in res:
    print("note:", res["note"])
  print("wrote", os.path.join(FLAGS.workdir, "mosaic.json"))


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "EAR config file, e.g. configs/ear.py:demo")
  flags.DEFINE_string("workdir", None, "run directory; mosaic.json is written there")
  flags.mark_flag_as_required("config")
  app.run(main)
