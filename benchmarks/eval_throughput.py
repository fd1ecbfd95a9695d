"""Evaluation throughput per demo: images/s of scoring + metrics, and whether
the host or the device limits it.

    python benchmarks/eval_throughput.py                    # every demo config
    python benchmarks/eval_throughput.py --methods riad,ssm --repeats 3

Per method: the demo config is trained for `--train_steps` steps on the
embedded demo data (the loop's own `runner.run`; speed does not depend on how
well the model is trained, except SSM's refinement iterations, which follow
its calibrated eta), its calibration fitted as evaluation fits it, then on the
test split, in one process, side by side:

  host      the eval pipeline alone (read, decode, resize, batch): images/s
  device    jitted `Method.score` on batches already on the device
  serial    `evaluate.score_split(pipelined=False)`: each batch's outputs fetched
            before the next batch is dispatched (the loop before this change)
  pipelined `evaluate.score_split(pipelined=True)`: batch i+1 dispatched before
            batch i is fetched (what evaluation runs)
  metrics   `maskjax.eval.metrics.evaluate_category` over the categories
  total     pipelined + metrics, the evaluation of the test split

Every timing is the median of `--repeats` after one warm-up call (compilation
excluded). The scores of serial and pipelined are checked equal. On a CPU
the "device" is the same cores as the host, so overlap can only hide the
host's share; the JSON records the load average. Prints a table and writes
benchmarks/results/eval_throughput_<device>.json.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _common as C  # noqa: E402

METHODS = ("riad", "ssm", "ear", "aca", "mala")


def _median_time(fn, repeats: int) -> float:
  fn()  # warm-up (compiles)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def measure(name: str, train_steps: int, repeats: int, smoke: bool = False) -> dict:
  import jax

  from maskjax import evaluate, mesh as mesh_lib, runner
  from maskjax.data_access import DataAPI
  from maskjax.eval import metrics as metrics_lib
  cfg = C.load_config(name, "demo")
  cfg.train.steps = train_steps
  cfg.train.progress_bar = False
  cfg.eval.plots = False
  if smoke:
    cfg.input.categories = (C.demo_categories(cfg)[0],)
  data = DataAPI()
  with tempfile.TemporaryDirectory() as wd:
    res = runner.run(cfg, wd, data=data, evaluate_after_train=False)
    state = res["state"]
    from maskjax import data_info
    from maskjax.methods import build_method
    splits = data.load_splits(cfg.input, int(cfg.seed))
    method = build_method(cfg, data_info.from_splits(splits, cfg))
    method.workdir = wd
    mesh = mesh_lib.make_mesh(cfg.mesh)
    calibration, _ = evaluate.calibrate(cfg, wd, method, state, mesh, splits, data)
  records = splits.test
  if smoke:
    records = records[:2 * int(cfg.input.eval_batch_size)]
  n = len(records)
  bs = int(cfg.input.eval_batch_size)

  def host():
    for b in data.eval_batches(cfg.input, records, global_batch_size=bs):
      b["image"].sum()

  batches = [data.to_global(b, mesh) for b in data.eval_batches(cfg.input, records,
                                                               global_batch_size=bs)]
  score = evaluate.jitted(method, "score")
  cal = evaluate.calibration_args(calibration)

  def device():
    outs = [score(state, b, cal) for b in batches]
    jax.block_until_ready(outs)

  got = {}

  def split(pipelined):
    def f():
      got[pipelined] = evaluate.score_split(cfg, method, state, calibration, mesh, records, data,
                                            pipelined=pipelined)
    return f

  t_host = _median_time(host, repeats)
  t_dev = _median_time(device, repeats)
  t_serial = _median_time(split(False), repeats)
  t_pipe = _median_time(split(True), repeats)
  equal = bool(np.array_equal(got[False]["image_score"], got[True]["image_score"])
               and np.array_equal(got[False]["anomaly_map"], got[True]["anomaly_map"]))
  test = got[True]
  cat_of = np.asarray([r.category for r in records])[test["index"]]

  def metrics():
    for cat in sorted(set(cat_of)):
      sel = cat_of == cat
      metrics_lib.evaluate_category(test["image_score"][sel], test["label"][sel],
                                    test["anomaly_map"][sel], test["mask"][sel])

  t_metrics = _median_time(metrics, repeats)
  rate = lambda t: n / t if t > 0 else None  # noqa: E731
  return {"method": name, "images": n, "image_size": int(cfg.input.image_size),
          "eval_batch": bs, "host_img_s": rate(t_host), "device_img_s": rate(t_dev),
          "serial_img_s": rate(t_serial), "pipelined_img_s": rate(t_pipe),
          "metrics_s": t_metrics, "total_img_s": rate(t_pipe + t_metrics),
          "pipelined_speedup": t_serial / t_pipe if t_pipe else None,
          "host_share_of_serial": t_host / t_serial if t_serial else None,
          "serial_equals_pipelined": equal}


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--methods", default=",".join(METHODS))
  p.add_argument("--train_steps", type=int, default=2)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--smoke", action="store_true", help="one category, two batches, one repeat")
  p.add_argument("--out", default="", help="JSON path (default benchmarks/results/...)")
  a = p.parse_args(argv)
  m = C.machine()
  rows = []
  for name in a.methods.split(","):
    rows.append(measure(name, a.train_steps, 1 if a.smoke else a.repeats, a.smoke))
    C.print_table(rows[-1:], list(rows[-1]))
  cols = ["method", "images", "host_img_s", "device_img_s", "serial_img_s", "pipelined_img_s",
          "metrics_s", "total_img_s", "pipelined_speedup", "serial_equals_pipelined"]
  print()
  C.print_table(rows, cols)
  C.write_json(a.out or C.result_path("eval_throughput"), {
      "benchmark": "eval_throughput", "machine": C.machine_end(m), "args": vars(a),
      "rows": rows})


if __name__ == "__main__":
  main()
