r"""SSM (Huang et al., TMM 2022): conditional U-Net with mask attention modules,
random grid masks in training, progressive mask refinement at test time.

Full run (the paper's settings, MVTec AD, all categories in one run):

  python -m maskjax.main --config=configs/ssm.py --workdir=runs/ssm \
      --config.input.data_dir=/data/mvtec_anomaly_detection

  One category (the paper trains one model per category):
      --config.input.categories='("bottle",)'

Demo (embedded demo data, one model per demo category as the paper, 2-core CPU):

  python -m maskjax.main --config=configs/ssm.py:demo --workdir=/tmp/ssm_demo

  64 px, widths (16, 32, 64, 64), train and test k in {4, 8, 16}, Adam lr 1e-3
  constant, 600 steps of batch 4 per category, one eta per k and category,
  refined map "s0_visible" and image score "max" (docs/RECIPES.md "SSM on
  real photographs"). Measured on the photo demo data (idle 2-core CPU,
  8.6 min end to end: train 473 s, eval 34 s; image / pixel AUROC, %):

    category  demo          baseline (64 px)  one model, 800 x 8 steps
    dahlia    83.3 / 91.9   57.5 / 83.7       69.6 / 84.4
    foliage   60.0 / 57.8   43.1 / 51.3       62.1 / 57.1
    pagoda    77.1 / 92.4   60.0 / 78.2       78.3 / 76.9
    petals    65.6 / 72.7   43.8 / 69.7       52.3 / 62.1

  The last column is the previous demo (one model over the 4 categories,
  2 cores shared with other jobs); it stayed below the baseline's pixel
  AUROC on dahlia, pagoda and petals. On the synthetic demo data
  (--config.input.demo_source=synthetic, the as-written recipe, one model)
  it scored 0.98 / 0.99.

Variants (`--config=configs/ssm.py:VARIANT`, comma-separated to combine):
  full      (default) the paper's settings with the U-Net of the official code
            (MediaBrain-SJTU/SSM `models/unet_multi.py`, `UNet(up_mode='upsample')`):
            encoder on the masked image's 3 channels, nearest x2 + bare 1x1
            conv in the decoder (no BN / ReLU after it), masks resized for the
            mask attention modules as PyTorch `F.interpolate(mode="nearest")`
  demo      small widths at 64 px on the embedded demo data; keeps the previous
            U-Net (4-channel encoder input, nearest x2 + 3x3 conv + BN + ReLU,
            half-pixel mask resize), as does every variant combined with it
            (demo,no_mam ...); one model per category, 600 steps of batch 4
  no_mam    ablation: no mask attention modules (paper Table IV)
  no_refine ablation: "no refinement" baseline, 16 random masks per k

Settings: 256 px, widths 64-512, the official code's U-Net (model.up_block
"conv", model.up_kernel 1, model.mask_resize "floor", model.encoder_input
"image"; demo: "conv_bn_relu", 3, "half_pixel", "image_mask"), train k in
{4, 8, 16} (REFERENCE: for 256 px images), test k in {4, 8, 16}, loss weights
1, Adam lr 1e-4 with coupled weight decay 1e-5, lr halved every 50 epochs,
batch 8, 300 epochs. The loop converts epochs to steps with the data size
(steps per epoch = ceil(training images / batch), also for the 50-epoch lr
period); --config.train.steps=N gives the steps directly (the lr period stays
50 epochs of the data).
eta is the maximum error of the validation split of training normals
(`input.val_fraction`), computed after training and saved with the run.
"""
from __future__ import annotations

import ml_collections

from maskjax import config_base

VARIANTS = ("full", "demo", "no_mam", "no_refine")

