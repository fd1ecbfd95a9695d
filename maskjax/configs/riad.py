r"""RIAD (Zavrtanik et al., PR 2021): U-Net inpainting with disjoint random grid
masks, loss L2 + SSIM + MSGMS, MSGMS score map.

Full run (the published settings, MVTec AD, all categories in one run):

  python -m maskjax.main --config=configs/riad.py --workdir=runs/riad \
      --config.input.data_dir=/data/mvtec_anomaly_detection

  One category (the paper trains one model per category):
      --config.input.categories='("bottle",)'

Demo (embedded demo data, one model per demo category as the paper, 2-core CPU):

  python -m maskjax.main --config=configs/riad.py:demo --workdir=/tmp/riad_demo

Variants (`--config=configs/riad.py:VARIANT`):
  "full" (default)  the published settings with the public PyTorch code's
                    conventions (taikiinoue45/RIAD): losses and score on the
                    [-1, 1] tensors, no BN / ReLU after the up-convs.
  "plutoyuxie"      as full with the plutoyuxie port's MSGMS and score: gray +
                    3x3 median MSGMS, per-scale training loss, per-k 1/N^2
                    weights and Gaussian sigma 7 smoothing of the score map.
  "demo"            embedded demo data, small U-Net, one model per category
                    (the paper's protocol) of 400 steps each; keeps the
                    previous conventions ([0, 1] losses, BN + ReLU after the
                    up-convs). Measured results on the photo demo: README.md.

Settings: 256 px, widths 64-512, k in {2, 4, 8, 16}, 3 disjoint masks per k,
Adam lr 1e-4 with (PyTorch-style, coupled) weight decay 1e-5, batch 8, 300
epochs. The loop converts epochs to steps with the data size (train.epochs x
ceil(training images / batch)); --config.train.steps=N gives the steps
directly.
"""
from __future__ import annotations

import ml_collections

from maskjax import config_base

VARIANTS = ("full", "demo", "plutoyuxie")

# What a run recorded before these keys existed did (maskjax.workdir.fill_method_defaults
# fills them into an old run's config.json for eval / predict / export / resume checks).
RECORDED_DEFAULTS = {"model.up_block": "conv_bn_relu", "method.metric_space": "unit",
                     "method.msgms_loss_reduction": "map", "method.score_pipeline": "taikiinoue45"}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  (variant,) = config_base.parse_variants(arg, VARIANTS, "configs/riad.py", default="full",
                                          single=True)
  c = config_base.base_config()

  c.input.categories = ("*",)
  c.input.image_size = 256
  c.input.batch_size = 8
  c.input.eval_batch_size = 8

  # -- model ----------------------------------------------------------------
  c.model.widths = (64, 128, 256, 512, 512)  # encoder levels; decoder mirrors them
  c.model.upsample = "transpose"             # "transpose" (ConvTranspose 4x4 s2) | "nearest"
  # after each decoder up-conv: "conv" (nothing; both RIAD ports' `upconv2x2` is a bare
  # ConvTranspose2d, BN + ReLU follow the concat) | "conv_bn_relu" (previous: up-conv -> BN -> ReLU)
  c.model.up_block = "conv"

  # -- method ---------------------------------------------------------------
  c.method.name = "riad"
  c.method.ks = (2, 4, 8, 16)                # grid cell sizes (pixels)
  c.method.num_masks = 3                     # disjoint masks per k
  # loss = l2 * L2 + ssim * (1 - SSIM) + msgms * MSGMS, in method.metric_space
  c.method.loss_weights = ml_collections.ConfigDict({"l2": 1.0, "ssim": 1.0, "msgms": 1.0})
  # space of the L2 / SSIM / MSGMS losses and the score map: "half" (the mean = std = 0.5
  # tensors in [-1, 1], constants unchanged: both RIAD ports) | "unit" (previous: [0, 1] images)
  c.method.metric_space = "half"
  c.method.msgms_variant = "riad"            # "riad" (taikiinoue45) | "gray_median" (plutoyuxie)
  c.method.msgms_scales = 4                  # MSGMS pyramid levels, in the loss and the score map
  # MSGMS training loss: "map" (mean of the resized multi-scale map, taikiinoue45 at HEAD) |
  # "per_scale" (mean over scales of each scale's own map, the plutoyuxie port)
  c.method.msgms_loss_reduction = "map"
  # score map: "taikiinoue45" (MSGMS maps summed over k, score_filter box mean) | "plutoyuxie"
  # (each k's map / N_k^2, N_k = image_size // k, summed, Gaussian sigma 7, reflect borders)
  c.method.score_pipeline = "taikiinoue45"
  c.method.score_filter = 21                 # box filter size on the summed MSGMS map
  c.method.score_seed = 0                    # key of the fixed test-time masks

  # -- optimiser ----------------------------------------------------------------
  c.optim.name = "adam"
  c.optim.lr = 1e-4
  c.optim.weight_decay = 1e-5
  c.optim.schedule = "constant"

  # -- training ---------------------------------------------------------------------
  # -- protocol (docs/RECIPES.md) ------------------------------------------------
  c.train.protocol = "per_category"          # one model per category, as the paper
  c.input.train_on_val = True                # train on every normal, as the paper
  c.train.steps = 0
  c.train.epochs = 300
  c.train.log_every = 50
  c.train.checkpoint_every = 1000

  if variant == "demo":
    c.input.data_dir = ""
    c.input.image_size = 64
    c.input.batch_size = 4
    c.input.eval_batch_size = 16
    c.model.widths = (16, 32, 64, 64)
    c.model.up_block = "conv_bn_relu"        # previous layout (the demo keeps its net)
    c.method.metric_space = "unit"           # previous [0, 1] losses and score
    c.method.ks = (2, 4, 8, 16)
    c.optim.lr = 1e-3
    # one model per category, as the paper: one demo model over the four photo
    # categories (300 steps) stayed below the baseline on some of them
    # (docs/RECIPES.md "Demo recipes on the photo demo")
    c.train.steps = 400                      # per category
    c.train.epochs = 0
    c.train.protocol = "per_category"
    c.input.train_on_val = False
    c.train.log_every = 100
    c.train.checkpoint_every = 400
    c.eval.num_heatmaps = 2
  if variant == "plutoyuxie":
    c.method.msgms_variant = "gray_median"
    c.method.msgms_loss_reduction = "per_scale"
    c.method.score_pipeline = "plutoyuxie"
  return c
