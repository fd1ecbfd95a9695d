"""Shared helpers for the benchmark scripts: machine description, timing,
FLOP counting, tables and JSON results.

* `machine()` / `machine_end(m)`: CPU model, core count, load average at the
  start and at the end, Python / JAX / PyTorch versions, JAX backend and devices.
  The load average is recorded because these machines are often shared.
* `timeit(fn, warmup, iters)`: wall time per call after warm-up calls, each call
  synchronised with `jax.block_until_ready` (a no-op on non-JAX outputs; pass
  `sync` for PyTorch CUDA).
* `compiled_flops(compiled)`: model FLOPs from XLA's cost analysis of a compiled
  computation (None where the backend reports none).
* `peak_tflops(dtype)`: the device's dense peak TFLOP/s (for MFU), None when
  the device is not in `PEAK_TFLOPS`; `peak_memory()`: the device's peak bytes.
* `load_config(name, variant)`: `configs/<name>.py`'s `get_config(variant)`.
* `build_stages(config, categories, num_train)`: the method of a config and its
  stages resolved as the loop resolves them (durations, init, train step), on
  stated data facts (`DataInfo.uniform`) instead of a dataset;
  `demo_categories(config)`: the categories a config selects on the demo data.
* `TrainStep(stage, config)`: a stage's train step compiled as the loop compiles
  it (`maskjax.train.CompiledStage`: explicit shardings, donated state, step rng
  from the state's step counter), with its state initialised as the loop does;
  `.compile(batch)` (compile time, FLOPs), `.run(n)`, `.time(warmup, iters)`,
  `.time_block(steps)`.
* `result_path(name)`: `benchmarks/results/<name>_<backend>.json`, or under
  `$MASKJAX_BENCH_OUT` when set (the GPU suite and the tests use it).
* `print_table(rows, cols)`, `write_json(path, obj)`.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import platform
import sys
import time
from typing import Any, Callable, Iterable, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# Dense peak TFLOP/s per device kind (vendor data sheets, no sparsity), for MFU.
PEAK_TFLOPS = {
    "H200": {"bfloat16": 989.0, "float32": 67.0},
    "H100": {"bfloat16": 989.0, "float32": 67.0},
    "A100": {"bfloat16": 312.0, "float32": 19.5},
    "L40S": {"bfloat16": 362.0, "float32": 91.6},
    "RTX 3090": {"bfloat16": 71.0, "float32": 35.6},
    "RTX 4090": {"bfloat16": 165.0, "float32": 82.6},
}


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def load_avg() -> list[float] | None:
  return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def machine() -> dict[str, Any]:
  import jax
  m: dict[str, Any] = {
      "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
      "platform": platform.platform(), "python": platform.python_version(),
      "jax": jax.__version__, "jax_backend": jax.default_backend(),
      "devices": [f"{d.platform}:{getattr(d, 'device_kind', '')}" for d in jax.devices()],
      "load_avg_start": load_avg(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
  }
  if "torch" in sys.modules or importlib.util.find_spec("torch") is not None:
    try:
      import torch
      m["torch"] = torch.__version__
      m["torch_threads"] = torch.get_num_threads()
      m["torch_cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - torch is optional
      pass
  return m


def machine_end(m: dict[str, Any]) -> dict[str, Any]:
  m = dict(m)
  m["load_avg_end"] = load_avg()
  m["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
  return m


def device_name() -> str:
  import jax
  d = jax.devices()[0]
  if d.platform == "cpu":
    return "cpu"
  kind = getattr(d, "device_kind", d.platform)
  return "".join(c if c.isalnum() else "_" for c in kind).strip("_").lower() or d.platform


def peak_tflops(dtype: str) -> float | None:
  import jax
  kind = getattr(jax.devices()[0], "device_kind", "")
  for name, peaks in PEAK_TFLOPS.items():
    if name.lower() in kind.lower():
      return peaks.get(dtype)
  return None


def _sync(out):
  import jax
  return jax.block_until_ready(out)


def timeit(fn: Callable[[], Any], warmup: int = 1, iters: int = 3,
           sync: Callable[[Any], Any] | None = None) -> dict[str, Any]:
  """Run fn `warmup` times, then time `iters` calls (each synchronised)."""
  sync = sync or _sync
  for _ in range(warmup):
    sync(fn())
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    sync(fn())
    times.append(time.perf_counter() - t0)
  times_sorted = sorted(times)
  return {"best_s": times_sorted[0], "median_s": times_sorted[len(times) // 2],
          "mean_s": sum(times) / len(times), "iters": iters, "warmup": warmup,
          "times_s": times}


def compiled_flops(compiled) -> float | None:
  try:
    ca = compiled.cost_analysis()
  except Exception:  # noqa: BLE001 - not every backend reports costs
    return None
  if isinstance(ca, (list, tuple)):
    ca = ca[0] if ca else None
  if not ca:
    return None
  f = ca.get("flops")
  return float(f) if f is not None and f > 0 else None


def peak_memory() -> int | None:
  import jax
  try:
    stats = jax.local_devices()[0].memory_stats() or {}
  except Exception:  # noqa: BLE001
    return None
  return stats.get("peak_bytes_in_use")


def load_config(name: str, variant: str = "demo"):
  path = os.path.join(ROOT, "configs", f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"configs_{name}", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(variant)


def demo_categories(config) -> tuple[str, ...]:
  """The categories `config.input.categories` selects on the embedded demo data
  ("*" = all categories of `config.input.demo_source`)."""
  cats = tuple(str(c) for c in config.input.categories)
  if cats != ("*",):
    return cats
  from maskjax.data import demo
  if str(config.input.get("demo_source", "photos")) == "synthetic":
    return tuple(demo.SYNTHETIC_CATEGORIES)
  return tuple(demo.DEMO_CATEGORIES)


def build_stages(config, categories: Sequence[str], num_train: int, image_size: int = 0):
  """-> (method, stages): `config`'s method built for a run on stated data
  (`DataInfo.uniform(categories, num_train, image_size or config.input.image_size)`:
  `num_train` training images in each category) and its stages resolved as the
  loop resolves them (`maskjax.train_state.resolve_stages`: steps, `init`,
  `train_step`, `schedule` filled in)."""
  from maskjax import train_state
  from maskjax.methods import DataInfo, build_method
  data = DataInfo.uniform(tuple(categories), int(num_train),
                          int(image_size or config.input.image_size))
  method = build_method(config, data)
  return method, train_state.resolve_stages(method, config)


class TrainStep:
  """One resolved stage's train step as the loop runs it, for timing.

    ts = TrainStep(stage, config, stage_index=0, previous=None)
    batch = ts.put(host_batch)     # numpy / arrays -> global arrays, batch sharding
    ts.compile(batch)              # sets compile_s and flops (XLA cost analysis)
    metrics = ts.run(n)            # n steps on `batch`, synchronised
    t = ts.time(warmup, iters)     # `timeit` of single steps
    s = ts.time_block(steps)       # seconds per step over one synchronised block

  The step is `maskjax.train.CompiledStage.step` (explicit shardings over
  `mesh`, default `config.mesh` over all devices; donated state; step rng
  `fold_in(stage key, state["step"])` on device); the state comes from
  `CompiledStage.init_from_seed(config.seed, stage_index, previous)` and the key
  from `CompiledStage.stage_key`, as in `maskjax.train.train_stage`. `state` is
  always the newest state (each step donates the one before).
  """

  def __init__(self, stage, config, stage_index: int = 0, previous=None, mesh=None):
    import jax

    from maskjax import mesh as mesh_lib
    from maskjax import train
    self.stage = stage
    self.mesh = mesh if mesh is not None else mesh_lib.make_mesh(config.mesh)
    abstract_previous = (jax.eval_shape(lambda x: x, previous) if previous is not None
                         else None)
    self.cs = train.CompiledStage(stage, self.mesh, config.mesh, abstract_previous)
    seed = int(config.seed)
    self.state = self.cs.init_from_seed(seed, stage_index, previous)
    self.key = self.cs.stage_key(seed, stage_index)
    self.fn = self.cs.step
    self.batch = None
    self.metrics = None
    self.compile_s: float | None = None
    self.flops: float | None = None

  def put(self, batch: dict) -> dict:
    """A host batch (one process) as global arrays on the stage's batch sharding;
    also the batch `run` / `time` use from now on."""
    import numpy as np

    from maskjax import mesh as mesh_lib
    self.batch = mesh_lib.host_to_global({k: np.asarray(v) for k, v in batch.items()},
                                         self.mesh)
    return self.batch

  def compile(self, batch: dict | None = None):
    """Lower and compile the step for `batch` (default: the last `put`); later
    steps run the compiled executable. Sets `compile_s` and `flops`."""
    batch = batch if batch is not None else self.batch
    self.batch = batch
    t0 = time.perf_counter()
    compiled = self.cs.step.lower(self.state, batch, self.key).compile()
    self.compile_s = time.perf_counter() - t0
    self.flops = compiled_flops(compiled)
    self.fn = compiled
    return compiled

  def step(self):
    """One step on the current batch (asynchronous); -> (state, metrics)."""
    self.state, self.metrics = self.fn(self.state, self.batch, self.key)
    return self.state, self.metrics

  def run(self, n: int) -> dict | None:
    """`n` steps, then wait for them; -> the last step's metrics."""
    import jax
    for _ in range(int(n)):
      self.step()
    jax.block_until_ready((self.state, self.metrics))
    return self.metrics

  def time(self, warmup: int = 1, iters: int = 3) -> dict[str, Any]:
    """`timeit` of single steps (each synchronised)."""
    return timeit(self.step, warmup, iters)

  def time_block(self, steps: int) -> float:
    """Seconds per step over `steps` steps synchronised once at the end."""
    t0 = time.perf_counter()
    self.run(steps)
    return (time.perf_counter() - t0) / max(int(steps), 1)

  def loss(self) -> float | None:
    import jax
    if not self.metrics or "loss" not in self.metrics:
      return None
    return float(jax.device_get(self.metrics["loss"]))


