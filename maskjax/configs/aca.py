r"""ACA (Bozorgtabar & Mahapatra, AAAI 2023): attention-conditioned masked
pretraining (APMask + Sinkhorn clustering, EMA teacher), then fine-tuning on
attention-guided cut-paste anomalies; multi-scale test.

Both stages in one command (stage 2 starts from stage 1's final checkpoint;
each stage resumes on its own when the command is run again):

  python -m maskjax.main --config=configs/aca.py --workdir=runs/aca_bottle \
      --config.input.data_dir=/data/mvtec_ad --config.input.categories='("bottle",)' \
      --config.model.init_from=/ckpt/dino_vits16

  `init_from`: DINO ViT-S/16 converted with
    python -m maskjax.weights.convert dino_deitsmall16_pretrain.pth OUT --arch vit_small_patch16
  Without it the backbone starts from random weights and the run log says so.
  The paper trains one model per MVTec AD category (run once per category).

Variants (`--config=configs/aca.py:VARIANT`, comma-separated to combine):
  full       (default) the paper's settings: ViT-S/16, 224 px, 1 global 224 + 8
             local 96 student views with DINO's augmentations (hue jitter,
             Gaussian blur, solarisation per view), r = 0.3, K = 20, tau = 0.1,
             AdamW lr 1e-5 -> 5e-4 over 10 epochs then cosine, no weight decay
             on biases, norms and prototypes, 300 + 100 epochs, batch 16;
             fine-tuning from the EMA teacher, images colour-jittered before the
             synthesis, patches cut and pasted at attention-drawn locations;
             lambda_det 0.95 / lambda_seg 0.05, scales {224,320,384,416,448,512}
             resized from the photo at 512 px (input.source_size), from which
             the pretraining crops are cut too (docs/RECIPES.md "ACA": every
             setting against the paper and the DINO / SwAV code)
  demo       tiny ViT /8 at 64 px on the embedded demo data (all demo categories
             in one model), global 64 / local 32 views, scales {64, 96, 128};
             both stages and the evaluation on a 2-core CPU:
               python -m maskjax.main --config=configs/aca.py:demo --workdir=/tmp/aca_demo
             The demo keeps the settings its numbers below were measured with,
             each one switch away from the full variant:
               method.pretrain.augment "basic" (full "dino"),
               method.finetune.cut_location "uniform" (full "attention"),
               method.finetune.augment "none" (full "color_jitter"),
               method.finetune.init_from_stage1 "student" (full "teacher"),
               optim.decay_mask "all", optim.no_decay_names () (full
               "no_bias_norm", ("prototypes",)),
               input.source_size 0: crops and test scales from the 64 px
               input (full 512: from the photo resized to 512 px).
             and two that the photo demo needs from random weights:
               method.finetune.lambda_det / lambda_seg 0.2 / 0.8 (paper
               0.95 / 0.05), 1000 + 3000 steps (docs/RECIPES.md "Demo recipes
               on the photo demo").
  Ablations (paper Table 4): random_mask, no_mask (masking strategy),
  no_pretrain (fine-tune the DINO / random backbone directly),
  poisson (host-side cut-paste with Poisson blending; the host has no attention
  map, so the cut and paste locations are uniform), bf16 (bfloat16 compute).

Measured on the photo demo (the default data): README.md. The previous demo
recipe (150 + 2000 steps, lambda_det / lambda_seg 0.95 / 0.05) on the synthetic
demo data (--config.input.demo_source=synthetic; 2-core CPU shared with other
jobs, load average ~7 during the run, random init, end to end 10 min 0 s incl.
evaluation (train 581 s, eval 10 s); percent):
  category  image AUROC  pixel AUROC  AUPRO@0.3
  fabric       100.0         81.3        74.3
  pill          82.1         76.2        45.9
  tiles         87.9         96.2        90.0
  washer        63.8         65.3        34.0
  mean          83.5         79.8        61.1
  With 1000 fine-tuning steps (7 min 3 s, load ~6.7): image AUROC 100.0 / 83.1
  / 86.4 / 59.3, pixel AUROC 92.7 / 81.8 / 83.4 / 62.1 (same order). The demo
  pastes use colour jitter +-0.3 (paper default +-0.1): with a randomly
  initialised tiny ViT the attention is nearly uniform, so many +-0.1 pastes
  land on flat background and are invisible yet labelled anomalous, and the
  classifier stays at chance for hundreds of steps. Not a reproduction of the
  paper's numbers.

Decisions where the paper is silent (see maskjax/methods/aca/__init__.py):
  APMask attention from the EMA teacher on the full student view; teacher view
  = one extra global crop; AdamW weight decay 0.04; EMA momentum 0.996 with
  DINO's cosine schedule to 1; projection MLP 384-2048-2048-256; Sinkhorn eps
  0.05, 3 iterations; fine-tuning with the same lr schedule shape (5e-4 peak,
  warmup 10 epochs); classifier g_s = the projection's MLP shape (head_hidden x
  head_layers) with a 2-way last layer (paper: g and g_s share the architecture
  except the last layer); the attention that places the synthetic anomalies is
  the frozen pre-trained backbone's (`finetune.guide`, paper: "self-attention
  maps of a pre-trained ViT"), not the network being fine-tuned; paste colour
  jitter +-0.1 (`finetune.jitter`; the demo uses +-0.3, see below); the
  teacher's view is DINO's global view 1 (blur p 1.0), the student's global
  crops DINO's global view 2 (blur 0.1, solarisation 0.2), local crops blur
  0.5; fine-tuning starts from the EMA teacher; the normal images are
  augmented with ColorJitter(0.1, 0.1, 0.1, 0.1) before the synthesis (the
  paper says "data augmentations" without naming them; CutPaste's PyTorch
  code's choice).
Resolution (full config): the pipeline also delivers `image_source`, the
  photo resized once to input.source_size = 512 (the largest test scale);
  the test scales are resized from it (antialiased) and the pretraining
  crops are cut from it, as the paper resizes the original photograph and
  DINO crops it. Fine-tuning, the synthesis and the maps / pixel metrics
  stay at input.image_size (224). An exported detector takes one image, so
  `python -m maskjax.export` refuses source_size > 0.
"""
from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from maskjax import config_base
from maskjax.errors import ConfigError

