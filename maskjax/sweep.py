r"""Sweeps: methods x variants x categories x seeds x override grids.

  python -m maskjax.sweep --sweep=configs/sweeps/<name>.py[:arg] --root=DIR
      [--executor=local|slurm|tpu] [--parallel=N] [--devices_per_run=K]
      [--submit] [--dry_run] [--set key=value ...]

A sweep file defines `get_sweep(arg=None) -> dict`:

    {
      "name": "demo",
      "entries": [
        {
          "config": "configs/riad.py:demo",     # config file[:variant]
          "label": "riad",                       # column name in reports (default: method)
          "categories": ["fabric", "tiles"],     # one run per category; None = one
                                                 #   run over the config's categories
                                                 #   (the unified multi-class run)
          "seeds": [0, 1],
          "grid": {"method.k": [4, 8]},          # cartesian product of overrides
          "overrides": {"train.steps": 200},     # fixed overrides
        },
      ],
    }

Each run gets its own workdir `<root>/<label>[/<grid tag>]/<category or all>/seed<s>`
and is the ordinary command `python -m maskjax.main --config=... --workdir=...
--config.key=value ...`, so a sweep is resumable: runs with a complete
`eval/results.json` are skipped, interrupted runs resume from their checkpoints.

Executors:
  local  run here, sequentially or `--parallel=N` concurrent processes, each
         pinned to its own devices (CUDA_VISIBLE_DEVICES / TPU_VISIBLE_CHIPS
         from --devices_per_run; on a CPU-only host the processes share the CPU).
  slurm  write `<root>/sweep_runs.txt` (one command per line) and
         `<root>/sweep_slurm.sbatch` (a job array over those lines); `--submit`
         calls sbatch.
  tpu    write `<root>/sweep_tpu.sh`, which runs every pending run on a TPU VM
         (all workers via `gcloud compute tpus tpu-vm ssh --worker=all`);
         `--submit` executes it.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import json
import os
import shlex
import subprocess
import sys
import time
from typing import Any, Optional

from absl import app, flags

from maskjax.errors import ConfigError

FLAGS = flags.FLAGS


@dataclasses.dataclass
class Run:
  label: str
  config: str
  category: Optional[str]
  seed: int
  overrides: dict
  workdir: str

  def command(self, python: str = "python") -> list[str]:
    cmd = [python, "-m", "maskjax.main", f"--config={self.config}", f"--workdir={self.workdir}",
           f"--config.seed={self.seed}"]
    if self.category is not None:
      cmd.append(f"--config.input.categories=({self.category!r},)")
    for k, v in self.overrides.items():
      cmd.append(f"--config.{k}={_flag_value(v)}")
    return cmd

  def shell(self, python: str = "python") -> str:
    return " ".join(shlex.quote(c) for c in self.command(python))


def _flag_value(v: Any) -> str:
  if isinstance(v, (list, tuple)):
    return "(" + ",".join(repr(x) for x in v) + ("," if len(v) == 1 else "") + ")"
  if isinstance(v, bool):
    return str(v)
  return str(v)


def _tag(grid_values: dict) -> str:
  parts = []
  for k, v in grid_values.items():
    parts.append(f"{k.split('.')[-1]}={_flag_value(v)}".replace("/", "_").replace(" ", ""))
  return ",".join(parts)


def load_sweep(spec: str) -> dict:
  from maskjax import configs
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):  # a packaged sweep: "demo", "sweeps/demo", "configs/sweeps/demo.py"
    name = path if "/" in path else f"sweeps/{path}"
    try:
      path = configs.resolve(name).partition(":")[0]
    except ConfigError:
      raise ConfigError(f"sweep file {spec.partition(':')[0]!r} does not exist") from None
  mod_spec = importlib.util.spec_from_file_location("maskjax_sweep_def", path)
  mod = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(mod)
  if not hasattr(mod, "get_sweep"):
    raise ConfigError(f"sweep file {path!r} defines no get_sweep(arg=None)")
  sweep = mod.get_sweep(arg or None)
  if not isinstance(sweep, dict) or not sweep.get("entries"):
    raise ConfigError(f"sweep file {path!r}: get_sweep() must return a dict with 'entries'")
  return sweep


def expand(sweep: dict, root: str, extra: Optional[dict] = None) -> list[Run]:
  """All runs of a sweep, in a stable order."""
  runs, seen = [], set()
  for i, e in enumerate(sweep["entries"]):
    if "config" not in e:
      raise ConfigError(f"sweep entry {i} has no 'config'")
    label = e.get("label") or os.path.splitext(os.path.basename(e["config"].split(":")[0]))[0]
    grid = e.get("grid") or {}
    keys = sorted(grid)
    for values in itertools.product(*[list(grid[k]) for k in keys]):
      gv = dict(zip(keys, values))
      for cat in (e.get("categories") or [None]):
        for seed in e.get("seeds", [0]):
          ov = dict(e.get("overrides") or {})
          ov.update(gv)
          ov.update(extra or {})
          parts = [root, label] + ([_tag(gv)] if gv else []) + [
              (cat or "all").replace("/", "_"), f"seed{seed}"]
          wd = os.path.join(*parts)
          if wd in seen:
            raise ConfigError(f"sweep entries collide on workdir {wd}; give them distinct 'label's")
          seen.add(wd)
          runs.append(Run(label, e["config"], cat, int(seed), ov, wd))
  return runs


def is_finished(run: Run) -> bool:
  path = os.path.join(run.workdir, "eval", "results.json")
  try:
    with open(path) as f:
      json.load(f)
    return True
  except (OSError, ValueError):
    return False


def _pin_env(slot: int, n: int) -> dict:
  env = dict(os.environ)
  if n > 0:
    ids = ",".join(str(slot * n + j) for j in range(n))
    env["CUDA_VISIBLE_DEVICES"] = ids
    env["TPU_VISIBLE_CHIPS"] = ids
    env["TPU_PROCESS_BOUNDS"] = "1,1,1"
    env["TPU_CHIPS_PER_PROCESS_BOUNDS"] = f"1,{n},1"
  return env


def run_local(runs: list[Run], parallel: int = 1, devices_per_run: int = 0,
              log=print) -> dict:
  """Runs pending runs; returns {"done": [...], "skipped": [...], "failed": [...]}."""
  out = {"done": [], "skipped": [], "failed": []}
  pending = []
  for r in runs:
    if is_finished(r):
      out["skipped"].append(r.workdir)
    else:
      pending.append(r)
  log(f"sweep: {len(runs)} runs, {len(out['skipped'])} finished, {len(pending)} to run")
  active: list[tuple[subprocess.Popen, Run, int, Any]] = []
  free_slots = list(range(max(1, parallel)))
  while pending or active:
    while pending and free_slots:
      r = pending.pop(0)
      slot = free_slots.pop(0)
      os.makedirs(r.workdir, exist_ok=True)
      logf = open(os.path.join(r.workdir, "sweep.log"), "a")
      log(f"sweep: start {r.workdir}")
      p = subprocess.Popen(r.command(sys.executable), stdout=logf, stderr=subprocess.STDOUT,
                           env=_pin_env(slot, devices_per_run))
      active.append((p, r, slot, logf))
    time.sleep(0.2)
    for item in list(active):
      p, r, slot, logf = item
      if p.poll() is None:
        continue
      active.remove(item)
      logf.close()
      free_slots.append(slot)
      if p.returncode == 0 and is_finished(r):
        out["done"].append(r.workdir)
        log(f"sweep: done  {r.workdir}")
      else:
        out["failed"].append(r.workdir)
        log(f"sweep: FAILED {r.workdir} (exit {p.returncode}; see {r.workdir}/sweep.log)")
  return out


def write_slurm(runs: list[Run], root: str, partition: str = "", gpus: int = 1,
                time_limit: str = "24:00:00") -> str:
  pending = [r for r in runs if not is_finished(r)]
  os.makedirs(root, exist_ok=True)
  lines_path = os.path.join(root, "sweep_runs.txt")
  with open(lines_path, "w") as f:
    for r in pending:
      f.write(r.shell("python") + "\n")
  script = os.path.join(root, "sweep_slurm.sbatch")
  part = f"#SBATCH --partition={partition}\n" if partition else ""
  with open(script, "w") as f:
    f.write(f"""#!/bin/bash