# What a run recorded before these keys existed did (maskjax.workdir.fill_method_defaults
# fills them into an old run's config.json for eval / predict / export / resume checks).
RECORDED_DEFAULTS = {"model.up_block": "conv_bn_relu", "model.up_kernel": 3,
                     "model.mask_resize": "half_pixel", "model.encoder_input": "image_mask"}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variants = config_base.parse_variants(arg, VARIANTS, "configs/ssm.py", default="full")
  c = config_base.base_config()

  c.input.categories = ("*",)
  c.input.image_size = 256
  c.input.batch_size = 8
  c.input.eval_batch_size = 8
  c.input.val_fraction = 0.1

  # -- model ----------------------------------------------------------------
  c.model.widths = (64, 128, 256, 512, 512)  # U-Net encoder levels; decoder mirrors them
  c.model.use_mam = True                     # mask attention modules (paper eq. 2)
  c.model.upsample = "nearest"               # "nearest" (x2 + up_kernel conv) | "transpose"
  # after each decoder up-conv: "conv" (nothing; the official `upconv2x2` is a bare conv, BN +
  # ReLU follow the concat) | "conv_bn_relu" (previous: up-conv -> BN -> ReLU)
  c.model.up_block = "conv"
  c.model.up_kernel = 1                      # nearest up-conv: 1 (1x1, official) | 3 (previous)
  # mask resize for the mask attention modules: "floor" (PyTorch F.interpolate "nearest", index
  # floor(i * H / h), official) | "half_pixel" (previous: jax.image.resize, floor((i + 0.5) H / h))
  c.model.mask_resize = "floor"
  # encoder input: "image" (the 3 channels of image * mask, official) | "image_mask" (previous:
  # 4 channels, image * mask and mask); the mask always reaches the mask attention modules
  c.model.encoder_input = "image"

  # -- method ---------------------------------------------------------------
  c.method.name = "ssm"
  c.method.train_ks = (4, 8, 16)             # per-image cell size in training
  c.method.ks = (4, 8, 16)                   # test-time scales (ensemble)
  # loss = mse * MSE + gms * (1 - GMS) + ssim * (1 - SSIM) + mask * mask MSE (eq. 11)
  c.method.loss_weights = ml_collections.ConfigDict(
      {"mse": 1.0, "gms": 1.0, "ssim": 1.0, "mask": 1.0})
  # U-Net input and output range: "unit" ([0, 1] images, tanh output compared as is: the official
  # code, ToTensor without Normalize) | "half" (mean = std = 0.5, previous); losses on [0, 1]
  c.method.input_range = "unit"
  c.method.refine = True                     # False: the paper's no-refinement baseline
  c.method.max_iters = 10                    # refinement iterations per scale, at most
  c.method.num_random_masks = 16             # no-refinement baseline only
  c.method.image_score = "as_written"        # "as_written" (Alg. 1 line 15) | "masked_mean" | "max"
  c.method.refined_map = "as_written"        # "as_written" (0 on visible pixels) | "s0_visible"
  c.method.eta_statistic = "patch"           # max of k x k patch means of S^0 | "pixel"
  c.method.eta_per_scale = True              # one eta per k (False: max over k for all)
  c.method.eta_mode = "per_category"         # "per_category" | "global"
  c.method.eta_scale = 1.0                   # eta used = calibrated eta x this (1 = the paper)
  c.method.score_seed = 0                    # key of the fixed test-time masks (no_refine baseline)

  # -- optimiser ----------------------------------------------------------------
  c.optim.name = "adam"
  c.optim.lr = 1e-4
  c.optim.weight_decay = 1e-5
  c.optim.schedule = "step"
  c.optim.decay_every_epochs = 50            # lr halved every 50 epochs (converted by the loop)
  c.optim.decay_factor = 0.5

  # -- training ---------------------------------------------------------------------
  # -- protocol (docs/RECIPES.md) ------------------------------------------------
  c.train.protocol = "per_category"          # one model per category, as the paper
  # validation normals stay held out: they calibrate eta (Algorithm 1), which
  # must not see images the network was trained on
  c.input.train_on_val = False
  c.train.steps = 0
  c.train.epochs = 300
  c.train.log_every = 50
  c.train.checkpoint_every = 1000

  if "demo" in variants:
    c.input.data_dir = ""
    c.input.image_size = 64
    c.input.batch_size = 4
    c.input.eval_batch_size = 16
    c.model.widths = (16, 32, 64, 64)
    c.model.up_block = "conv_bn_relu"        # previous U-Net (the demo keeps its net)
    c.model.up_kernel = 3                    # previous: nearest x2 + 3x3 conv
    c.model.mask_resize = "half_pixel"       # previous: jax.image.resize nearest
    c.model.encoder_input = "image_mask"     # previous: 4-channel encoder input
    c.method.input_range = "half"            # previous: mean = std = 0.5 U-Net input
    c.method.train_ks = (4, 8, 16)
    c.method.ks = (4, 8, 16)
    c.method.refined_map = "s0_visible"      # keep S^0 below eta (docs/RECIPES.md)
    c.method.image_score = "max"
    c.optim.lr = 1e-3
    c.optim.schedule = "constant"
    # one model per category, as the paper: one demo model over the four photo
    # categories (800 steps of batch 8) stayed below the baseline's pixel AUROC
    # on three of them (docs/RECIPES.md "Demo recipes on the photo demo")
    c.train.steps = 600                      # per category
    c.train.epochs = 0
    c.train.protocol = "per_category"
    c.train.checkpoint_every = 600
    c.eval.num_heatmaps = 2
  if "no_mam" in variants:
    c.model.use_mam = False
  if "no_refine" in variants:
    c.method.refine = False
  return c
