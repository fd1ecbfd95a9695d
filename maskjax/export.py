r"""Export a trained run as a self-contained detector (StableHLO via `jax.export`).

  python -m maskjax.export --workdir DIR --out OUT [--platforms cpu,cuda]

The artifact computes, for a batch of prepared images (float32 [B, S, S, 3]
in [0, 1], S = the run's input size) and their category ids (-1 = unknown):
the method's `score` (image score and anomaly map) with the trained state,
then the calibrated per-category (or global) threshold: the normalised score
(s - min) / (threshold - min) and the decision s > threshold. The batch
dimension is symbolic when the method's score lowers that way, otherwise it
is the run's `input.eval_batch_size` and the loader pads. Before writing, the
exported function is run on random images and compared with the live score;
the largest differences are recorded in `detector.json` and an export that
disagrees by more than 1e-5 is refused. A run with `config.input.source_size`
> 0 (ACA's full config: its test scales are resized from the photo at that
side) is refused: the artifact takes one image.

`maskjax.Detector.load_exported(OUT)` (`maskjax.exported`) runs the artifact
with jax and numpy alone; see that module for the files written.
"""
from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from maskjax import exported as exported_lib
from maskjax import fileio
from maskjax.errors import CheckpointError, ConfigError, UserError

PARITY_TOLERANCE = 1e-5


def _threshold_tables(stats: dict, categories: list[str]):
  """[C + 1] rows (one per category, the global one last) of float32 tables
  that reproduce `maskjax.eval.threshold` on float32 scores:
    thr   the largest float32 <= the threshold, so `score > thr` is exactly the
          float64 decision `score > threshold` for every float32 score;
    mn    the validation minimum (a float32 score already, exact);
    span  threshold - min computed in float64, then rounded: rounding the
          threshold first would cost up to 3e-8 / span of the normalised score."""
  from maskjax.eval import threshold
  rows = [threshold.for_category(stats, c)[0] for c in categories] + [stats]
  thr64 = np.asarray([float(r["threshold"]) for r in rows], np.float64)
  mn64 = np.asarray([float(r["min"]) for r in rows], np.float64)
  thr = thr64.astype(np.float32)
  thr = np.where(thr.astype(np.float64) > thr64, np.nextafter(thr, np.float32(-np.inf)), thr)
  span = thr64 - mn64
  span = np.where(span > 0, span, np.maximum(np.abs(thr64), 1.0) * 1e-12)
  return thr, mn64.astype(np.float32), span.astype(np.float32)


def serving_function(method, treedef, key_leaves, calibration, stats, categories):
  """(weights, image, category_id) -> outputs; the function that is exported."""
  thr, mn, span = _threshold_tables(stats, categories)
  n_cat = len(categories)

  def serve(weights, image, category_id):
    leaves = [jax.random.wrap_key_data(w, impl=key_leaves[i]) if i in key_leaves else w
              for i, w in enumerate(weights)]
    state = jax.tree.unflatten(treedef, leaves)
    b = image.shape[0]
    batch = {"image": image, "mask": jnp.zeros(image.shape[:3], jnp.float32),
             "label": jnp.zeros((b,), jnp.int32),
             "category_id": jnp.maximum(category_id, 0).astype(jnp.int32),
             "valid": jnp.ones((b,), jnp.bool_), "index": jnp.arange(b, dtype=jnp.int32)}
    out = method.score(state, batch, calibration)
    score = out["image_score"].astype(jnp.float32)
    row = jnp.where((category_id < 0) | (category_id >= n_cat), n_cat, category_id)
    return {"image_score": score, "anomaly_map": out["anomaly_map"].astype(jnp.float32),
            "normalized_score": (score - jnp.asarray(mn)[row]) / jnp.asarray(span)[row],
            "decision": score > jnp.asarray(thr)[row]}
  return serve


def _flatten_state(state):
  leaves, treedef = jax.tree.flatten(state)
  weights, key_leaves = [], {}
  for i, leaf in enumerate(leaves):
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      key_leaves[i] = jax.random.key_impl(leaf)
      leaf = jax.random.key_data(leaf)
    weights.append(np.asarray(jax.device_get(leaf)))
  return weights, treedef, key_leaves