#SBATCH --job-name=maskjax-sweep
#SBATCH --array=0-{max(len(pending) - 1, 0)}
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gpus={gpus}
#SBATCH --time={time_limit}
#SBATCH --output={root}/slurm-%A_%a.out
{part}# One maskjax run per array task; finished runs are skipped by re-running
# `python -m maskjax.sweep --executor=slurm` (it rewrites this file).
set -euo pipefail
cmd=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {shlex.quote(lines_path)})
echo "$cmd"
eval "$cmd"
""")
  os.chmod(script, 0o755)
  return script


def write_tpu(runs: list[Run], root: str, tpu_name: str = "", zone: str = "") -> str:
  pending = [r for r in runs if not is_finished(r)]
  os.makedirs(root, exist_ok=True)
  script = os.path.join(root, "sweep_tpu.sh")
  name = tpu_name or "${TPU_NAME:?set TPU_NAME}"
  z = zone or "${TPU_ZONE:?set TPU_ZONE}"
  with open(script, "w") as f:
    f.write("#!/bin/bash\n# Runs each pending maskjax run on every worker of a TPU VM in turn.\n"
            "set -euo pipefail\n")
    for r in pending:
      inner = "cd ~/maskjax && " + r.shell("python3")
      f.write(f"gcloud compute tpus tpu-vm ssh {name} --zone={z} --worker=all "
              f"--command={shlex.quote(inner)}\n")
  os.chmod(script, 0o755)
  return script


def _parse_sets(items) -> dict:
  out = {}
  for it in items:
    if "=" not in it:
      raise ConfigError(f"--set expects key=value, got {it!r}")
    k, v = it.split("=", 1)
    out[k.strip()] = v.strip()
  return out


def define_flags() -> None:
  """Command-line flags (defined only when run as a program)."""
  flags.DEFINE_string("sweep", None, "sweep file[:arg], e.g. configs/sweeps/demo.py")
  flags.DEFINE_string("root", None, "root directory of the sweep's runs")
  flags.DEFINE_enum("executor", "local", ["local", "slurm", "tpu"], "where the runs go")
  flags.DEFINE_integer("parallel", 1, "local: concurrent processes")
  flags.DEFINE_integer("devices_per_run", 0,
                       "local: accelerators pinned to each process (0 = do not pin)")
  flags.DEFINE_boolean("submit", False, "slurm/tpu: submit the written scripts")
  flags.DEFINE_boolean("dry_run", False, "print the runs and exit")
  flags.DEFINE_multi_string("set", [], "extra override for every run, key=value")
  flags.DEFINE_string("slurm_partition", "", "slurm: partition")
  flags.DEFINE_integer("slurm_gpus", 1, "slurm: GPUs per array task")
  flags.DEFINE_string("slurm_time", "24:00:00", "slurm: time limit per task")
  flags.DEFINE_string("tpu_name", "", "tpu: TPU VM name")
  flags.DEFINE_string("tpu_zone", "", "tpu: zone")


def main(argv) -> None:
  from maskjax.errors import UserError
  try:
    if not FLAGS.sweep or not FLAGS.root:
      raise ConfigError("--sweep and --root are required")
    runs = expand(load_sweep(FLAGS.sweep), FLAGS.root, _parse_sets(FLAGS.set))
    if FLAGS.dry_run:
      for r in runs:
        print(("[done] " if is_finished(r) else "") + r.shell())
      return
    if FLAGS.executor == "local":
      res = run_local(runs, FLAGS.parallel, FLAGS.devices_per_run)
      print(f"sweep: {len(res['done'])} ran, {len(res['skipped'])} skipped (finished), "
            f"{len(res['failed'])} failed")
      if res["failed"]:
        sys.exit(1)
    elif FLAGS.executor == "slurm":
      script = write_slurm(runs, FLAGS.root, FLAGS.slurm_partition, FLAGS.slurm_gpus,
                           FLAGS.slurm_time)
      print(f"sweep: wrote {script}")
      if FLAGS.submit:
        subprocess.run(["sbatch", script], check=True)
    else:
      script = write_tpu(runs, FLAGS.root, FLAGS.tpu_name, FLAGS.tpu_zone)
      print(f"sweep: wrote {script}")
      if FLAGS.submit:
        subprocess.run(["bash", script], check=True)
  except UserError as e:
    print(f"maskjax.sweep: error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  define_flags()
  from maskjax.cli_utils import maybe_print_help
  maybe_print_help(__doc__)
  app.run(main)
