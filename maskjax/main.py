r"""maskjax command line.

  python -m maskjax.main --config=<method>[:variant] --workdir=DIR \
      [--mode=train|eval|predict|plan] [--config.key=value ...]
  python -m maskjax.main --config=<method>[:variant] [--config.key=value ...] --print_config

--config takes a packaged config by name (riad, ssm, ear, aca, mala; e.g.
riad:demo) or a config file path (configs/riad.py:demo); eval and predict
read the run's own config.json when --config is omitted.

Modes:
  train    train every stage of the method (resuming from DIR if it holds a
           run), then evaluate on the test split and write the report (default).
  eval     evaluate the final checkpoint in DIR and write the report.
  predict  score a folder of images (--predict_dir or --config.eval.predict_dir)
           with the model in DIR; writes heatmaps and scores.csv.
  plan     build data and method, train nothing: print per stage steps,
           epochs, batch, lr schedule, optimiser, init sources, synthesis
           source, protocol, devices; write DIR/plan.json (seconds on a CPU).

--print_config prints the resolved config (every --config.* override applied),
one `key = value  # what it does` line per key, and exits without training;
no --workdir needed (with --workdir alone it prints the run's config.json).

Multi-host: pass --coordinator_address/--num_processes/--process_id (or set
MASKJAX_COORDINATOR, MASKJAX_NUM_PROCESSES, MASKJAX_PROCESS_ID; on SLURM and
Cloud TPU JAX finds them itself) and start the same command on every host.

Errors that are the user's to fix (unknown method, unknown config key, a
workdir holding another config's run, bad data) are printed as one line and
exit with status 2.
"""
from __future__ import annotations

import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS

_CONFIG = config_flags.DEFINE_config_file(
    "config", None,
    "Method config by name or path, e.g. riad:demo or configs/riad.py:demo; override keys "
    "with --config.key=value. Optional for eval / predict (the run's config.json).",
    lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, reports. A run resumes from it.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "predict", "plan"],
                  "train: train then evaluate; eval: evaluate the checkpoint in --workdir; "
                  "predict: score the images of --predict_dir; plan: print the recipe the "
                  "run would execute (steps, schedule, init, data) and write DIR/plan.json.")
flags.DEFINE_string("predict_dir", None, "predict mode: an image, a folder or a glob to score.")
flags.DEFINE_string("output_dir", None, "eval / predict: where the report / heatmaps go "
                    "(default DIR/eval, DIR/predict); checked writable before any work.")
flags.DEFINE_string("predict_out", None, "predict mode: output directory (same as --output_dir; "
                    "default a new DIR/predict/<n> per call, never overwriting).")
flags.DEFINE_string("compilation_cache", os.path.join("~", ".cache", "maskjax", "xla"),
                    "JAX persistent compilation cache directory (compiled programs are reused "
                    "across runs); empty disables it.")
flags.DEFINE_bool("allow_config_change", False,
                  "resume a run although recipe keys (losses, optimiser, batch, ...) changed; "
                  "the previous config is kept as DIR/config.<n>.json and the report lists "
                  "every phase.")
flags.DEFINE_bool("print_config", False,
                  "print the resolved config (after every --config.* override), one "
                  "'key = value  # what it does' line per key, and exit; needs no --workdir.")
flags.DEFINE_string("coordinator_address", None, "multi-host: host:port of process 0.")
flags.DEFINE_integer("num_processes", None, "multi-host: number of processes.")
flags.DEFINE_integer("process_id", None, "multi-host: index of this process.")


def _fail(msg: str) -> None:
  msg = " ".join(str(msg).split())  # one line
  print(f"maskjax: error: {msg}", file=sys.stderr)
  if _after_failed_save():
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(2)  # see maskjax.checkpoint.SAVE_FAILED; every file was closed before
  sys.exit(2)


def _after_failed_save() -> bool:
  ckpt = sys.modules.get("maskjax.checkpoint")
  return bool(ckpt is not None and getattr(ckpt, "SAVE_FAILED", False))


def main(argv) -> None:
  if len(argv) > 1:
    _fail(f"unexpected arguments: {' '.join(argv[1:])}")
  from maskjax.errors import UserError
  config_path = FLAGS["config"].config_filename if FLAGS["config"].present else None
  if not FLAGS.workdir and not (FLAGS.print_config and config_path):
    _fail("--workdir is required" if not FLAGS.print_config else
          "--print_config needs --config, e.g. --config=riad:demo (or the --workdir of a run)")
  if not config_path:
    if FLAGS.mode == "train" and not FLAGS.print_config:
      _fail("--config is required to train, e.g. --config=riad:demo")
    from maskjax import workdir as workdir_lib
    try:
      config = workdir_lib.load_run_config(os.path.abspath(FLAGS.workdir))
    except UserError as e:
      _fail(str(e))
    config_path = os.path.join(FLAGS.workdir, "config.json")
  else:
    try:
      config = FLAGS.config
    except UserError as e:
      _fail(f"{config_path}: {e}")
    except Exception as e:  # the config file itself failed to load
      _fail(f"cannot load config {config_path!r}: {type(e).__name__}: {e}")
  if FLAGS.print_config:
    _print_config(config, config_path)
    return
  try:
    name = config.method.name
  except (AttributeError, KeyError):
    _fail(f"{config_path}: has no method.name")
  _compilation_cache(FLAGS.compilation_cache)
  output_dir = FLAGS.output_dir
  if FLAGS.predict_out:
    if output_dir and output_dir != FLAGS.predict_out:
      _fail("--predict_out and --output_dir name different directories; give one")
    output_dir = FLAGS.predict_out
  try:
    from maskjax import methods
    methods.get_method_class(name)  # fail fast on unknown / unimplemented methods
    from maskjax import mesh
    mesh.maybe_initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                      FLAGS.process_id)
    from maskjax import runner
    runner.run(config, FLAGS.workdir, mode=FLAGS.mode, predict_dir=FLAGS.predict_dir,
              output_dir=output_dir, allow_config_change=FLAGS.allow_config_change)
  except UserError as e:
    _fail(str(e))


