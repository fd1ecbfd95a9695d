r"""MALA (Chen et al., IEEE Access 2023): MAE + pseudo-label discriminator,
then a frozen encoder and a Token Balance Module predicting anomaly maps.
One model for all categories.

Full run (accelerator host), unified MVTec AD + VisA (27 categories):

  python -m maskjax.main --config=configs/mala.py --workdir=runs/mala \
      --config.input.data_dir=/data/anomaly \
      --config.model.init_from=/ckpt/mae_visualize_vit_large

  `data_dir` holds both datasets side by side:
    <data_dir>/mvtec/<category>/{train/good,test/<defect>,ground_truth/<defect>}/...
    <data_dir>/visa/split_csv/1cls.csv  (+ the VisA category folders it names)
  `init_from`: MAE ImageNet weights converted with
    python -m maskjax.weights.convert mae_visualize_vit_large.pth OUT --arch mae_vit_large_patch16
  (encoder + decoder); `mae_pretrain_vit_large.pth` has the encoder only:
    python -m maskjax.weights.convert mae_pretrain_vit_large.pth OUT \
        --arch mae_vit_large_patch16_encoder
  (the decoder then starts from random weights; the log says which tensors).
  Without it the run is refused in one line (naming the file and this command)
  unless --config.model.allow_random_init=True; the plan and report say which.
  Stage 2 pastes DTD textures: --config.input.texture_dir=/data/dtd/images
  (refused without it unless --config.method.builtin_textures=True).

Variants (`--config=configs/mala.py:VARIANT`, comma-separated to combine):
  mvtec         MVTec AD only (15 categories, same data_dir layout)
  visa          VisA only (12 categories, same data_dir layout)
  per_category  the paper's single-class setting (Table 2): one model per
                category. Each run selects one category, e.g.
                  --config=configs/mala.py:mvtec,per_category \
                  --config.input.categories='("mvtec/bottle",)'
                or all of them as a sweep (`maskjax.sweep`, an entry with
                "config": "configs/mala.py:per_category" and "categories": [...]).
                Stage lengths then follow the one category's quota.
  demo          tiny ViT at 64 px on the embedded demo data, all demo
                categories in one model; both stages on a 2-core CPU:
                  python -m maskjax.main --config=configs/mala.py:demo --workdir=/tmp/mala_demo
                stage 1: 50 epochs (400 steps), stage 2: 320 epochs (2560 steps,
                lr 1e-3), local_prob 0.8 (the demo's defects lie on the object),
                pooling 5 x 5, the map smoothed by a Gaussian of 4 px
                (`method.map_sigma`; not in the paper); constant stage-1
                lr, decay on every tensor, built-in textures, 10 % of the
                normals held out. Measured
                results on the photo demo: README.md.
  demo_multi    `demo` with the demo data laid out as MVTec + VisA
                (`maskjax.data.demo.generate_multi`), format "multi"
  reduced       the full configuration's code path (ViT-L/16 patching, sin-cos
                MAE, PLPM, TBM, unified MVTec AD + VisA data) at reduced width
                (64) and depth (4 + 2 blocks), 2 steps per stage, for smoke tests
  Ablations (paper Table 4): no_stage1, no_plpm, no_tbm, recon_score
  (reconstruction-based scoring with the stage-1 model instead of stage 2).
  bf16          bfloat16 compute (float32 parameters) on accelerators.

Decisions where the paper is silent (maskjax/methods/mala/__init__.py; every setting: docs/RECIPES.md):
  loss weights a1 = a2 = 1, a3 = 0.1, b1 = b2 = 1; stage-2 lr fixed at
  1e-3 * 32 / 256; image-score pooling 21 x 21 (DRAEM), stride 1, zero padding.
"""
from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from maskjax import config_base
from maskjax.errors import ConfigError

VARIANTS = ("mvtec", "visa", "per_category", "demo", "demo_multi", "reduced",
            "no_stage1", "no_plpm", "no_tbm", "recon_score", "bf16")

