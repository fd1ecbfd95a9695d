r"""Time from the command to the first training step and to the first scored
test batch, for the demos, without and with JAX's persistent compilation cache.

Each run is a fresh subprocess of the real CLI,

  python -m maskjax.main --config=configs/<demo>.py:demo --workdir=DIR --config.train.steps=N \
      --config.train.protocol=unified

started through this file's `--child` mode, which imports the CLI unchanged
and only adds timestamped marks: interpreter up, `maskjax.main` imported, each
stage's "first step (compile + run) done" log line, the first scored
validation batch (calibration) and the first scored test batch, end. Times are
seconds from just before the subprocess was spawned. Modes:

  nocache : no persistent cache;
  cold    : cache enabled on an empty directory (compiles and writes entries);
  warm    : the same command again on the filled cache.

The cache is set by environment (JAX_COMPILATION_CACHE_DIR,
JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0, ..._MIN_ENTRY_SIZE_BYTES=0) and,
where the CLI has it, by its --compilation_cache flag (empty for "nocache"; the
CLI then caches programs that compile in more than its own minimum time).

  python benchmarks/startup.py [--demos riad,mala] [--modes nocache,cold,warm] [--steps 2]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

MARK = "@@startup-mark"


def _mark(name: str) -> None:
  sys.stderr.write(f"{MARK} {name} {time.time():.6f}\n")
  sys.stderr.flush()


def child(argv: list[str]) -> None:
  """Runs the CLI in this process with marks (monkeypatches only add prints)."""
  _mark("python_up")
  sys.path.insert(0, os.path.dirname(HERE))
  import logging
  from maskjax import evaluate as evaluate_lib
  from maskjax import main as cli
  from maskjax import runner
  _mark("imported")

  class Marker(logging.Handler):
    def emit(self, record):
      msg = record.getMessage()
      if "first step (compile + run) done" in msg:
        _mark("first_step:" + msg.split(":")[0].replace("stage ", "").strip())
  logging.getLogger().addHandler(Marker())
  try:
    from absl import logging as absl_logging
    absl_logging.get_absl_logger().addHandler(Marker())
  except Exception:  # noqa: BLE001
    pass

  # evaluation is maskjax.evaluate, called from maskjax.runner: wrap both names
  state = {"split": None, "seen": set()}
  orig_eval, orig_split = evaluate_lib.evaluate, evaluate_lib.score_split

  def evaluate(config, workdir, method, st, mesh, splits, *a, **k):
    state["test_records"] = getattr(splits, "test", None)
    state["val_records"] = getattr(splits, "val", None)
    return orig_eval(config, workdir, method, st, mesh, splits, *a, **k)

  def score_split(config, method, st, calibration, mesh, records, *a, **k):
    prev = state["split"]
    state["split"] = ("test" if records is state.get("test_records") else
                      "val" if records is state.get("val_records") else "other")
    try:
      return orig_split(config, method, st, calibration, mesh, records, *a, **k)
    finally:
      state["split"] = prev
  evaluate_lib.evaluate = runner.evaluate = evaluate
  evaluate_lib.score_split = score_split
  orig_gather = evaluate_lib._gather

  def _gather(x):
    out = orig_gather(x)
    sp = state["split"]
    if sp and sp not in state["seen"]:
      import jax
      jax.block_until_ready(out)
      state["seen"].add(sp)
      _mark(f"first_scored_batch:{sp}")
    return out
  evaluate_lib._gather = _gather
  sys.argv = ["maskjax.main"] + argv
  try:
    cli.run()
  finally:
    _mark("end")


def _cli_has_cache_flag() -> bool:
  try:
    with open(os.path.join(os.path.dirname(HERE), "maskjax", "main.py")) as f:
      return '"compilation_cache"' in f.read()
  except OSError:
    return False


def run_once(demo: str, mode: str, steps: int, cache_dir: str, timeout: int) -> dict:
  work = tempfile.mkdtemp(prefix=f"startup_{demo}_")
  env = dict(os.environ)
  for k in ("JAX_COMPILATION_CACHE_DIR",):
    env.pop(k, None)
  if mode in ("cold", "warm"):
    env["JAX_COMPILATION_CACHE_DIR"] = cache_dir
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  cmd = [sys.executable, "-u", os.path.abspath(__file__), "--child", "--",
         f"--config=configs/{demo}.py:demo", f"--workdir={work}",
         f"--config.train.steps={steps}",
         # one model over the demo categories, as the recorded figures were made
         # (the RIAD demo itself trains one model per category)
         "--config.train.protocol=unified"]
  if _cli_has_cache_flag():  # the CLI's own cache flag (default on) overrides the env
    cmd.append(f"--compilation_cache={cache_dir if mode in ('cold', 'warm') else ''}")
  t0 = time.time()
  proc = subprocess.Popen(cmd, cwd=os.path.dirname(HERE), env=env, stderr=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True)
  marks, tail = {}, []
  try:
    out, err = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    out, err = proc.communicate()
  wall = time.time() - t0
  for line in err.splitlines():
    if line.startswith(MARK):
      _, name, ts = line.split()
      marks.setdefault(name, float(ts) - t0)
    else:
      tail.append(line)
  shutil.rmtree(work, ignore_errors=True)
  row = dict(demo=demo, mode=mode, steps=steps, returncode=proc.returncode, wall_s=wall,
             **{k: v for k, v in marks.items()})
  firsts = sorted(v for k, v in marks.items() if k.startswith("first_step:"))
  row["first_step_s"] = firsts[0] if firsts else None
  row["first_test_batch_s"] = marks.get("first_scored_batch:test")
  row["first_val_batch_s"] = marks.get("first_scored_batch:val")
  if proc.returncode != 0:
    row["stderr_tail"] = "\n".join(tail[-15:])
  return row


def main(argv=None) -> dict:
  if argv is None and "--child" in sys.argv:
    i = sys.argv.index("--child")
    rest = sys.argv[i + 1:]
    if rest and rest[0] == "--":
      rest = rest[1:]
    child(rest)
    return {}
  import _common as C
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--demos", default="riad,mala")
  p.add_argument("--modes", default="nocache,cold,warm")
  p.add_argument("--steps", type=int, default=2)
  p.add_argument("--timeout", type=int, default=900)
  p.add_argument("--label", default="")
  p.add_argument("--out", default="")
  a = p.parse_args(argv)
  mach = C.machine()
  rows = []
  for demo in [d for d in a.demos.split(",") if d]:
    cache = tempfile.mkdtemp(prefix=f"jaxcache_{demo}_")
    try:
      for mode in [m for m in a.modes.split(",") if m]:
        r = run_once(demo, mode, a.steps, cache, a.timeout)
        r["load_avg_after"] = C.load_avg()
        rows.append(r)
        print(f"{demo} {mode}: first step {r['first_step_s']}, first test batch "
              f"{r['first_test_batch_s']}, total {r['wall_s']:.1f}s (rc {r['returncode']})",
              flush=True)
        if r["returncode"]:
          print(r.get("stderr_tail", ""))
    finally:
      shutil.rmtree(cache, ignore_errors=True)
  C.print_table(rows, ["demo", "mode", "imported", "first_step_s", "first_val_batch_s",
                       "first_test_batch_s", "wall_s"])
  name = "startup" + (f"_{a.label}" if a.label else "")
  res = dict(benchmark="startup", args=vars(a), rows=rows, machine=C.machine_end(mach))
  C.write_json(a.out or C.result_path(name), res)
  return res


if __name__ == "__main__":
  main()
