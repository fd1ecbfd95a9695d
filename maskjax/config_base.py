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


def config_choice(value, allowed, key: str):
  """`value` when it is one of `allowed`, else a ConfigError naming the config
  key (`key`, e.g. "config.method.metric_space") and the known values."""
  if value not in allowed:
    raise ConfigError(f"{key}={value!r}; known: {', '.join(map(repr, allowed))}")
  return value


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
  c.seed = 0                        # root random seed: data order and split, init, masks

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
  c.input.image_size = 256          # side of the square model input, pixels (images are resized)
  c.input.source_size = 0           # > 0: batches also hold "image_source", the photo at this side
  c.input.batch_size = 8            # global training batch (all devices and hosts together)
  c.input.eval_batch_size = 8       # global batch of calibration, evaluation and predict
  c.input.val_fraction = 0.1        # of training normals, seeded, for thresholds
  # True: train on every training normal, the validation share included (the
  # papers' protocol; the decision threshold is then fitted on normals the model
  # saw, so it sits lower than on unseen ones). False: hold the share out.
  c.input.train_on_val = False
  c.input.num_workers = 0           # grain worker processes (0 = in-process)
  c.input.prefetch = 2              # batches read ahead per grain worker (the reader buffers 4x)
  c.input.decode_threads = 4        # grain threads reading and decoding images (each process)
  c.input.skip_bad_files = False    # True: skip and count bad files instead of failing
  c.input.convert_unusual_images = False  # True: convert 16-bit, alpha, palette images on load
  c.input.texture_dir = ""          # DTD-layout textures for Perlin anomalies ("" = built-in)
  c.input.cache_dir = ""            # where the demo data is generated ("" = ~/.cache/maskjax)
  c.input.demo_source = "photos"    # demo data (data_dir ""): "photos" (real photos) | "synthetic"
  # How mask files are read. "binary": a mask holds 0 and one other value
  # (MVTec AD: 0/255); any other value (a gradient, JPEG noise) is a data
  # problem. "labels": any non-zero value is a defect (instance-label masks).
  # "auto": "labels" for the VisA format (its masks are instance labels), else "binary".
  c.input.mask_values = "auto"
  c.input.tfds_name = "maskjax_mvtec"  # format tfds: maskjax_mvtec | maskjax_visa (tfds_builders)
  # Format "folder" (data_dir is its root; relative directories are taken under it):
  c.input.normal_dir = ""           # folder: normal images (training; see folder_normal_test_dir)
  c.input.abnormal_dir = ""         # folder: anomalous test images, sub-folders = defect types
  c.input.mask_dir = ""             # folder: masks named <stem> or <stem>_mask ("" = none)
  c.input.folder_category = ""      # folder: category name ("" = data_dir's base name)
  c.input.folder_normal_test_dir = ""  # folder: normal test images ("" = a share of normal_dir)
  c.input.folder_test_normal_fraction = 0.2  # folder: that share, seeded

  # -- model / method: filled in by each config ----------------------------------
  c.model = ml_collections.ConfigDict()
  c.model.init_from = ""            # converted Orbax checkpoint (maskjax.weights.convert)
  # Methods whose paper starts from pretrained weights (EAR, ACA, MALA) refuse
  # to train without their checkpoint unless this is True (random init).
  c.model.allow_random_init = False
  c.method = ml_collections.ConfigDict()
  c.method.name = ""                # riad | ssm | ear | aca | mala (set by the method's config)

  # -- optimiser --------------------------------------------------------------
  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adam"             # adam | adamw | sgd
  c.optim.lr = 1e-4                 # peak learning rate (methods with stages may set one per stage)
  c.optim.weight_decay = 0.0        # adam: L2 added to the gradient (PyTorch Adam); adamw: decoupled
  # which tensors weight decay reaches: "all" | "no_bias_norm" (not rank <= 1
  # tensors: biases, norm scales; the MAE / DINO parameter groups)
  c.optim.decay_mask = "all"
  c.optim.no_decay_names = ()       # path substrings never decayed (e.g. "pos_embed", "prototypes")
  c.optim.b1 = 0.9                  # adam / adamw: first-moment decay
  c.optim.b2 = 0.999                # adam / adamw: second-moment decay
  c.optim.eps = 1e-8                # adam / adamw: added to the root of the second moment
  c.optim.momentum = 0.9            # sgd: momentum
  c.optim.schedule = "constant"     # constant | step | warmup | warmup_cosine | sgdr
  c.optim.decay_every = 0           # step schedule: multiply lr by decay_factor every N steps
  c.optim.decay_every_epochs = 0    # > 0: decay_every in epochs (converted with the data size)
  c.optim.decay_factor = 0.5        # step schedule: lr factor at every decay
  c.optim.warmup_steps = 0          # warmup, warmup_cosine: linear warmup length in steps
  c.optim.warmup_epochs = 0         # > 0: warm-up in epochs (converted with the data size)
  c.optim.warmup_fraction = 0.0     # > 0: warm-up as this fraction of a stage's fixed steps
  c.optim.warmup_init_lr = 0.0      # warmup, warmup_cosine: lr at step 0
  c.optim.end_lr = 0.0              # warmup_cosine, sgdr: lowest lr of the cosine
  c.optim.sgdr_period = 0           # sgdr: restart period in steps (must be > 0 for sgdr)
  c.optim.grad_clip = 0.0           # global-norm clip, 0 = off
  c.optim.accum_steps = 1           # gradient accumulation micro-steps

  # -- training loop ------------------------------------------------------------
  c.train = ml_collections.ConfigDict()
  # "unified": one model over every selected category. "per_category": one
  # model per category, each a resumable sub-run <workdir>/<category>/, and one
  # report over all of them (the protocol of RIAD, SSM, EAR, ACA).
  c.train.protocol = "unified"
  c.train.steps = 0                 # >0 overrides the epochs-derived step count (of every stage)
  c.train.epochs = 0                # one-stage methods: epochs over the training data if steps is 0
  c.train.log_every = 10            # steps between metric lines in the log and metrics.jsonl
  c.train.checkpoint_every = 200    # steps between checkpoints (0: only the last, always saved)
  c.train.keep_checkpoints = 2      # checkpoints kept per stage, newest first
  c.train.async_checkpoint = True   # save checkpoints in the background while training continues
  c.train.compute_dtype = "float32" # "bfloat16": bf16 compute, float32 params
  c.train.progress_bar = True       # a live progress bar on a terminal (log lines either way)

  # -- evaluation ------------------------------------------------------------------
  c.eval = ml_collections.ConfigDict()
  c.eval.num_heatmaps = 4           # overlays per category (normal + defective)
  c.eval.threshold_quantile = 0.99  # decision threshold: quantile of validation normal scores
  c.eval.plots = True               # heatmap overlays and ROC / PRO curves in the report
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
    "optim.decay_mask": ("all", "no_bias_norm"),
    "train.compute_dtype": ("float32", "bfloat16"),
    "train.protocol": ("unified", "per_category"),
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
    if v is _MISSING or v is None:   # None: a per-stage key decides (multi-stage methods)
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


