"""Every implemented method over every MVTec AD category, 3 seeds, one run per
category (MALA: its unified run over MVTec AD + VisA).

  python -m maskjax.sweep --sweep=configs/sweeps/mvtec_all.py --root=runs/mvtec \
      --set input.data_dir=/data/mvtec --executor=slurm   # writes the array job
  python -m maskjax.sweep_report --root=runs/mvtec --reference=anomalib_results.csv
"""

MVTEC_CATEGORIES = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather",
                    "metal_nut", "pill", "screw", "tile", "toothbrush", "transistor", "wood",
                    "zipper")


def get_sweep(arg=None):
  seeds = [0, 1, 2]
  per_cat = [{"config": f"configs/{m}.py", "label": m, "categories": list(MVTEC_CATEGORIES),
              "seeds": seeds} for m in ("riad", "ssm", "ear", "aca")]
  unified = [{"config": "configs/mala.py:mvtec", "label": "mala", "categories": None,
              "seeds": seeds}]
  return {"name": "mvtec_all", "entries": per_cat + unified}
