"""The sections and keys every method config shares.

Every `configs/<method>.py` starts from `base_config()` and fills in its own
`model` and `method` keys, so users (and sweep scripts) override any method the
same way: `--config.seed`, `--config.train.steps`, `--config.input.data_dir`,
`--config.input.categories`, `--config.input.image_size`,
`--config.input.batch_size`, ...
"""
from __future__ import annotations

import ml_collections

from maskjax.errors import ConfigError


def parse_variants(arg, known, source: str, default: str = "", single: bool = False) -> list[str]:
  """`get_config(arg)`'s variant string -> list of variant names.

  "demo,bf16" -> ["demo", "bf16"]; empty -> [default] (or [] when default is
  ""). Unknown names (or several when `single`) raise ConfigError naming the
  config file and the known variants.
  """
  variants = [v.strip() for v in (arg or default).split(",") if v.strip()]
  unknown = [v for v in variants if v not in known]
  if unknown:
    raise ConfigError(f"{source}: unknown variant(s) {', '.join(map(repr, unknown))}; "
                      f"known: {', '.join(known)}")
  if single and len(variants) > 1:
    raise ConfigError(f"{source}: takes one variant, got {arg!r}; known: {', '.join(known)}")
  return variants


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  # -- data -------------------------------------------------------------------
  c.input = ml_collections.ConfigDict()
  # Root of the dataset. Empty = the embedded demo data (generated on first use).
  c.input.data_dir = ""
  # "mvtec" (MVTec AD layout), "visa" (original VisA download with
  # split_csv/1cls.csv), "folder" (normal/abnormal/mask dirs), "archive"
  # (a .tar/.zip of MVTec AD or VisA), "tfds" (ArrayRecord written by our builders),
  # "multi" (data_dir holds several datasets in sub-directories, e.g. mvtec/ and visa/).
  c.input.format = "mvtec"
  # Category names or globs; "dataset/name" when several datasets are combined.
  c.input.categories = ("*",)
  c.input.image_size = 256
  c.input.batch_size = 8
  c.input.eval_batch_size = 8
  c.input.val_fraction = 0.1        # of training normals, seeded, for thresholds
  c.input.num_workers = 0           # grain worker processes (0 = in-process)
  c.input.prefetch = 2
  c.input.skip_bad_files = False    # True: skip and count bad files instead of failing
  c.input.texture_dir = ""          # DTD-layout textures for Perlin anomalies ("" = built-in)
  c.input.cache_dir = ""            # where the demo data is generated ("" = ~/.cache/maskjax)
  c.input.demo_source = "photos"    # demo data (data_dir ""): "photos" (real photos) | "synthetic"
  # How mask files are read. "binary": a mask holds 0 and one other value
  # (MVTec AD: 0/255); any other value (a gradient, JPEG noise) is a data
  # problem. "labels": any non-zero value is a defect (instance-label masks).
  # "auto": "labels" for the VisA format (its masks are instance labels), else "binary".
  c.input.mask_values = "auto"
  # folder format only
  c.input.normal_dir = ""
  c.input.abnormal_dir = ""
  c.input.mask_dir = ""

  # -- model / method: filled in by each config ----------------------------------
  c.model = ml_collections.ConfigDict()
  c.model.init_from = ""            # converted Orbax checkpoint (maskjax.weights.convert)
  c.method = ml_collections.ConfigDict()
  c.method.name = ""

  # -- optimiser --------------------------------------------------------------
  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adam"             # adam | adamw | sgd
  c.optim.lr = 1e-4
  c.optim.weight_decay = 0.0        # adam: L2 added to the gradient (PyTorch Adam); adamw: decoupled
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.schedule = "constant"     # constant | step | warmup_cosine
  c.optim.decay_every = 0           # step schedule: multiply lr by decay_factor every N steps
  c.optim.decay_factor = 0.5
  c.optim.warmup_steps = 0
  c.optim.warmup_init_lr = 0.0
  c.optim.end_lr = 0.0
  c.optim.grad_clip = 0.0           # global-norm clip, 0 = off
  c.optim.accum_steps = 1           # gradient accumulation micro-steps

  # -- training loop ------------------------------------------------------------
  c.train = ml_collections.ConfigDict()
  c.train.steps = 0                 # >0 overrides the epochs-derived step count (of every stage)
  c.train.epochs = 0
  c.train.log_every = 10
  c.train.checkpoint_every = 200
  c.train.keep_checkpoints = 2
  c.train.async_checkpoint = True
  c.train.compute_dtype = "float32" # "bfloat16": bf16 compute, float32 params
  c.train.progress_bar = True

  # -- evaluation ------------------------------------------------------------------
  c.eval = ml_collections.ConfigDict()
  c.eval.num_heatmaps = 4           # overlays per category (normal + defective)
  c.eval.threshold_quantile = 0.99  # decision threshold: quantile of validation normal scores
  c.eval.plots = True
  c.eval.baseline = True            # per-pixel Gaussian baseline row in every report (seconds)
  c.eval.predict_dir = ""           # predict mode: folder of images to score

  # -- devices ---------------------------------------------------------------------
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1                  # -1 = all devices not used by fsdp
  c.mesh.fsdp = 1                   # parameter sharding (FSDP-style) axis size
  c.mesh.fsdp_min_size = 2 ** 18    # params smaller than this stay replicated
  return c


