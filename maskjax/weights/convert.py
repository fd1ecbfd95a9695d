"""Convert official PyTorch checkpoints (DINO, MAE) into maskjax Orbax checkpoints.

  python -m maskjax.weights.convert IN.pth OUT_DIR --arch vit_small_patch8
  python -m maskjax.weights.convert mae_visualize_vit_large.pth OUT --arch mae_vit_large_patch16
  python -m maskjax.weights.convert mae_pretrain_vit_large.pth OUT --arch mae_vit_large_patch16_encoder
  python -m maskjax.weights.convert dino_checkpoint.pth OUT --arch dino_head --which teacher

Architectures (`ARCHS`):
  vit_{tiny,small,base,large}_patch{16,8}  DINO-style ViT, learned pos_embed
      (dino_deitsmall16_pretrain.pth, dino_deitsmall8_pretrain.pth, ...)
  mae_vit_{tiny,base,large}_patch16         MAE encoder + decoder (sin-cos tables)
      (mae_visualize_vit_large.pth)
  mae_vit_{tiny,base,large}_patch16_encoder MAE encoder only, a sin-cos ViT
      (mae_pretrain_vit_large.pth); load it into `mae.MAE` with prefix="encoder"
  dino_head                                 DINO projection head; sizes read from
      the checkpoint's shapes
`--dim/--depth/--heads/--img-size/--decoder-*` override the named sizes
(custom widths; the tests use them for small models).

Reading: `torch.load(IN, map_location="cpu", weights_only=True)` (never a plain
unpickle). Accepted layouts: a raw state dict (DINO releases); {"model": sd}
(MAE releases); {"state_dict": sd}; DINO training checkpoints
{"teacher": sd, "student": sd, ...} (`--which`, default teacher). A leading
"module." is stripped from every key; when keys start with "backbone." /
"head." (DINO's MultiCropWrapper) the backbone part is converted for ViT archs
(head keys are listed as ignored) and the head part for `dino_head`.

Conversion: LayerNorm weight -> scale; Linear weight [out, in] -> kernel
[in, out]; Conv weight [out, in, kh, kw] -> kernel [kh, kw, in, out]; DINO head
`mlp.{0,2,4}` -> `mlp.{0,1,2}`, `last_layer.weight_v` [out, in] -> [in, out],
`weight_g` [out, 1] -> [out] (also `last_layer.parametrizations.weight.
original0/1`). MAE's fixed `pos_embed` / `decoder_pos_embed` are checked
against the sin-cos table (max |diff| <= 1e-4) and not stored. Converted keys
are validated against `nnx.eval_shape` of the architecture; any missing,
unexpected or shape-mismatched key raises `CheckpointError` listing them.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from maskjax.errors import CheckpointError, UserError
from maskjax.models import heads as heads_lib
from maskjax.models import mae as mae_lib
from maskjax.models import vit as vit_lib
from maskjax import weights as W

MAE_DECODER = dict(decoder_dim=512, decoder_depth=8, decoder_heads=16)


def _arch_table() -> dict[str, dict[str, Any]]:
  t: dict[str, dict[str, Any]] = {}
  for name, cfg in vit_lib.VIT_CONFIGS.items():
    t[name] = dict(kind="vit", config=dict(cfg, img_size=224, pos_embed="learned"))
    if cfg["patch"] == 16:
      t["mae_" + name] = dict(kind="mae", config=dict(cfg, img_size=224, pos_embed="sincos",
                                                      **MAE_DECODER))
      t["mae_" + name + "_encoder"] = dict(kind="vit",
                                           config=dict(cfg, img_size=224, pos_embed="sincos"))
  t["dino_head"] = dict(kind="dino_head", config={})
  return t


ARCHS = _arch_table()


# ----------------------------------------------------------------------------
# building modules from a (kind, config)
# ----------------------------------------------------------------------------
def build_module(kind: str, config: Mapping[str, Any], rngs: nnx.Rngs) -> nnx.Module:
  """The NNX module for a converted checkpoint's kind/config (meta json)."""
  cfg = dict(config)
  if isinstance(cfg.get("dtype"), str):
    cfg["dtype"] = jnp.dtype(cfg["dtype"])
  if kind == "vit":
    return vit_lib.ViT(rngs=rngs, **cfg)
  if kind == "mae":
    dec = {k: cfg.pop(k) for k in ("decoder_dim", "decoder_depth", "decoder_heads")}
    enc = vit_lib.ViT(rngs=rngs, **cfg)
    return mae_lib.MAE(enc, **dec, mlp_ratio=cfg.get("mlp_ratio", 4.0), rngs=rngs)
  if kind == "dino_head":
    return heads_lib.DINOHead(rngs=rngs, **cfg)
  raise CheckpointError(f"unknown checkpoint kind {kind!r} (vit, mae, dino_head)")