def export_run(workdir: str, out_dir: str, *, config=None,
               platforms: tuple[str, ...] = ("cpu", "cuda")) -> dict:
  """Write the export of the trained run in `workdir` to `out_dir`; returns its meta."""
  from jax import export as jax_export

  from maskjax import mesh as mesh_lib
  from maskjax import evaluate as evaluate_lib
  from maskjax import train
  from maskjax import workdir as workdir_lib
  from maskjax import data_info
  from maskjax.methods import build_method
  from maskjax import per_category
  workdir = os.path.abspath(workdir)
  per_category.refuse_single_model_use(workdir, "export")
  config = config if config is not None else workdir_lib.load_run_config(workdir)
  source = int(config.input.source_size)
  if source:
    raise ConfigError(f"config.input.source_size={source}: the run's score also reads each image "
                      f"at {source} px (image_source) and the exported detector takes one image "
                      "at input.image_size; export is not supported for such runs (use "
                      "maskjax.Detector.load or --mode=predict)")
  fileio.ensure_writable_dir(out_dir, "--out")
  method = build_method(config, data_info.for_workdir(config, workdir))
  method.workdir = workdir
  mesh = mesh_lib.make_mesh(config.mesh)
  state = train.restore_final_state(config, workdir, method, mesh)
  calibration, stats = evaluate_lib.load_calibration(workdir)
  calibration = evaluate_lib.calibration_args(calibration)
  categories = list(stats.get("categories") or config.input.categories)
  weights, treedef, key_leaves = _flatten_state(state)
  serve = serving_function(method, treedef, key_leaves, calibration, stats, categories)
  size = int(config.input.image_size)
  w_specs = [jax.ShapeDtypeStruct(w.shape, w.dtype) for w in weights]

  def lower(batch):
    specs = (w_specs, jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32),
             jax.ShapeDtypeStruct((batch,), jnp.int32))
    return jax_export.export(jax.jit(serve), platforms=platforms)(*specs)

  batch_size = None
  try:
    b, = jax_export.symbolic_shape("b")
    exp = lower(b)
  except Exception as e:  # noqa: BLE001 - some scores need a static batch
    batch_size = int(config.input.eval_batch_size)
    logging.info("export: the score of %s needs a static batch (%s: %s); batch %d",
                 config.method.name, type(e).__name__, str(e).splitlines()[0][:200], batch_size)
    exp = lower(batch_size)
  parity = _check_parity(exp, weights, serve, method, state, calibration, size,
                         batch_size or 2, len(categories))
  if max(parity.values()) > PARITY_TOLERANCE:
    raise CheckpointError(f"the exported {config.method.name} detector disagrees with the live "
                          f"score by {max(parity.values()):.3g} (> {PARITY_TOLERANCE}): {parity}")
  meta = {"format": "maskjax.export/1", "method": config.method.name,
          "image_size": size, "channels": 3, "layout": "NHWC",
          "input": "float32 RGB in [0, 1]; resize to image_size x image_size with PIL bilinear "
                   "(8-bit values / 255), as training read its images",
          "normalisation": "inside the model (the method's own, e.g. ImageNet mean/std for ViTs)",
          "batch_size": batch_size, "platforms": list(platforms), "categories": categories,
          "threshold": {"quantile": stats.get("quantile"), "global": float(stats["threshold"]),
                        "global_min": float(stats["min"]),
                        "per_category": {c: {"threshold": float(v["threshold"]),
                                             "min": float(v["min"])}
                                         for c, v in (stats.get("per_category") or {}).items()}},
          "outputs": ["image_score", "anomaly_map", "normalized_score", "decision"],
          "parity_max_abs_diff": parity, "workdir": workdir,
          "jax_version": jax.__version__}
  os.makedirs(out_dir, exist_ok=True)
  with fileio.atomic_open(os.path.join(out_dir, exported_lib.ARTIFACT), "wb") as f:
    f.write(exp.serialize())
  with fileio.atomic_open(os.path.join(out_dir, exported_lib.WEIGHTS), "wb") as f:
    np.savez(f, **{f"leaf_{i}": w for i, w in enumerate(weights)})
  fileio.write_json(os.path.join(out_dir, exported_lib.META), meta)
  return meta


def _check_parity(exp, weights, serve, method, state, calibration, size, n, n_cat) -> dict:
  """Largest |exported - live| per output on random images (any input will do:
  the two must compute the same function)."""
  rng = np.random.default_rng(0)
  image = rng.uniform(0, 1, (n, size, size, 3)).astype(np.float32)
  cats = (np.arange(n) % max(n_cat, 1)).astype(np.int32)
  got = exp.call(weights, image, cats)
  batch = {"image": image, "mask": np.zeros((n, size, size), np.float32),
           "label": np.zeros((n,), np.int32), "category_id": cats,
           "valid": np.ones((n,), bool), "index": np.arange(n, dtype=np.int32)}
  live = jax.jit(method.score)(state, batch, calibration)
  return {k: float(np.max(np.abs(np.asarray(got[k], np.float64) -
                                 np.asarray(live[k], np.float64))))
          for k in ("image_score", "anomaly_map")}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m maskjax.export", description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True, help="a trained and evaluated run")
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--platforms", default="cpu,cuda",
                 help="comma-separated jax.export platforms (cpu, cuda, rocm, tpu)")
  a = p.parse_args(argv)
  try:
    meta = export_run(a.workdir, a.out, platforms=tuple(x for x in a.platforms.split(",") if x))
  except UserError as e:
    print(f"maskjax: error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2
  batch = "any" if meta["batch_size"] is None else meta["batch_size"]
  print(f"exported {meta['method']} to {os.path.abspath(a.out)} (input {meta['image_size']}px, "
        f"batch {batch}, {', '.join(meta['platforms'])}; parity with the live score "
        f"{max(meta['parity_max_abs_diff'].values()):.2g})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
