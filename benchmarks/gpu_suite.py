r"""Every GPU measurement in one call; `benchmarks/gpu_suite.sh` runs this file.

Steps (full mode, one GPU, designed for < 8 minutes on an H100/H200 with jax
and torch installed and no network; each step has its own time limit):

  torch_twins    maskjax vs PyTorch on the same weights: RIAD/SSM/EAR U-Nets at
                 256 px, DINO ViT-S/8 saliency, ViT-S/16, MAE ViT-L/16 at 224,
                 batch 8, float32 and bf16, torch.compile (bf16)
  ssm_inference  SSM Algorithm 1 at 256 px over k = 4, 8, 16: batched while_loop
                 vs per-image loop vs the PyTorch twin's per-image loop
  train_step     RIAD / SSM / EAR train steps at 256 px (papers' widths, batch 8)
  mala_stage1    MALA stage 1, MAE ViT-L/16 at 224, bf16: img/s, TFLOP/s, MFU
  aca_pretrain   ACA pretraining (ViT-S/16), APMask vs no masking
  data_pipeline  host input pipeline with 0, 4 and 16 workers
  eval_throughput  scoring + metrics images/s per demo: host pipeline, device,
                 serial vs pipelined `score_split`

Results: one JSON per step in `<out>/gpu_<device>_parts/`, merged into
`<out>/gpu_<device>.json` and a markdown table `<out>/gpu_<device>.md`.
`--smoke` runs the same code at tiny sizes (CPU, for the test suite), in one
process; the full mode runs each step in its own process (separate GPU memory,
a hung step is killed at its limit and the rest still run).

  python benchmarks/gpu_suite.py [--smoke] [--out DIR] [--only a,b] [--budget_s 470]
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _common as C  # noqa: E402

# name, script, full args, smoke args, full time limit (s)
STEPS = [
    ("torch_twins", "torch_twins",
     ["--iters", "10", "--warmup", "2", "--train_iters", "5", "--train_warmup", "2",
      "--dtypes", "float32,bfloat16", "--torch_compile", "auto",
      "--compile_dtypes", "bfloat16"],
     ["--smoke", "--models", "riad_unet,mae_vit_l16"], 200),
    ("ssm_inference", "ssm_inference",
     ["--layout", "full", "--size", "256", "--widths", "64,128,256,512,512", "--batch", "16",
      "--batches", "4", "--train_steps", "20", "--torch"],
     ["--layout", "full", "--size", "16", "--widths", "4,8", "--ks", "4", "--batch", "2",
      "--batches", "1", "--train_steps", "1", "--max_iters", "2", "--torch"], 90),
    ("train_step", "train_step",
     ["--methods", "riad,ssm,ear", "--model_from", "full", "--steps", "10", "--warmup", "2"],
     ["--methods", "riad", "--steps", "1", "--warmup", "0", "--image_size", "32",
      "--batch_size", "1"], 100),
    ("mala_stage1", "mala_train",
     ["--model", "full", "--dtype", "bfloat16", "--batch", "32", "--stages", "stage1",
      "--warmup", "2", "--steps", "8"],
     ["--model", "tiny", "--batch", "2", "--stages", "stage1", "--warmup", "0", "--steps", "1"],
     80),
    ("aca_pretrain", "aca_pretrain",
     ["--model", "full", "--batch", "16", "--warmup", "2", "--steps", "8", "--rounds", "2"],
     ["--model", "tiny", "--batch", "2", "--warmup", "1", "--steps", "1", "--rounds", "1"], 80),
    ("data_pipeline", "data_pipeline",
     ["--workers", "0,4,16", "--seconds", "8", "--num_images", "64"],
     ["--workers", "0", "--seconds", "0.5", "--num_images", "4"], 60),
    ("eval_throughput", "eval_throughput",
     ["--methods", "riad,ssm,ear,aca,mala", "--repeats", "3"],
     ["--methods", "riad", "--smoke"], 120),
]


def run_inprocess(script: str, argv: list[str]) -> None:
  mod = importlib.import_module(script)
  old = sys.argv
  sys.argv = [script + ".py"] + argv
  try:
    mod.main()
  except SystemExit as e:
    if e.code not in (None, 0):
      raise
  finally:
    sys.argv = old


def summarize(name: str, res: dict) -> list[dict]:
  """Headline rows (one table for the whole suite)."""
  rows = []
  if name == "torch_twins":
    for r in res.get("rows", []):
      if r.get("img_per_s"):
        rows.append(dict(step=name, what=f"{r['model']} {r['phase']}", dtype=r["dtype"],
                         impl=r["impl"], img_per_s=r["img_per_s"],
                         vs_pytorch=r.get("ratio_vs_pytorch"),
                         note=f"max rel diff {r.get('max_rel_diff', 0):.1e}"))
  elif name == "ssm_inference":
    for k, label in (("batched_while_loop", "maskjax batched while_loop"),
                     ("per_image_python_loop", "maskjax per-image loop"),
                     ("pytorch_twin_per_image_loop", "PyTorch twin per-image loop")):
      if res.get(k):
        rows.append(dict(step=name, what=f"SSM Alg. 1, {res['setting']['size']} px",
                         dtype="float32", impl=label, img_per_s=res[k]["images_per_s"],
                         note=f"iters/img {res.get('mean_refinement_iterations_per_image')}"))
  elif name == "train_step":
    for r in res.get("rows", []):
      rows.append(dict(step=name, what=f"{r['method']}/{r['stage']} {r['image_size']} px",
                       dtype=r.get("compute_dtype"), impl="maskjax",
                       img_per_s=r["images_per_s"], tflops=r.get("achieved_tflops")))
  elif name == "mala_stage1":
    for st, r in res.get("stages", {}).items():
      rows.append(dict(step=name, what=f"MALA {st} {res.get('encoder')} {res.get('image_size')}",
                       dtype=res.get("dtype"), impl="maskjax", img_per_s=r.get("images_per_s"),
                       tflops=r.get("tflops_per_s"), mfu=r.get("mfu")))
  elif name == "aca_pretrain":
    for r in res.get("rows", []):
      rows.append(dict(step=name, what=f"ACA pretrain, masking {r.get('masking')}",
                       impl="maskjax", img_per_s=r.get("images_per_s"),
                       note=f"GFLOP/step {(r.get('flops_per_step') or 0) / 1e9:.2f}"))
  elif name == "eval_throughput":
    for r in res.get("rows", []):
      for key, impl in (("serial_img_s", "serial"), ("pipelined_img_s", "pipelined")):
        rows.append(dict(step=name, what=f"{r['method']} demo eval {r['image_size']} px",
                         impl=impl, img_per_s=r.get(key),
                         note=f"host {r.get('host_img_s') or 0:.0f} img/s, metrics "
                              f"{r.get('metrics_s') or 0:.2f} s"))
  elif name == "data_pipeline":
    for r in res.get("results", []):
      rows.append(dict(step=name, what=f"pipeline {r['workers']} workers", impl="host",
                       img_per_s=r["images_per_s"]))
  return rows


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--smoke", action="store_true")
  p.add_argument("--out", default="")
  p.add_argument("--only", default="")
  p.add_argument("--budget_s", type=float, default=470.0,
                 help="full mode: skip steps that would start after this many seconds")
  a = p.parse_args(argv)
  out = os.path.abspath(a.out or os.path.join(C.ROOT, "benchmarks", "results"))
  dev = C.device_name()
  tag = f"gpu_{dev}" if not a.smoke else f"gpu_smoke_{dev}"
  parts = os.path.join(out, tag + "_parts")
  os.makedirs(parts, exist_ok=True)
  os.environ["MASKJAX_BENCH_OUT"] = parts
  if not a.smoke and dev == "cpu":
    print("note: no GPU visible to JAX; the full suite will run on the CPU (slow)", flush=True)
  env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false",
             TOKENIZERS_PARALLELISM="false")
  mach = C.machine()
  t_start = time.perf_counter()
  steps, all_rows = {}, []
  only = [s for s in a.only.split(",") if s]
  for name, script, full, smoke, limit in STEPS:
    if only and name not in only:
      continue
    jpath = os.path.join(parts, f"{name}.json")
    argv_s = (smoke if a.smoke else full) + ["--out", jpath]
    elapsed = time.perf_counter() - t_start
    rec = dict(script=f"benchmarks/{script}.py", args=argv_s)
    if not a.smoke and elapsed + 10 > a.budget_s:
      rec.update(status="skipped (suite time budget)")
      steps[name] = rec
      continue
    t0 = time.perf_counter()
    print(f"== {name}: {script}.py {' '.join(argv_s)}", flush=True)
    try:
      if a.smoke:
        run_inprocess(script, argv_s)
        rc = 0
      else:
        lim = min(limit, max(a.budget_s - elapsed, 30))
        with open(os.path.join(parts, f"{name}.log"), "w") as log:
          proc = subprocess.run([sys.executable, os.path.join(HERE, script + ".py")] + argv_s,
                                env=env, stdout=log, stderr=subprocess.STDOUT, timeout=lim,
                                cwd=C.ROOT)
        rc = proc.returncode
      rec.update(status="ok" if rc == 0 else f"exit {rc}")
    except subprocess.TimeoutExpired:
      rec.update(status="timeout")
    except Exception as e:  # noqa: BLE001 - one failing step does not stop the suite
      rec.update(status=f"error {type(e).__name__}: {e}"[:400])
    rec["seconds"] = time.perf_counter() - t0
    if os.path.exists(jpath):
      with open(jpath) as f:
        res = json.load(f)
      rec["result_file"] = os.path.relpath(jpath, out)
      try:
        rows = summarize(name, res)
      except Exception as e:  # noqa: BLE001
        rows = []
        rec["summary_error"] = str(e)[:200]
      all_rows.extend(rows)
      rec["result"] = res
    print(f"   {name}: {rec['status']} in {rec['seconds']:.1f}s", flush=True)
    steps[name] = rec
  total = time.perf_counter() - t_start
  cols = ["step", "what", "dtype", "impl", "img_per_s", "vs_pytorch", "tflops", "mfu", "note"]
  md = C.format_table(all_rows, cols, markdown=True)
  res = dict(benchmark="gpu_suite", smoke=a.smoke, device=dev, total_s=total, steps=steps,
             table=all_rows, machine=C.machine_end(mach),
             targets={"maskjax >= PyTorch twin (same machine, dtype)": "vs_pytorch >= 1",
                      "SSM Algorithm 1 at 256 px": ">= 235 img/s",
                      "MALA stage 1 ViT-L bf16 MFU": ">= 45 %"})
  C.write_json(os.path.join(out, tag + ".json"), res)
  with open(os.path.join(out, tag + ".md"), "w") as f:
    f.write(f"# GPU suite ({'smoke, ' if a.smoke else ''}{dev}), {total:.0f} s\n\n"
            f"Machine: {mach['cpu_model']} x{mach['cpu_count']}, devices {mach['devices']}, "
            f"load {mach['load_avg_start']}\n\n{md}\n\n")
    for n, r in steps.items():
      f.write(f"- {n}: {r['status']} ({r.get('seconds', 0):.0f} s)\n")
  print("\n" + md)
  print(f"\nsuite: {total:.1f}s; " + ", ".join(f"{n} {r['status']}" for n, r in steps.items()))
  return 0 if all(r["status"] == "ok" for r in steps.values()) else 1


if __name__ == "__main__":
  sys.exit(main())