def expected_shapes(kind: str, config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
  """Flat {key: shape} of the architecture's weights, without computing anything."""
  abstract = nnx.eval_shape(lambda: build_module(kind, config, nnx.Rngs(0)))
  return W.weight_shapes(abstract)


# ----------------------------------------------------------------------------
# reading torch checkpoints
# ----------------------------------------------------------------------------
def load_torch_state_dict(path: str, which: str = "teacher") -> tuple[dict[str, np.ndarray],
                                                                        list[str]]:
  """{key: float32 numpy} of a .pth (weights_only), unwrapped; plus notes."""
  try:
    import torch
  except ImportError as e:
    raise UserError("converting PyTorch checkpoints needs torch: pip install 'maskjax[torch]'"
                    ) from e
  if not os.path.isfile(path):
    raise CheckpointError(f"checkpoint file {path} does not exist")
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # noqa: BLE001 -- re-raised as a user error naming the file
    raise CheckpointError(f"cannot read {path} with torch.load(weights_only=True): {e}") from e
  notes = []
  if not isinstance(obj, Mapping):
    raise CheckpointError(f"{path}: expected a state dict (a mapping), got {type(obj).__name__}")
  if "model" in obj and isinstance(obj["model"], Mapping):
    obj, _ = obj["model"], notes.append("state dict under 'model'")
  elif "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
    obj, _ = obj["state_dict"], notes.append("state dict under 'state_dict'")
  elif "teacher" in obj or "student" in obj:
    if which not in obj:
      raise CheckpointError(f"{path}: no {which!r} entry (has {sorted(obj)}); use --which")
    obj, _ = obj[which], notes.append(f"state dict under {which!r}")
  sd = {}
  for k, v in obj.items():
    if not hasattr(v, "detach"):
      raise CheckpointError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
    key = k[len("module."):] if k.startswith("module.") else k
    if v.is_complex():
      raise CheckpointError(f"{path}: entry {k!r} is a complex tensor ({v.dtype}); "
                            "weights must be real floating point")
    if not v.is_floating_point():
      if key.endswith("num_batches_tracked"):  # BatchNorm's counter, not a weight
        notes.append(f"dropped the counter {key}")
        continue
      raise CheckpointError(f"{path}: entry {k!r} is an integer/bool tensor ({v.dtype}); "
                            "weights must be floating point")
    arr = v.detach().to(torch.float32).cpu().numpy()
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if bad:
      raise CheckpointError(f"{path}: entry {k!r} holds {bad} non-finite value(s) (NaN/Inf) "
                            f"of {arr.size}; the checkpoint is damaged")
    sd[key] = arr
  return sd, notes


def split_wrapper(sd: dict[str, np.ndarray], kind: str) -> tuple[dict[str, np.ndarray], list[str]]:
  """Selects DINO MultiCropWrapper parts ("backbone." / "head.") for the kind."""
  if not any(k.startswith("backbone.") for k in sd):
    return sd, []
  want = "head." if kind == "dino_head" else "backbone."
  out = {k[len(want):]: v for k, v in sd.items() if k.startswith(want)}
  ignored = sorted(k for k in sd if not k.startswith(want))
  return out, ignored


# ----------------------------------------------------------------------------
# name mapping
# ----------------------------------------------------------------------------
def _vit_key(key: str, v: np.ndarray) -> tuple[str, np.ndarray]:
  parts = key.split(".")
  last = parts[-1]
  if last == "weight":
    if v.ndim == 4:
      return ".".join(parts[:-1] + ["kernel"]), v.transpose(2, 3, 1, 0)
    if v.ndim == 2:
      return ".".join(parts[:-1] + ["kernel"]), v.T
    if v.ndim == 1:
      return ".".join(parts[:-1] + ["scale"]), v
  return key, v


def _head_key(key: str, v: np.ndarray) -> tuple[str, np.ndarray]:
  parts = key.split(".")
  if parts[0] == "mlp":
    if parts[1].isdigit():
      if int(parts[1]) % 2:
        return key, v  # a GELU slot has no weights; stays unexpected
      parts[1] = str(int(parts[1]) // 2)
    else:
      parts.insert(1, "0")  # nlayers == 1: a bare Linear
    return _vit_key(".".join(parts), v)
  aliases = {"last_layer.parametrizations.weight.original0": "last_layer.weight_g",
             "last_layer.parametrizations.weight.original1": "last_layer.weight_v"}
  key = aliases.get(key, key)
  if key == "last_layer.weight_g":
    return key, v.reshape(-1)
  if key == "last_layer.weight_v" and v.ndim == 2:
    return key, v.T
  return key, v


def infer_head_config(sd: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """DINOHead sizes from a head state dict's shapes."""
  mapped = dict(_head_key(k, v) for k, v in sd.items())
  mlp = sorted({int(k.split(".")[1]) for k in mapped if k.startswith("mlp.")
                and k.endswith(".kernel")})
  if not mlp or "last_layer.weight_v" not in mapped:
    raise CheckpointError("not a DINO head state dict: need mlp.*.weight and last_layer "
                          f"weights (got keys {sorted(sd)[:10]})")
  first, last = mapped[f"mlp.{mlp[0]}.kernel"], mapped[f"mlp.{mlp[-1]}.kernel"]
  return dict(in_dim=int(first.shape[0]), out_dim=int(mapped["last_layer.weight_v"].shape[1]),
              hidden=int(first.shape[1]) if len(mlp) > 1 else 2048,
              bottleneck=int(last.shape[1]), nlayers=len(mlp))


def torch_to_flat(sd: Mapping[str, np.ndarray], kind: str, config: Mapping[str, Any]
                  ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """Renames/transposes torch tensors to maskjax flat keys.

  Returns (flat, source) where source maps each maskjax key to its torch key.
  Fixed sin-cos tables are checked and dropped (CheckpointError if they differ)."""
  flat: dict[str, np.ndarray] = {}
  source: dict[str, str] = {}
  side = config.get("img_size", 224) // config.get("patch", 16)
  for k, v in sd.items():
    if kind == "dino_head":
      nk, nv = _head_key(k, v)
    else:
      if config.get("pos_embed") == "sincos" and k in ("pos_embed", "decoder_pos_embed"):
        dim = config["dim"] if k == "pos_embed" else config["decoder_dim"]
        ref = vit_lib.sincos_2d(dim, (side, side))
        if v.shape != ref.shape:
          raise CheckpointError(f"{k}: shape {v.shape}, the architecture's fixed sin-cos table "
                                f"is {ref.shape}")
        err = float(np.max(np.abs(v - ref)))
        if err > 1e-4:
          raise CheckpointError(
              f"{k} is not MAE's fixed sin-cos table (max |diff| {err:.3g}); for a learned "
              f"position embedding use a vit_* arch instead of an mae_* one")
        continue
      nk, nv = _vit_key(k, v)
      if kind == "mae" and not (k.startswith("decoder_") or k == "mask_token"):
        nk = "encoder." + nk
    flat[nk] = np.ascontiguousarray(nv, np.float32)
    source[nk] = k
  return flat, source


# ----------------------------------------------------------------------------
# convert
# ----------------------------------------------------------------------------
def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def convert(in_path: str, out_dir: str, arch: str, *, which: str = "teacher",
            overrides: Mapping[str, Any] | None = None, overwrite: bool = False
            ) -> dict[str, Any]:
  """Converts IN.pth for `arch` into OUT_DIR; returns the meta dict written."""
  if arch not in ARCHS:
    raise CheckpointError(f"unknown --arch {arch!r}; known: {', '.join(sorted(ARCHS))}")
  kind = ARCHS[arch]["kind"]
  config = dict(ARCHS[arch]["config"])
  config.update({k: v for k, v in (overrides or {}).items() if v is not None})
  sd, notes = load_torch_state_dict(in_path, which)
  sd, ignored = split_wrapper(sd, kind)
  if ignored:
    notes.append(f"ignored {len(ignored)} keys outside the converted part: "
                 f"{W._short(ignored, 6)}")
  if kind == "dino_head":
    config = dict(infer_head_config(sd), **(overrides or {}))
    config = {k: v for k, v in config.items() if v is not None}
  flat, source = torch_to_flat(sd, kind, config)
  expected = expected_shapes(kind, config)
  missing, unexpected, mismatched = W.compare_keys(
      expected, {k: tuple(v.shape) for k, v in flat.items()})
  if missing or unexpected or mismatched:
    unexpected = [f"{source[k]} (-> {k})" for k in unexpected]
    mismatched = [(f"{source[k]} (-> {k})", e, g) for k, e, g in mismatched]
    hint = f"--arch {arch} config {config}"
    if kind == "mae" and missing and all(k.startswith(("decoder_", "mask_token"))
                                         for k in missing):
      hint += f"; for an encoder-only checkpoint use --arch {arch}_encoder"
    raise CheckpointError(W.mismatch_message(f"{in_path}", missing, unexpected, mismatched,
                                             hint))
  meta = dict(kind=kind, arch=arch, config=config, source=os.path.abspath(in_path),
              source_sha256=_sha256(in_path), num_tensors=len(flat), notes=notes)
  W.save(out_dir, flat, meta, overwrite=overwrite)
  return meta


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m maskjax.weights.convert",
                              description="Convert a DINO/MAE PyTorch checkpoint to maskjax.")
  p.add_argument("input", help="PyTorch .pth file")
  p.add_argument("out_dir", help="output directory (Orbax params/ + maskjax_weights.json)")
  p.add_argument("--arch", required=True, help=f"one of: {', '.join(sorted(ARCHS))}")
  p.add_argument("--which", default="teacher", help="teacher|student for DINO training checkpoints")
  p.add_argument("--overwrite", action="store_true")
  for name in ("dim", "depth", "heads", "img_size", "patch", "decoder_dim", "decoder_depth",
               "decoder_heads", "in_dim", "out_dim", "hidden", "bottleneck", "nlayers"):
    p.add_argument("--" + name.replace("_", "-"), dest=name, type=int, default=None,
                   help=f"override the architecture's {name}")
  p.add_argument("--mlp-ratio", dest="mlp_ratio", type=float, default=None)
  a = p.parse_args(argv)
  keys = ("dim", "depth", "heads", "img_size", "patch", "decoder_dim", "decoder_depth",
          "decoder_heads", "mlp_ratio", "in_dim", "out_dim", "hidden", "bottleneck", "nlayers")
  overrides = {k: getattr(a, k) for k in keys if getattr(a, k) is not None}
  try:
    meta = convert(a.input, a.out_dir, a.arch, which=a.which, overrides=overrides,
                   overwrite=a.overwrite)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {os.path.abspath(a.out_dir)} ({meta['arch']}, {meta['num_tensors']} tensors, "
        f"{meta['config']})")
  for note in meta["notes"]:
    print(f"note: {note}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
