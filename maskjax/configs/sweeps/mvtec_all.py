"""Every implemented method over MVTec AD, 3 seeds, each as its paper ran it:
RIAD, SSM, EAR and ACA one model per MVTec AD category; MALA its unified
model over the 27 categories of MVTec AD + VisA (the paper's Table 1 model;
the sweep report shows its MVTec AD rows next to the others, and its VisA
rows).

The argument is the folder holding both datasets side by side
(<root>/mvtec/<category>/..., <root>/visa/split_csv/1cls.csv + categories),
then the converted checkpoints of the methods that start from pretrained
weights (`python -m maskjax.weights.convert`), as method=path:

  python -m maskjax.sweep --root=runs/mvtec --executor=slurm \
      --sweep=configs/sweeps/mvtec_all.py:/data/anomaly,ear=/ckpt/dino_s8,aca=/ckpt/dino_s16,mala=/ckpt/mae_l
  python -m maskjax.sweep_report --root=runs/mvtec --reference=anomalib_results.csv

A method given no checkpoint refuses to start, naming the file to download.
"""
from maskjax.errors import ConfigError

MVTEC_CATEGORIES = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather",
                    "metal_nut", "pill", "screw", "tile", "toothbrush", "transistor", "wood",
                    "zipper")
# the config key each method reads its converted checkpoint from
INIT_KEYS = {"ear": "model.saliency_init_from", "aca": "model.init_from",
             "mala": "model.init_from"}


def get_sweep(arg=None):
  if not arg:
    raise ConfigError("configs/sweeps/mvtec_all.py needs the folder holding mvtec/ and visa/: "
                      "--sweep=configs/sweeps/mvtec_all.py:/data/anomaly (MALA's model is "
                      "trained on both datasets)")
  root, *pairs = str(arg).split(",")
  root = root.rstrip("/")
  weights = {}
  for p in pairs:
    m, sep, path = p.partition("=")
    if not sep or m not in INIT_KEYS or not path:
      raise ConfigError(f"configs/sweeps/mvtec_all.py: {p!r}: expected method=checkpoint with "
                        f"method one of {', '.join(INIT_KEYS)}")
    weights[m] = path
  seeds = [0, 1, 2]

  def init(m):
    return {INIT_KEYS[m]: weights[m]} if m in weights else {}

  per_cat = [{"config": f"configs/{m}.py", "label": m, "categories": list(MVTEC_CATEGORIES),
              "seeds": seeds, "overrides": {"input.data_dir": f"{root}/mvtec", **init(m)}}
             for m in ("riad", "ssm", "ear", "aca")]
  unified = [{"config": "configs/mala.py", "label": "mala", "categories": None,
              "seeds": seeds, "overrides": {"input.data_dir": root, **init("mala")}}]
  return {"name": "mvtec_all", "entries": per_cat + unified}