def _print_config(config, config_path: str) -> None:
  """`key = value  # comment` per key; the comments are those written next to
  the keys in config_base.py and in the config file (for a run's config.json:
  the packaged config of its method)."""
  from maskjax import config_base, configs
  from maskjax.errors import UserError
  source = config_path.partition(":")[0]
  if not source.endswith(".py"):
    try:
      source = configs.resolve(str(config.method.name)).partition(":")[0]
    except (UserError, AttributeError, KeyError):
      source = None
  try:
    lines = config_base.describe(config, source)
  except (OSError, SyntaxError, ValueError) as e:  # an unreadable source: values only
    logging.warning("config comments unavailable: %s: %s", type(e).__name__, e)
    lines = config_base.describe(config)
  print("\n".join(lines))


def _compilation_cache(path: str) -> None:
  """JAX's persistent compilation cache: a second run (or eval / predict after
  train) loads its compiled programs instead of compiling them again."""
  if not path:
    return
  import jax
  jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _resolve_config_arg(argv: list[str]) -> list[str]:
  """`--config=riad:demo` (a packaged config by name) or a `configs/...` path
  that does not exist here -> the packaged file, before absl loads it."""
  from maskjax import configs
  from maskjax.errors import UserError
  out, i = [], 0
  while i < len(argv):
    a = argv[i]
    if a.startswith("--config="):
      value, prefix = a[len("--config="):], "--config="
    elif a == "--config" and i + 1 < len(argv):
      value, prefix = argv[i + 1], "--config="
      i += 1
    else:
      out.append(a)
      i += 1
      continue
    try:
      out.append(prefix + configs.resolve(value))
    except UserError as e:
      _fail(str(e))
    i += 1
  return out


def _parse_flags(argv):
  """absl parsing, but bad flags / config keys end as one line with exit 2."""
  from maskjax.errors import UserError
  argv = [argv[0]] + _resolve_config_arg(list(argv[1:]))
  try:
    return FLAGS(argv)
  except flags.UnrecognizedFlagError as e:
    name = getattr(e, "flagname", "") or ""
    if name.startswith("config."):
      _unknown_config_key(argv, name[len("config."):])
    _fail(f"unknown flag --{name}; see --help")
  except UserError as e:  # raised by a config file's get_config (e.g. unknown variant)
    _fail(str(e))
  except flags.Error as e:
    msg = str(e).strip().splitlines()
    _fail(msg[-1] if msg else "bad flags")
  except (AttributeError, KeyError) as e:  # unknown nested config key
    _unknown_config_key(argv, None, e)


_OVERRIDE = re.compile(r"^--?(?:no)?config\.([^=]+)")


def _unknown_config_key(argv, key, error: Exception | None = None) -> None:
  """Fail with one line naming the --config.* override that names no key of
  the config, the argument as given and the key it most likely meant:
    unknown config key 'train.stepz' (--config.train.stepz=3); did you mean 'train.steps'?
  `key`: the culprit when absl named it, else found by loading the config."""
  from maskjax import config_base, configs
  overrides = [(m.group(1), a) for a in argv[1:] for m in [_OVERRIDE.match(a)] if m]
  spec = next((a[len("--config="):] for a in argv[1:] if a.startswith("--config=")), "")
  if not spec:
    _fail(f"{overrides[0][1] if overrides else 'a --config.* override'} needs --config, "
          "e.g. --config=riad:demo")
  path, sep, variant = spec.partition(":")
  try:
    module = configs.load_module(path)
    config = module.get_config(variant) if sep else module.get_config()
  except Exception as e:  # noqa: BLE001 - the config file itself fails
    _fail(f"cannot load config {spec!r}: {type(e).__name__}: {e}")
  for name, arg in overrides:
    if (key is None and not config_base.has_key(config, name)) or name == key:
      guess = config_base.closest_key(config, name)
      hint = f"did you mean {guess!r}?" if guess else "--print_config lists every key"
      _fail(f"unknown config key {name!r} ({arg}); {hint}")
  if error is not None:  # no override at fault: the config file's own error
    _fail(f"cannot load config {spec!r}: {type(error).__name__}: {error}")
  _fail(f"unknown config key {key!r}; --print_config lists every key")


def _quiet_libraries(record) -> bool:
  """Keep INFO lines of maskjax; libraries (Orbax, grain, ...) only from WARNING up."""
  path = getattr(record, "pathname", "") or ""
  msg = str(getattr(record, "msg", ""))
  if "Given directory is read only" in msg:
    return False  # Orbax's note on our read-only (eval / predict) checkpoint opens
  if "orbax" in path and ("raised an exception" in msg or "save" in msg.lower()):
    # a failed (background) save: the checkpointer re-raises it as one line
    return record.levelno < 40 and _library_info(record, path)
  return _library_info(record, path)


def _library_info(record, path: str) -> bool:
  return record.levelno >= 30 or "maskjax" in path or "site-packages" not in path


def run() -> None:
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_quiet_libraries)
  from maskjax.cli_utils import maybe_print_help
  maybe_print_help(__doc__)
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