# ----------------------------------------------------------------------------
# keys: lookup, suggestions for mistyped ones, and what each one does
# ----------------------------------------------------------------------------
def _is_section(node) -> bool:
  return isinstance(node, (dict, ml_collections.ConfigDict))


def has_key(config, dotted: str) -> bool:
  node = config
  for part in dotted.split("."):
    if not _is_section(node) or part not in node:
      return False
    node = node[part]
  return True


def flat_keys(config, prefix: str = "") -> list[tuple[str, object]]:
  """[(dotted key, value)] of every key, sorted; an empty section is one key ({})."""
  out = []
  for k in sorted(config.keys()):
    v = config[k]
    if _is_section(v) and len(v):
      out += flat_keys(v, f"{prefix}{k}.")
    else:
      out.append((f"{prefix}{k}", {} if _is_section(v) else v))
  return out


def closest_key(config, dotted: str) -> str | None:
  """The key of `config` a mistyped `dotted` most likely meant, or None.

  Each part that names nothing is replaced by its closest sibling (difflib)
  in the section where the path leaves the config, so "trainz.stepz" becomes
  "train.steps"; failing that, the key anywhere whose last name is closest to
  the last part ("stepz" -> "train.steps").
  """
  import difflib
  last = dotted.rsplit(".", 1)[-1]
  parts, node, i = dotted.split("."), config, 0
  while i < len(parts):
    if not _is_section(node):  # the path goes on below a value
      return ".".join(parts[:i])
    if parts[i] not in node:
      match = difflib.get_close_matches(parts[i], [str(k) for k in node], n=1)
      if not match:
        break
      parts[i] = match[0]
    node = node[parts[i]]
    i += 1
  else:
    return ".".join(parts)
  keys = [k for k, _ in flat_keys(config)]
  near = difflib.get_close_matches(last, sorted({k.rsplit(".", 1)[-1] for k in keys}), n=1)
  if not near:
    return None
  same_name = [k for k in keys if k.rsplit(".", 1)[-1] == near[0]]
  return difflib.get_close_matches(dotted, same_name, n=1, cutoff=0.0)[0]