# What a run recorded before these keys existed did (maskjax.workdir.fill_method_defaults
# fills them into an old run's config.json for eval / predict / export / resume checks).
# (warmup_fraction as the demo's: unused with the constant schedule)
RECORDED_DEFAULTS = {"method.stage1.schedule": "constant", "method.stage1.warmup_fraction": 0.05,
                     "method.builtin_textures": True, "method.stage2.self_texture_prob": 0.0,
                     "method.stage2.backdrop_prob": 0.0, "method.map_sigma": 0.0}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variants = config_base.parse_variants(arg, VARIANTS, "configs/mala.py", default="")
  c = config_base.base_config()

  # -- data: MVTec AD + VisA together ------------------------------------------
  c.input.format = "multi"
  c.input.categories = ("mvtec/*", "visa/*")
  c.input.image_size = 224
  # Per-stage settings (method.<stage>.lr / batch_size / epochs) apply unless
  # these global keys are set: then every stage uses the global value.
  c.optim.lr = config_dict.placeholder(float)          # None: each stage's lr; set: every stage
  c.input.batch_size = config_dict.placeholder(int)    # None: each stage's batch; set: every stage
  c.train.epochs = config_dict.placeholder(int)        # None: each stage's epochs; set: every stage
  c.input.eval_batch_size = 32

  # -- model ----------------------------------------------------------------
  c.model.encoder = "vit_large_patch16"   # maskjax.models.vit.VIT_CONFIGS name
  # Replace any ViT constructor argument (dim, depth, heads, ...), e.g. for reduced widths.
  c.model.encoder_overrides = ml_collections.ConfigDict()
  c.model.decoder_dim = 512               # MAE decoder width (stage 2 keeps the decoder)
  c.model.decoder_depth = 8               # MAE decoder blocks
  c.model.decoder_heads = 16              # MAE decoder attention heads
  c.model.plpm_width = 64                 # PLPM conv widths: w, 2w, 4w, 8w
  c.model.plpm_layers = 4                 # PLPM discriminator conv blocks
  c.model.init_from = ""                  # converted MAE checkpoint (encoder [+ decoder])

  # -- method ---------------------------------------------------------------------
  c.method.name = "mala"
  c.method.mask_ratio = 0.75              # stage 1: share of patch tokens the MAE does not see
  # stage 1: a1 * L1 + a2 * (1 - SSIM) + a3 * pseudo-label term (paper eq. 3)
  c.method.a1 = 1.0                       # weight of L1(recon, x)
  c.method.a2 = 1.0                       # weight of 1 - SSIM(recon, x)
  c.method.a3 = 0.1                       # weight of the PLPM pseudo-label term
  # stage 2: b1 * L1(mask, p_anomaly) + b2 * focal (paper eq. 6)
  c.method.b1 = 1.0                       # weight of L1(mask, p_anomaly)
  c.method.b2 = 1.0                       # weight of the focal loss
  c.method.focal_gamma = 2.0              # focal loss gamma (DRAEM)
  c.method.score_kernel = 21              # image score = max(avgpool_k(map[0])), odd k
  # Gaussian sigma (px at input.image_size) smoothing the anomaly map, not the image score;
  # 0 = the paper's map, the anomaly probability itself
  c.method.map_sigma = 0.0
  # ablation switches
  c.method.use_stage1 = True              # False: no MAE stage, stage 2 from init_from / random
  c.method.use_plpm = True                # False: no PLPM discriminator (no pseudo-label term)
  c.method.use_tbm = True                 # False: maps from the decoder tokens alone (no TBM)
  c.method.scoring = "end_to_end"         # end_to_end | reconstruction (stage-1 model)
  c.method.recon_passes = 4               # reconstruction scoring: disjoint mask passes
  # per-stage schedules: steps = epochs * samples_per_category * num_categories / batch,
  # unless config.train.steps > 0 (then every stage runs that many steps)
  c.method.stage1 = ml_collections.ConfigDict()
  c.method.stage1.epochs = 2000           # balanced epochs of samples_per_category per category
  c.method.stage1.samples_per_category = 200  # training images drawn per category each epoch
  c.method.stage1.batch_size = 128        # global batch of stage 1
  c.method.stage1.lr = 0.0                # 0 = 1e-3 * batch_size / 256 (paper)
  c.method.stage1.base_lr = 1e-3          # lr per 256 images of batch, when lr is 0
  # stage-1 (and PLPM) lr schedule: warmup_cosine = MAE's per-step linear warm-up from
  # optim.warmup_init_lr (0) then half-cycle cosine to optim.end_lr (0) | constant (before)
  c.method.stage1.schedule = "warmup_cosine"
  # warmup_cosine: share of stage 1 warming up, in whole epochs (MAE: 40 of 800; 100 of 2000)
  c.method.stage1.warmup_fraction = 0.05
  c.method.stage2 = ml_collections.ConfigDict()
  c.method.stage2.epochs = 700            # balanced epochs of samples_per_category per category
  c.method.stage2.samples_per_category = 80  # training images drawn per category each epoch
  c.method.stage2.batch_size = 32         # global batch of stage 2
  c.method.stage2.lr = 0.0                # 0 = base_lr * batch_size / 256, fixed
  c.method.stage2.base_lr = 1e-3          # lr per 256 images of batch, when lr is 0
  c.method.stage2.anomaly_prob = 0.8      # 64 of 80 samples per category anomalous
  c.method.stage2.local_prob = 0.5        # of anomalies: restricted to the foreground
  # of anomalies: texture = the image itself shifted (ops.perlin.self_texture; not in the
  # paper, whose textures are all DTD's)
  c.method.stage2.self_texture_prob = 0.0
  # of local anomalies (foreground found): texture = the backdrop, nearest background pixel
  # per foreground pixel (ops.perlin.backdrop_texture): a missing part; not in the paper
  c.method.stage2.backdrop_prob = 0.0
  # stage-2 texture source: False = refuse to train without input.texture_dir (the paper
  # pastes DTD textures) | True = built-in procedural textures when input.texture_dir is empty
  c.method.builtin_textures = False
  c.method.disc_lr = 0.0                  # PLPM lr; 0 = the stage-1 lr

  # -- optimiser (both stages; lr per stage above) ------------------------------------
  c.optim.name = "adamw"
  c.optim.weight_decay = 0.05
  c.optim.b1 = 0.9
  c.optim.b2 = 0.95
  c.optim.schedule = "constant"           # stage 2 (paper: fixed lr); stage 1: method.stage1.schedule
  # MAE's parameter groups (timm add_weight_decay): no decay for rank <= 1 tensors (biases,
  # LayerNorm); cls_token / mask_token are decayed as in MAE pretraining | "all" (before)
  c.optim.decay_mask = "no_bias_norm"
  c.optim.no_decay_names = ()             # none: MAE pretraining skips no names (fixed pos_embed)

  c.input.train_on_val = True   # train on every normal, as the paper (threshold: docs/RECIPES.md)
  c.train.log_every = 50
  c.train.checkpoint_every = 1000

  if "mvtec" in variants and "visa" in variants:
    raise ConfigError("configs/mala.py: variants 'mvtec' and 'visa' exclude each other "
                      "(the default already trains on both)")
  if "mvtec" in variants:
    c.input.categories = ("mvtec/*",)
  if "visa" in variants:
    c.input.categories = ("visa/*",)
  if "per_category" in variants:
    c.method.per_category = True    # True: one model per category (a run selects exactly one)
  else:
    c.method.per_category = False   # True: one model per category (a run selects exactly one)

  if "reduced" in variants:
    c.model.encoder_overrides.dim = 64      # ViT width
    c.model.encoder_overrides.depth = 4     # ViT blocks
    c.model.encoder_overrides.heads = 4     # ViT attention heads
    c.model.decoder_dim = 32
    c.model.decoder_depth = 2
    c.model.decoder_heads = 4
    c.model.plpm_width = 8
    c.input.image_size = 64
    c.method.score_kernel = 5
    c.method.stage1.batch_size = 4
    c.method.stage2.batch_size = 4
    c.input.eval_batch_size = 8
    c.train.steps = 2
    c.train.log_every = 1
    c.method.builtin_textures = True        # smoke tests: no DTD here
    c.model.allow_random_init = True        # smoke tests: no MAE weights here

  if "demo" in variants or "demo_multi" in variants:
    if "demo_multi" in variants:
      c.input.categories = ("mvtec/*", "visa/*")   # data_dir: demo.generate_multi(root)
    else:
      c.input.format = "mvtec"
      c.input.categories = ("*",)
    c.input.image_size = 64
    c.input.eval_batch_size = 32
    c.model.encoder = "vit_tiny_patch8"             # 8 x 8 tokens at 64 px
    c.model.allow_random_init = True                # no pretrained weights ship with the demo
    c.model.encoder_overrides = ml_collections.ConfigDict()
    c.model.decoder_dim = 128
    c.model.decoder_depth = 2
    c.model.decoder_heads = 4
    c.model.plpm_width = 16
    c.model.plpm_layers = 3
    c.method.score_kernel = 5
    # the 8 x 8-token map marks a large defect's outline more than its inside; a Gaussian of
    # 4 px fills it in (pagoda pixel AUROC 70.3 in an earlier run, 90.7 with it; docs/RECIPES.md)
    c.method.map_sigma = 4.0
    # 4 categories x 64 samples / 32 = 8 steps per epoch: 400 + 2560 steps
    c.method.stage1.epochs = 50
    c.method.stage1.samples_per_category = 64
    c.method.stage1.batch_size = 32
    c.method.stage1.base_lr = 1.5e-3
    # 160 epochs (1280 steps) left foliage's and pagoda's pixel AUROC below the
    # trivial baseline on the photo demo; 320 lifts foliage above it (README.md)
    c.method.stage2.epochs = 320
    c.method.stage2.samples_per_category = 64
    c.method.stage2.batch_size = 32
    c.method.stage2.base_lr = 8e-3              # lr 1e-3
    c.method.stage2.local_prob = 0.8            # the demo's defects lie on the object
    c.optim.weight_decay = 0.05
    # the demo keeps its measured recipe: constant lr, decay on every tensor, built-in textures
    c.method.stage1.schedule = "constant"
    c.optim.decay_mask = "all"
    c.method.builtin_textures = True
    c.input.train_on_val = False                # the demo holds 10 % of the normals out
    c.train.log_every = 20
    c.train.checkpoint_every = 100
    c.eval.num_heatmaps = 2

  if "no_stage1" in variants:
    c.method.use_stage1 = False
  if "no_plpm" in variants:
    c.method.use_plpm = False
  if "no_tbm" in variants:
    c.method.use_tbm = False
  if "recon_score" in variants:
    c.method.scoring = "reconstruction"
  if "bf16" in variants:
    c.train.compute_dtype = "bfloat16"
  return c
