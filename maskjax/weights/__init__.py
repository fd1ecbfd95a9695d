"""Pretrained weights: converted checkpoints on disk and loading them into NNX modules.

A converted checkpoint (written by `python -m maskjax.weights.convert`) is a
directory:

  OUT_DIR/params/               Orbax checkpoint of the nested pure dict of the
                                module's weights (`nnx.Param` and
                                `heads.FrozenParam` variables; list indices as
                                strings "0", "1", ...; fixed sin-cos tables are
                                not stored, they are recomputed)
  OUT_DIR/maskjax_weights.json  {"format", "kind" (vit | mae | dino_head), "arch",
                                 "config" (constructor kwargs), "source",
                                 "source_sha256", "notes"}

Keys are compared as dotted paths ("blocks.3.attn.qkv.kernel"). Loading fails
with `maskjax.errors.CheckpointError` listing missing, unexpected and
shape-mismatched keys. Every Orbax import of the model-weights path lives in
this package.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Iterable, Mapping

import jax
import numpy as np
from flax import nnx

from maskjax.errors import CheckpointError
from maskjax.models import heads as heads_lib

META_FILE = "maskjax_weights.json"
PARAMS_DIR = "params"
FORMAT = "maskjax_weights/1"

# Variable types that make up a module's weights (saved, converted, loaded).
WEIGHT_FILTER = nnx.Any(nnx.Param, heads_lib.FrozenParam)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------
# flat <-> nested
# ----------------------------------------------------------------------------
def flatten(tree: Mapping[Any, Any], prefix: str = "") -> dict[str, Any]:
  """Nested dict -> {"a.b.0.c": leaf}. Keys are stringified."""
  out: dict[str, Any] = {}
  for k, v in tree.items():
    name = f"{prefix}.{k}" if prefix else str(k)
    if isinstance(v, Mapping):
      out.update(flatten(v, name))
    else:
      out[name] = v
  return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """{"a.b.0.c": leaf} -> nested dict with string keys."""
  out: dict[str, Any] = {}
  for name, v in flat.items():
    node = out
    parts = name.split(".")
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    node[parts[-1]] = v
  return out


def module_weights(module: nnx.Module) -> dict[str, Any]:
  """The module's weights as a nested pure dict (int keys for lists)."""
  return nnx.state(module, WEIGHT_FILTER).to_pure_dict()


def weight_shapes(module: nnx.Module) -> dict[str, tuple[int, ...]]:
  """Flat {dotted key: shape} of a module's weights (works on nnx.eval_shape modules)."""
  return {k: tuple(v.shape) for k, v in flatten(module_weights(module)).items()}


def compare_keys(expected: Mapping[str, tuple[int, ...]], got: Mapping[str, tuple[int, ...]]
                 ) -> tuple[list[str], list[str], list[tuple[str, tuple, tuple]]]:
  """(missing, unexpected, mismatched [(key, expected shape, got shape)])."""
  missing = sorted(set(expected) - set(got))
  unexpected = sorted(set(got) - set(expected))
  mismatched = [(k, tuple(expected[k]), tuple(got[k])) for k in sorted(set(expected) & set(got))
                if tuple(expected[k]) != tuple(got[k])]
  return missing, unexpected, mismatched


def _short(keys: list, limit: int = 40) -> str:
  s = ", ".join(str(k) for k in keys[:limit])
  return s + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def mismatch_message(where: str, missing, unexpected, mismatched, hint: str = "") -> str:
  parts = [f"{where} does not match the architecture:"]
  if missing:
    parts.append(f"missing keys ({len(missing)}): {_short(missing)}")
  if unexpected:
    parts.append(f"unexpected keys ({len(unexpected)}): {_short(unexpected)}")
  if mismatched:
    parts.append(f"shape mismatches ({len(mismatched)}): " + _short(
        [f"{k} expected {e} got {g}" for k, e, g in mismatched]))
  if hint:
    parts.append(hint)
  return "; ".join(parts)


# ----------------------------------------------------------------------------
# disk
# ----------------------------------------------------------------------------
def save(out_dir: str, flat: Mapping[str, np.ndarray], meta: Mapping[str, Any],
         overwrite: bool = False) -> str:
  """Writes OUT_DIR/params (Orbax) and OUT_DIR/maskjax_weights.json; returns out_dir."""
  import orbax.checkpoint as ocp

  out_dir = os.path.abspath(out_dir)
  params_dir = os.path.join(out_dir, PARAMS_DIR)
  if os.path.exists(params_dir) and not overwrite:
    raise CheckpointError(f"{params_dir} already exists; choose another OUT_DIR or pass "
                          f"--overwrite")
  os.makedirs(out_dir, exist_ok=True)
  tree = unflatten({k: np.asarray(v, np.float32) for k, v in flat.items()})
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(params_dir, tree, force=overwrite)
  ckptr.wait_until_finished()
  with open(os.path.join(out_dir, META_FILE), "w") as f:
    json.dump(dict(meta, format=FORMAT), f, indent=2, sort_keys=True)
  return out_dir