def key_comments(path: str) -> dict[str, str]:
  """{dotted key: its comment} from the source of the config file `path`.

  A key's comment is the comment ending its assignment
  (`c.input.batch_size = 8  # global batch`), else the comment lines just above
  it, joined; the first assignment of the key that has one counts. Keys of a
  dict literal (`c.method.loss_weights = ConfigDict({"l2": 1.0})`) share their
  assignment's comment. Section rules (`# -- data ---`) describe no key. Names
  bound to a section (`p = c.method.pretrain = ConfigDict()`) are followed.
  """
  import ast
  import io
  import tokenize
  with open(path, encoding="utf-8") as f:
    src = f.read()
  comments: dict[int, str] = {}
  alone: set[int] = set()  # lines holding nothing but a comment
  for tok in tokenize.generate_tokens(io.StringIO(src).readline):
    if tok.type == tokenize.COMMENT:
      comments[tok.start[0]] = tok.string.lstrip("#").strip()
      if not tok.line[:tok.start[1]].strip():
        alone.add(tok.start[0])

  def comment_of(stmt) -> str:
    for line in range(stmt.lineno, stmt.end_lineno + 1):
      if line in comments and line not in alone:
        return comments[line]
    above, line = [], stmt.lineno - 1
    while line in alone and not comments[line].startswith("--"):
      above.insert(0, comments[line])
      line -= 1
    return " ".join(t for t in above if t)

  roots = {}  # name -> the dotted key it is bound to ("" = the whole config)

  def key_of(node):
    attrs = []
    while True:
      if isinstance(node, ast.Attribute):
        attrs.insert(0, node.attr)
        node = node.value
      elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) \
          and isinstance(node.slice.value, str):
        attrs.insert(0, node.slice.value)
        node = node.value
      else:
        break
    if not isinstance(node, ast.Name) or node.id not in roots:
      return None
    return ".".join(([roots[node.id]] if roots[node.id] else []) + attrs) or None

  def makes_config(value) -> bool:
    f = value.func if isinstance(value, ast.Call) else None
    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
    return name in ("ConfigDict", "base_config", "get_config")

  def literal_keys(value) -> list[str]:
    if not (isinstance(value, ast.Call) and value.args):
      return []
    arg = value.args[0]
    if isinstance(arg, ast.Dict):
      return [k.value for k in arg.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)]
    if isinstance(arg, ast.Call) and isinstance(arg.func, ast.Name) and arg.func.id == "dict":
      return [k.arg for k in arg.keywords if k.arg]
    return []

  out: dict[str, str] = {}
  stmts = sorted((n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Assign)),
                 key=lambda n: (n.lineno, n.col_offset))
  for stmt in stmts:
    keys = [k for k in map(key_of, stmt.targets) if k]
    names = [t.id for t in stmt.targets if isinstance(t, ast.Name)]
    bound = keys[0] if keys else key_of(stmt.value)
    for name in names:
      if bound is not None:
        roots[name] = bound
      elif makes_config(stmt.value):
        roots[name] = ""
      else:
        roots.pop(name, None)
    text = comment_of(stmt)
    for key in keys:
      for k in [key] + [f"{key}.{sub}" for sub in literal_keys(stmt.value)]:
        if text and not out.get(k):
          out[k] = text
        out.setdefault(k, "")
  return out


def config_comments(config_file: str | None = None) -> dict[str, str]:
  """{dotted key: comment} of this module's `base_config()` and of the method's
  config file; for a shared key the comment here wins, since it defines the key."""
  out = {k: v for k, v in key_comments(__file__).items() if v}
  if config_file:
    for k, v in key_comments(config_file).items():
      if v and k not in out:
        out[k] = v
  return out


def describe(config, config_file: str | None = None) -> list[str]:
  """`key = value  # comment` for every key of `config` (sorted, dotted; see
  `config_comments`); a key without a comment gets no `#` part."""
  comments = config_comments(config_file)
  lines = []
  for key, value in flat_keys(config):
    text = comments.get(key, "")
    lines.append(f"{key} = {value!r}" + (f"  # {text}" if text else ""))
  return lines
