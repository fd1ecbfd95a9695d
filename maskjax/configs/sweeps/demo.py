"""Demo sweep: RIAD and SSM x every demo category x 2 seeds, one run per category.

The full demo sweep (about 16 short runs on a 2-core CPU machine):

  python -m maskjax.sweep --sweep=configs/sweeps/demo.py --root=runs/sweep_demo
  python -m maskjax.sweep_report --root=runs/sweep_demo

Rerunning the first command skips finished runs and resumes interrupted ones.
`configs/sweeps/demo.py:quick` runs each method once over all demo categories
(one model) per seed with very few steps (used by the tests).

`configs/sweeps/demo.py:methods` runs every method's demo as it is (its own
protocol: one model per category for RIAD, SSM and EAR, one model for all
categories for ACA and MALA) at seeds 0, 1 and 2: the README's demo table
over three seeds, with the baseline column and its marks in the report
(15 runs of 6-12 minutes each on a 2-core CPU machine, about 2.5 hours):

  python -m maskjax.sweep --sweep=configs/sweeps/demo.py:methods --root=runs/demo_seeds
  python -m maskjax.sweep_report --root=runs/demo_seeds
"""
from maskjax.data.demo import DEMO_CATEGORIES

DEMO_METHODS = ("riad", "ssm", "ear", "aca", "mala")   # every method's `demo` variant


def get_sweep(arg=None):
  overrides, categories = {}, list(DEMO_CATEGORIES)
  if arg == "quick":
    # one unified run per method and seed over all demo categories, few steps
    # (the demo configs themselves train one model per category)
    overrides = {"train.protocol": "unified", "train.steps": 4, "eval.plots": False, "train.checkpoint_every": 2,
                 "input.image_size": 32, "input.eval_batch_size": 32}
    categories = None
  elif arg == "methods":
    return {"name": "demo_methods", "entries": [
        {"config": f"configs/{m}.py:demo", "label": m, "categories": None, "seeds": [0, 1, 2]}
        for m in DEMO_METHODS]}
  elif arg not in (None, "", "full"):
    raise ValueError(f"unknown sweep variant {arg!r}; known: full, quick, methods")
  return {
      "name": "demo",
      "entries": [
          {"config": "configs/riad.py:demo", "label": "riad",
           "categories": categories, "seeds": [0, 1], "overrides": overrides},
          {"config": "configs/ssm.py:demo", "label": "ssm",
           "categories": categories, "seeds": [0, 1], "overrides": overrides},
      ],
  }