def results_dir() -> str:
  return os.environ.get("MASKJAX_BENCH_OUT") or os.path.join(ROOT, "benchmarks", "results")


def result_path(name: str) -> str:
  return os.path.join(results_dir(), f"{name}_{device_name()}.json")


def _jsonable(x):
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, float) and not math.isfinite(x):
    return None
  if hasattr(x, "item") and getattr(x, "shape", None) == ():
    return x.item()
  return x


def write_json(path: str, obj: dict) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(_jsonable(obj), f, indent=1)
  print(f"wrote {path}")
  return path


def _fmt(v) -> str:
  if v is None:
    return "-"
  if isinstance(v, bool):
    return "yes" if v else "no"
  if isinstance(v, float):
    if v == 0:
      return "0"
    if abs(v) >= 100:
      return f"{v:.1f}"
    if abs(v) >= 1:
      return f"{v:.2f}"
    if abs(v) >= 1e-3:
      return f"{v:.4f}"
    return f"{v:.1e}"
  return str(v)


def format_table(rows: Sequence[dict], cols: Iterable[str], markdown: bool = False) -> str:
  cols = list(cols)
  cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
  widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
  if markdown:
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |" for row in cells]
  else:
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
  return "\n".join(lines)


def print_table(rows: Sequence[dict], cols: Iterable[str]) -> None:
  print("\n" + format_table(rows, cols), flush=True)
