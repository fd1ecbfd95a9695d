r"""EAR's hyperparameter grid (Park et al. 2023, Table 2) as a sweep.

  python -m maskjax.sweep --sweep=configs/sweeps/ear_grid.py[:VARIANT] --root=runs/ear_grid

Table 2: kernel size k in {3, 5}; learning rate in {1e-3, 1e-4, 1e-5}; learning-
rate schedule in {fixed, warm-up (Goyal et al.), SGDR}: 2 x 3 x 3 = 18 runs per
category and seed. The paper trains one model per category and keeps the best
setting per category.

Format: `get_sweep(arg=None) -> dict` with
  "name":       sweep name;
  "method":     registry key of the method ("ear");
  "config":     config file[:variant] every run starts from (VARIANT = the
                argument, default "full");
  "variants":   the config variants this sweep is meant for (informational);
  "categories": list of categories, one run each (MVTec AD's 15); None = one
                run over the config's categories;
  "seeds":      list of seeds;
  "grid":       {override key (dotted, relative to the config, e.g.
                 "optim.lr"): [values]}, the cartesian product is swept;
                 values are Python literals as `--config.<key>=<value>` takes them;
  "overrides":  fixed overrides of every run;
  "entries":    the same as one entry for `maskjax.sweep` (which reads only
                "entries"; the top-level keys above describe it for readers).
The schedule values map the paper's names to `config.optim.schedule`:
fixed -> "constant", warm-up -> "warmup" (linear warm-up over
optim.warmup_steps, then constant), SGDR -> "sgdr" (cosine restarts every
optim.sgdr_period steps); both periods are fixed overrides below [decision:
the paper gives neither; 1 / 10 of the default 9,000 steps and 1 / 3 of them].
"""
from __future__ import annotations

MVTEC_CATEGORIES = ["bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather",
                    "metal_nut", "pill", "screw", "tile", "toothbrush", "transistor", "wood",
                    "zipper"]

GRID = {
    "model.kernel_size": [3, 5],
    "optim.lr": [1e-3, 1e-4, 1e-5],
    "optim.schedule": ["constant", "warmup", "sgdr"],
}


def get_sweep(arg: str | None = None) -> dict:
  variant = (arg or "full").strip()
  config = f"configs/ear.py:{variant}"
  demo = variant.startswith("demo")
  categories = None if demo else list(MVTEC_CATEGORIES)
  seeds = [0]
  overrides = ({"optim.warmup_steps": 60, "optim.sgdr_period": 200} if demo else
               {"optim.warmup_steps": 900, "optim.sgdr_period": 3000})
  entry = {"config": config, "label": f"ear_{variant}", "categories": categories,
           "seeds": seeds, "grid": dict(GRID), "overrides": dict(overrides)}
  return {"name": f"ear_grid_{variant}", "method": "ear", "config": config,
          "variants": ["full", "m_star", "wo_obf", "wo_attn", "demo"],
          "categories": categories, "seeds": seeds, "grid": dict(GRID),
          "overrides": dict(overrides), "entries": [entry]}