# ----------------------------------------------------------------------------
# validation of values, before any work
# ----------------------------------------------------------------------------
_CHOICES = {
    "input.format": ("mvtec", "visa", "folder", "archive", "tfds", "multi"),
    "input.mask_values": ("auto", "binary", "labels"),
    "input.demo_source": ("photos", "synthetic"),
    "optim.name": ("adam", "adamw", "sgd"),
    "optim.schedule": ("constant", "step", "warmup_cosine", "warmup", "sgdr"),
    "train.compute_dtype": ("float32", "bfloat16"),
}
# key -> (lowest, highest, lowest included, highest included); None = unbounded
_RANGES = {
    "input.image_size": (1, None, True, True),
    "input.batch_size": (1, None, True, True),
    "input.eval_batch_size": (1, None, True, True),
    "input.val_fraction": (0.0, 1.0, True, False),
    "input.num_workers": (0, None, True, True),
    "input.prefetch": (0, None, True, True),
    "optim.lr": (0.0, None, True, True),
    "optim.weight_decay": (0.0, None, True, True),
    "optim.grad_clip": (0.0, None, True, True),
    "optim.accum_steps": (1, None, True, True),
    "optim.warmup_steps": (0, None, True, True),
    "train.steps": (0, None, True, True),
    "train.epochs": (0, None, True, True),
    "train.log_every": (1, None, True, True),
    "train.checkpoint_every": (0, None, True, True),
    "train.keep_checkpoints": (1, None, True, True),
    "eval.threshold_quantile": (0.0, 1.0, False, True),
    "eval.num_heatmaps": (0, None, True, True),
    "mesh.fsdp": (1, None, True, True),
}


def _lookup(config, dotted: str):
  node = config
  for part in dotted.split("."):
    if part not in node:
      return _MISSING
    node = node[part]
  return node


_MISSING = object()


def validate(config) -> None:
  """Refuse out-of-range or unknown values of the shared keys at load time (one
  ConfigError naming every bad key), so a run never fails after training."""
  bad = []
  for key, choices in _CHOICES.items():
    v = _lookup(config, key)
    if v is not _MISSING and v not in choices:
      bad.append(f"config.{key}={v!r} is not one of {', '.join(choices)}")
  for key, (lo, hi, lo_in, hi_in) in _RANGES.items():
    v = _lookup(config, key)
    if v is _MISSING:
      continue
    if isinstance(v, bool) or not isinstance(v, (int, float)):
      bad.append(f"config.{key}={v!r} must be a number")
      continue
    ok = ((lo is None or (v >= lo if lo_in else v > lo)) and
          (hi is None or (v <= hi if hi_in else v < hi)))
    if not ok:
      lo_s = "-inf" if lo is None else lo
      hi_s = "inf" if hi is None else hi
      bad.append(f"config.{key}={v!r} must be in {'[' if lo_in else '('}{lo_s}, {hi_s}"
                 f"{']' if hi_in else ')'}")
  data = _lookup(config, "mesh.data")
  if data is not _MISSING and not (data == -1 or (isinstance(data, int) and data >= 1)):
    bad.append(f"config.mesh.data={data!r} must be -1 (all devices) or >= 1")
  if bad:
    raise ConfigError("; ".join(bad))
