"""MALA's single-class setting (the paper's Table 2): one model per category of
MVTec AD and of VisA, 1 seed (add seeds to taste).

  python -m maskjax.sweep --sweep=configs/sweeps/mala_single_class.py --root=runs/mala_sc \
      --set input.data_dir=/data/ad --executor=slurm
  python -m maskjax.sweep_report --root=runs/mala_sc

`/data/ad` holds `mvtec/` (MVTec AD as downloaded) and `visa/` (VisA as
downloaded), as for the unified config.
"""

MVTEC = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
         "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper")
VISA = ("candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2",
        "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum")


def get_sweep(arg=None):
  seeds = [0]
  return {
      "name": "mala_single_class",
      "entries": [
          {"config": "configs/mala.py:per_category", "label": "mala_single_class",
           "categories": [f"mvtec/{c}" for c in MVTEC] + [f"visa/{c}" for c in VISA],
           "seeds": seeds},
      ],
  }