def read_meta(path: str) -> dict[str, Any]:
  """The maskjax_weights.json of a converted checkpoint directory."""
  meta_path = os.path.join(path, META_FILE)
  if not os.path.isfile(meta_path):
    raise CheckpointError(
        f"{path} is not a converted maskjax checkpoint (no {META_FILE}); convert a PyTorch "
        f".pth first: python -m maskjax.weights.convert IN.pth OUT_DIR --arch NAME")
  try:
    with open(meta_path, encoding="utf-8") as f:
      meta = json.load(f)
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{meta_path} is not readable JSON ({type(e).__name__}: {e}); "
                          "convert the checkpoint again") from e
  if not isinstance(meta, dict):
    raise CheckpointError(f"{meta_path}: expected a JSON object, got {type(meta).__name__}; "
                          "convert the checkpoint again")
  return meta


def read(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """(flat {dotted key: float32 numpy array}, meta) of a converted checkpoint."""
  import orbax.checkpoint as ocp

  path = os.path.abspath(path)
  meta = read_meta(path)
  params_dir = os.path.join(path, PARAMS_DIR)
  if not os.path.isdir(params_dir):
    raise CheckpointError(f"{path}: missing {PARAMS_DIR}/ (the Orbax parameter checkpoint)")
  try:
    tree = ocp.StandardCheckpointer().restore(params_dir)
  except Exception as e:  # noqa: BLE001 -- re-raised as a user error naming the file
    raise CheckpointError(f"cannot read the Orbax checkpoint {params_dir}: {e}") from e
  return {k: np.asarray(v) for k, v in flatten(tree).items()}, meta


# ----------------------------------------------------------------------------
# loading into modules
# ----------------------------------------------------------------------------
def _allowed(key: str, allow_missing: bool | Iterable[str]) -> bool:
  if allow_missing is True:
    return True
  if not allow_missing:
    return False
  return any(key == p or key.startswith(p + ".") for p in allow_missing)


def load_into(module: nnx.Module, path: str, *, prefix: str | None = None,
              allow_missing: bool | Iterable[str] = False) -> dict[str, Any]:
  """Restores a converted checkpoint into `module` (in place).

  prefix: where the checkpoint's keys sit in the module (e.g. "encoder" to put
  an encoder-only MAE checkpoint into a `mae.MAE`); module weights outside the
  prefix are left as they are and reported in "left_at_init".
  allow_missing: True, or key prefixes (e.g. ["decoder_blocks"]), of module
  weights that may be absent from the checkpoint (left at init, reported).
  Unexpected keys and shape mismatches always fail.

  Returns {"path", "arch", "loaded": n, "left_at_init": [keys]}; raises
  CheckpointError listing missing / unexpected / mismatched keys.
  """
  flat, meta = read(path)
  if prefix:
    flat = {f"{prefix}.{k}": v for k, v in flat.items()}
  current = flatten(module_weights(module))
  expected = {k: tuple(v.shape) for k, v in current.items()}
  in_scope = {k: s for k, s in expected.items()
              if not prefix or k.startswith(prefix + ".")}
  got = {k: tuple(v.shape) for k, v in flat.items()}
  missing, unexpected, mismatched = compare_keys(in_scope, got)
  hard_missing = [k for k in missing if not _allowed(k, allow_missing)]
  if hard_missing or unexpected or mismatched:
    hint = (f"the checkpoint was converted as --arch {meta.get('arch')} "
            f"({meta.get('kind')}, config {meta.get('config')})")
    if hard_missing and meta.get("kind") == "vit" and any(
        k.startswith("encoder.") for k in hard_missing):
      hint += "; an encoder-only checkpoint goes into an MAE with prefix='encoder'"
    raise CheckpointError(mismatch_message(f"checkpoint {path}", hard_missing, unexpected,
                                           mismatched, hint))
  left = sorted((set(expected) - set(in_scope)) | set(missing))
  new = {}
  for k, v in current.items():
    new[k] = jax.numpy.asarray(flat[k], dtype=v.dtype) if k in flat else v
  pure = _nest_like(module_weights(module), new)
  state = nnx.state(module, WEIGHT_FILTER)
  nnx.replace_by_pure_dict(state, pure)
  nnx.update(module, state)
  return {"path": path, "arch": meta.get("arch"), "loaded": len(flat), "left_at_init": left}


def _nest_like(template: Mapping[Any, Any], flat: Mapping[str, Any], prefix: str = "") -> dict:
  out = {}
  for k, v in template.items():
    name = f"{prefix}.{k}" if prefix else str(k)
    out[k] = _nest_like(v, flat, name) if isinstance(v, Mapping) else flat[name]
  return out


def init_from_or_random(module: nnx.Module, init_from: str, *, what: str = "backbone",
                        **kwargs) -> str:
  """Loads `config.model.init_from` if set, else keeps the random init.

  Returns a one-line description for the run's log and report, e.g.
  "backbone: pretrained weights from /ckpt (arch vit_small_patch8)" or
  "backbone: random init (config.model.init_from is empty; no pretrained weights)".
  Logs the same line."""
  if not init_from:
    msg = f"{what}: random init (config.model.init_from is empty; no pretrained weights)"
  else:
    rep = load_into(module, init_from, **kwargs)
    msg = f"{what}: pretrained weights from {init_from} (arch {rep['arch']})"
    if rep["left_at_init"]:
      msg += f"; {len(rep['left_at_init'])} weights left at init: {_short(rep['left_at_init'], 8)}"
  log.info(msg)
  return msg


def build(path: str, *, rngs: nnx.Rngs | None = None, **overrides) -> nnx.Module:
  """Builds the module a converted checkpoint describes and loads it.

  overrides: constructor kwargs to change (dtype=jnp.bfloat16, img_size=...)."""
  from maskjax.weights import convert

  meta = read_meta(path)
  module = convert.build_module(meta["kind"], dict(meta["config"], **overrides),
                                rngs or nnx.Rngs(0))
  load_into(module, path)
  return module


# ----------------------------------------------------------------------------
# loading into parameter trees (inside a jitted init)
# ----------------------------------------------------------------------------
def load_params(params: Mapping[Any, Any], path: str, *, where: str, prefix: str = "",
                optional: Iterable[str] = (), checkpoint=None) -> dict[str, Any]:
  """`params` (a nested pure dict; abstract under `jax.jit`) with the tensors of
  the converted checkpoint `path` put in, read on the host through
  `jax.pure_callback` so that a method's init stays one jitted function.

  The one loader of pretrained weights for the methods (ACA's ViT, MALA's MAE,
  EAR's saliency ViT). prefix: where the checkpoint's keys sit in `params`
  (an encoder-only checkpoint into an MAE: "encoder"). optional: key
  prefixes of `params` that the checkpoint may lack (they keep their value,
  logged). Unexpected keys, shape mismatches and other missing keys raise a
  CheckpointError starting with `where`. checkpoint: `read(path)` when the
  caller has it already (a ViT-L checkpoint is read once, not per check).
  """
  flat, meta = checkpoint if checkpoint is not None else read(path)
  if prefix:
    flat = {f"{prefix}.{k}": v for k, v in flat.items()}
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  names = [".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in p) for p, _ in leaves]
  ours = {n: tuple(v.shape) for n, (_, v) in zip(names, leaves)}
  missing, unexpected, mismatched = compare_keys(ours, {k: v.shape for k, v in flat.items()})
  hard = [k for k in missing if not _allowed(k, list(optional))]
  if hard or unexpected or mismatched:
    raise CheckpointError(mismatch_message(
        f"{where}: checkpoint {path}", hard, unexpected, mismatched,
        f"the checkpoint was converted as --arch {meta.get('arch')} ({meta.get('kind')})"))
  if missing:
    log.info("%s: %d tensors are not in %s and keep their initial values (%s, ...)", where,
             len(missing), path, ", ".join(missing[:3]))
  wanted = tuple(n for n in names if n in flat)
  shapes = tuple(jax.ShapeDtypeStruct(ours[n], jax.numpy.float32) for n in wanted)

  def load():   # the host copy read above (kept with the traced init, as the tensors it fills)
    return tuple(np.asarray(flat[n], np.float32) for n in wanted)

  values = dict(zip(wanted, jax.pure_callback(load, shapes))) if wanted else {}
  return jax.tree_util.tree_unflatten(
      treedef, [values.get(n, v) for n, (_, v) in zip(names, leaves)])