VARIANTS = ("full", "demo", "random_mask", "no_mask", "no_pretrain", "poisson", "bf16")

# What a run recorded before these keys existed did (maskjax.workdir.fill_method_defaults
# fills them into an old run's config.json for eval / predict / export / resume checks).
RECORDED_DEFAULTS = {"method.pretrain.augment": "basic", "method.finetune.cut_location": "uniform",
                     "method.finetune.augment": "none", "method.finetune.seg_lr_scale": 1.0,
                     "method.finetune.init_from_stage1": "student"}
# (input.source_size is a shared key: an older run's config.json is filled with
# base_config's 0, the previous code, by maskjax.workdir.with_schema_defaults.)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variants = config_base.parse_variants(arg, VARIANTS, "configs/aca.py", default="")
  c = config_base.base_config()

  # -- data ---------------------------------------------------------------------
  c.input.format = "mvtec"
  c.input.image_size = 224
  # Per-stage settings (method.<stage>.lr / batch_size / epochs) apply unless
  # these global keys are set: then every stage uses the global value.
  c.optim.lr = config_dict.placeholder(float)          # None: each stage's lr; set: every stage
  c.input.batch_size = config_dict.placeholder(int)    # None: each stage's batch; set: every stage
  c.train.epochs = config_dict.placeholder(int)        # None: each stage's epochs; set: every stage
  c.input.eval_batch_size = 8
  c.input.source_size = 512                  # photo side the test scales and crops come from

  # -- model ------------------------------------------------------------------------
  c.model.backbone = "vit_small_patch16"     # maskjax.models.vit.VIT_CONFIGS name
  c.model.backbone_overrides = ml_collections.ConfigDict()  # ViT arguments replaced (dim, ...)
  c.model.init_from = ""                     # converted DINO ViT checkpoint
  c.model.head_hidden = 2048                 # hidden width of the projection and classifier MLPs
  c.model.head_layers = 3                    # layers of the projection and classifier MLPs
  c.model.bottleneck = 256                   # projection output (L2-normalised) = prototype size
  c.model.num_prototypes = 20                # K, Sinkhorn clusters of stage 1

  # -- method -------------------------------------------------------------------------
  c.method.name = "aca"
  c.method.use_pretrain = True               # False: no stage 1, fine-tune the initial backbone
  c.method.test_scales = (224, 320, 384, 416, 448, 512)  # test input sizes; maps averaged over them
  p = c.method.pretrain = ml_collections.ConfigDict()
  p.masking = "apmask"                       # apmask | random | none
  p.mask_ratio = 0.3                         # r: share of patch tokens dropped from student views
  p.attention_source = "teacher"             # teacher | student
  p.global_size = 224                        # side of the global crops (teacher and student), px
  p.local_size = 96                          # side of the local student crops, px
  p.num_global = 1                           # student global crops (the teacher has its own one)
  p.num_local = 8                            # student local crops
  # view augmentation: "dino" = DINO's (hue jitter, Gaussian blur, solarisation,
  # random jitter order) per view | "basic" = flip, b/c/s jitter, grayscale only
  p.augment = "dino"
  p.global_scale = (0.4, 1.0)                # area fraction range of the global crops
  p.local_scale = (0.05, 0.4)                # area fraction range of the local crops
  p.temperature = 0.1                        # tau of the student's softmax over prototypes
  p.sinkhorn_eps = 0.05                      # Sinkhorn-Knopp entropy regularisation of the targets
  p.sinkhorn_iters = 3                       # Sinkhorn-Knopp iterations
  p.momentum = 0.996                         # EMA teacher momentum (the start of the cosine)
  p.momentum_schedule = "cosine"             # cosine | constant
  p.epochs = 300                             # stage length in epochs (when no steps are fixed)
  p.steps = 0                                # > 0: fixed step count for this stage
  p.warmup_epochs = 10                       # linear lr warmup, in epochs (stage run by epochs)
  p.warmup_fraction = 0.0                    # warmup share when steps are fixed
  p.batch_size = 16                          # global batch of this stage
  p.lr = 5e-4                                # peak lr of this stage (schedule: config.optim)
  f = c.method.finetune = ml_collections.ConfigDict()
  f.synthesis = "device"                     # device | host
  f.poisson = False                          # host synthesis only
  f.anomaly_prob = 0.5                       # probability that an example gets a paste
  f.temperature = 0.1                        # cut / paste location softmax temperature
  f.cut_location = "attention"               # attention | uniform | background: where the patch is cut from
  f.augment = "color_jitter"                 # color_jitter (0.1 x 4, every image) | none: before synthesis
  f.init_from_stage1 = "teacher"             # teacher (EMA) | student: stage 1 ViT fine-tuning starts from
  f.jitter = 0.1                             # colour jitter of the pasted patch, factors U(1 -+ j)
  f.guide = "pretrained"                     # pretrained (frozen) | current: whose attention places pastes
  f.lambda_det = 0.95                        # weight of the image classification CE loss
  f.lambda_seg = 0.05                        # weight of the Dice loss of the paste mask
  # the attention-weighting head's weights learn this many times faster than the
  # stage's lr (reparametrised, maskjax.methods.aca.heads.AttentionSegHead); 1: the paper's
  # single lr
  f.seg_lr_scale = 1.0
  f.epochs = 100                             # stage length in epochs (when no steps are fixed)
  f.steps = 0                                # > 0: fixed step count for this stage
  f.warmup_epochs = 10                       # linear lr warmup, in epochs (stage run by epochs)
  f.warmup_fraction = 0.0                    # warmup share when steps are fixed
  f.batch_size = 16                          # global batch of this stage
  f.lr = 5e-4                                # peak lr of this stage (schedule: config.optim)

  # -- optimiser (both stages; lr per stage) --------------------------------------------
  c.optim.name = "adamw"
  c.optim.weight_decay = 0.04
  c.optim.decay_mask = "no_bias_norm"        # DINO's groups: no decay on biases and norms
  c.optim.no_decay_names = ("prototypes",)   # nor on the prototypes (unit rows, renormalised)
  c.optim.schedule = "warmup_cosine"
  c.optim.warmup_init_lr = 1e-5
  c.optim.end_lr = 1e-6
  # -- protocol (docs/RECIPES.md) ------------------------------------------------
  c.train.protocol = "per_category"          # one model per category, as the paper
  c.input.train_on_val = True                # train on every normal, as the paper
  c.train.log_every = 50
  c.train.checkpoint_every = 1000

  if "demo" in variants:
    c.input.categories = ("*",)
    c.input.image_size = 64
    c.input.source_size = 0                  # crops and test scales from the 64 px input
    c.input.eval_batch_size = 32
    c.model.backbone = "vit_tiny_patch8"
    c.model.backbone_overrides.dim = 96      # ViT width (vit_tiny_patch8 has 192)
    c.model.backbone_overrides.heads = 3     # attention heads
    c.model.head_hidden = 256
    c.model.bottleneck = 64
    c.method.test_scales = (64, 96, 128)
    p.global_size = 64
    p.local_size = 32
    p.num_local = 4
    # 1000 + 3000 steps: with 150 + 2000 the classifier never left chance on the photo
    # demo; the longer stage 1 lets it learn, the longer fine-tuning sharpens the maps
    p.steps = 1000
    p.warmup_fraction = 0.1
    p.batch_size = 32
    p.lr = 1e-3
    p.momentum = 0.99
    f.steps = 3000
    f.warmup_fraction = 0.05
    f.batch_size = 32
    f.lr = 3e-4
    f.jitter = 0.3
    # the map is the CLS attention, and from random weights only a strong Dice term
    # teaches it to look at the anomaly (the paper's 0.95 / 0.05
    # after the same stage 1: pixel AUROC 46-72)
    f.lambda_det = 0.2
    f.lambda_seg = 0.8
    # the demo keeps the settings its measured numbers were made with
    p.augment = "basic"
    f.cut_location = "uniform"
    f.augment = "none"
    f.init_from_stage1 = "student"
    c.optim.decay_mask = "all"
    c.optim.no_decay_names = ()
    c.train.log_every = 25
    c.train.checkpoint_every = 100
    c.train.protocol = "unified"             # one demo model over the demo categories
    c.input.train_on_val = False
    c.model.allow_random_init = True         # no pretrained weights ship with the demo
    c.eval.num_heatmaps = 2

  if "random_mask" in variants and "no_mask" in variants:
    raise ConfigError("configs/aca.py: variants 'random_mask' and 'no_mask' exclude each other")
  if "random_mask" in variants:
    p.masking = "random"
  if "no_mask" in variants:
    p.masking = "none"
  if "no_pretrain" in variants:
    c.method.use_pretrain = False
  if "poisson" in variants:
    f.synthesis = "host"
    f.poisson = True
    f.cut_location = "uniform"               # the host has no attention map
  if "bf16" in variants:
    c.train.compute_dtype = "bfloat16"
  return c
