"""ACA (Bozorgtabar & Mahapatra, AAAI 2023): attention-conditioned masked
pretraining with Sinkhorn clustering, then attention-guided anomaly fine-tuning.

Stage 1 ("pretrain")
  Student = ViT (`config.model.backbone`, DINO weights from
  `config.model.init_from` or random, see `describe()`) + `ProjectionHead`
  (MLP -> L2 bottleneck) + K prototypes C [K, bottleneck] (L2-normalised rows,
  re-normalised after every optimiser step). Teacher = EMA of the student's
  ViT and head: teacher = m * teacher + (1 - m) * student after each step, m
  = `momentum` (constant) or, with `momentum_schedule="cosine"`,
  m_t = 1 - (1 - m0) (cos(pi t / T) + 1) / 2 (DINO), t = the step just taken.
  The prototypes are shared: the teacher scores against stop_gradient(C).

  Views are made on the device inside the jitted step from the [0, 1] batch
  image: `image_source` when `config.input.source_size` > 0 (the photo
  resized once by the host pipeline to that side, 512 in the full config),
  else `image` (`input.image_size`; the demo):
    * random resized crop: area fraction U(scale), log aspect U(log 3/4, log 4/3),
      clipped to the image, uniform position, resampled to the view size with
      separable triangle-kernel weights (bilinear, antialiased when shrinking,
      `maskjax.ops.augment.resample_matrix`);
    * horizontal flip p = 0.5;
    * colour jitter p = 0.8: brightness, contrast, saturation factors
      U(1 - s, 1 + s) with s = (0.4, 0.4, 0.2) and, with `augment = "dino"`, a
      hue shift U(-0.1, 0.1) and the four operations in a random order per view
      (torchvision ColorJitter(0.4, 0.4, 0.2, 0.1)); then grayscale p = 0.2;
    * `augment = "dino"` only: Gaussian blur, sigma U(0.1, 2.0) px of the view,
      and solarisation (x >= 128/255 -> 1 - x) with DINO's per-view
      probabilities (`DINO_VIEW_AUGMENT`):
        view                              blur p   solarise p   DINO's view
        teacher (1 global crop)           1.0      0            global view 1
        student global crops (num_global) 0.1      0.2          global view 2
        student local crops (num_local)   0.5      0            local views
      `augment = "basic"` (the demo): no hue, blur or solarisation, fixed
      jitter order b, c, s; its random draws are what they always were.
  The teacher view is one global crop (`global_size`, scale `global_scale`,
  DINO (0.4, 1)); the student views are `num_global` (1) other global crops
  and `num_local` (8) local crops (`local_size`, scale `local_scale`, (0.05, 0.4)).
  Decision (the mapping onto DINO's views): the paper applies "two random data
  augmentations, yielding two augmented images", one the teacher's view, the
  other cut into the student's global and local crops, and "follows the data
  augmentations of DINO", whose two global views are asymmetric. The teacher's
  single view takes DINO's first global view (always blurred, never
  solarised: the clean-structure target the Sinkhorn assignment is computed
  from), the student's global crops the second (rarely blurred, solarised
  p = 0.2), as in DINO where the second view is the more distorted input. Each
  student crop is augmented on its own (DINO's per-crop transforms), not cut
  from one shared augmented image. With `input.source_size` > 0 the crops
  are cut from `image_source`, as DINO crops the original photograph (the
  boxes are fractions of the image: `random_resized_crop_params` draws the
  same fractional box at any side, so only the pixels the crop resamples
  from change; `resample_matrix` antialiases when shrinking); with 0 from
  the `input.image_size` image (the demo; upsampled, softer crops).

  Masking of the student views (`method.masking`, paper Table 4):
    apmask  drop the int(r N) least-attended patch tokens (r = `mask_ratio`),
            attention = head-mean CLS row of the last block computed on the
            full student view by `attention_source` ("teacher": the EMA network,
            default; "student": the student's own weights), under stop_gradient.
            `maskjax.ops.masks.lowest_attention_keep` ranks ties by index. The
            student forward then runs on the N - int(r N) kept tokens only, so the
            masked view really costs less (the attention pass is forward-only).
    random  per-sample uniformly random drop of the same int(r N) tokens;
    none    all tokens.
  Loss: teacher scores s_t = z_t C^T -> Sinkhorn-Knopp targets q =
  sinkhorn(s_t, eps, iters) (no gradient; sums over the global batch, SwAV);
  each student view j: p_j = softmax(z_j C^T / tau); loss = mean over views and
  batch of -sum_k q_k log p_jk. AdamW, linear warmup `warmup_init_lr` -> lr then
  cosine (`config.optim`); weight decay (`optim.decay_mask = "no_bias_norm"`,
  `optim.no_decay_names = ("prototypes",)`, full config) on the rank >= 2
  tensors (DINO's `get_params_groups`: not on biases and LayerNorm scales /
  offsets) except the prototypes (the parameter named "prototypes"), in both
  stages; the demo decays every tensor (`decay_mask = "all"`).

Stage 2 ("finetune")
  Classifier ViT initialised from stage 1's EMA teacher backbone
  (`finetune.init_from_stage1 = "teacher"`, full config; "student" = the
  student's, the demo) or from `init_from` / random when stage 1 is switched
  off. Decision: the paper fine-tunes "the pre-trained ViT" without naming
  the network; DINO evaluates and releases its teacher, which is the better
  network throughout training (DINO paper, section 5.2; its evaluation scripts load
  `--checkpoint_key teacher`). `ClassHead` (CLS -> MLP
  of the projection's shape, `head_hidden` x `head_layers`, last layer -> 2
  logits) and `AttentionSegHead` (learned weighting of the last block's CLS
  attention per head -> patch logits -> bilinear upsampling -> sigmoid).
  Loss = lambda_det * CE(logits, label) + lambda_seg * Dice(map, paste mask).

  Synthetic anomalies (`finetune.synthesis`):
    device (default) attention-guided cut-paste in jnp inside the jitted step,
            the same geometry as `maskjax.ops.cutpaste.attention_cutpaste`: every
            image first colour-jittered (`finetune.augment = "color_jitter"`:
            ColorJitter(0.1, 0.1, 0.1, 0.1), random order, normal and pasted
            examples alike, so the jitter is no cue; "none" = the demo); patch
            w, h ~ U(0.1 W, 0.4 W) / U(0.1 H, 0.4 H), cut (`finetune.cut_location`)
            centred at a pixel drawn from the same attention distribution as the
            paste (an independent draw; "attention", full config; the centre is
            moved the least distance that keeps the patch inside the image) or
            at a uniform location ("uniform", the demo) or centred at a pixel
            drawn from the inverted attention 1 - a ("background", not in the
            paper: backdrop pasted on the object is a missing part),
            rotated U(-45, 45) deg, resized U(0.8, 1.2), colour-jittered (+-`jitter`),
            pasted (copy) centred at a pixel drawn from softmax((a - 1) / T) with a
            the min-max normalised, bilinearly upsampled head-mean CLS attention
            on the clean image of the *pre-trained* ViT the stage starts from, a
            frozen copy kept in the state (`state["guide"]`, `finetune.guide =
            "pretrained"`; "current" = the network being fine-tuned, which lets
            the segmentation head (itself a weighting of that attention) fit the
            paste locations by following its own attention instead of the
            pasted content), T = `temperature`.
            Each example is pasted with probability `anomaly_prob` (0.5: half the
            batch normal); label 1 iff the pasted mask is non-empty. The host
            pipeline cannot run the ViT and training examples carry no record
            index to look attention up, so this is where the attention exists.
    host    `maskjax.ops.cutpaste.attention_cutpaste` in the grain workers with
            `poisson` blending optional (`finetune.poisson`); the host has no
            attention map, so the paste location is drawn from a uniform map
            (documented loss of the attention guidance; use for Poisson blending).
            `cut_location` must be "uniform" here (the `poisson` variant sets it);
            `augment` applies (`ops.cutpaste.color_jitter`, NumPy).
  Decisions from the paper: "the softmax distribution of A_CLS ... to guide
  sampling of locations to cut and paste patches within the same image" (both
  locations attention-guided; Fig. 1 (d): "cutting and pasting local patch
  within the salient region"); "we apply data augmentations to the normal
  training image before creating synthetic anomalies" (which ones is not
  said: CutPaste's public code's ColorJitter(0.1, 0.1, 0.1, 0.1), no flips or
  rotations, which are real anomaly types in MVTec AD, e.g. metal_nut "flip").

Scoring (`score`, pure, jitted by the loop)
  For every scale S in `method.test_scales` the [0, 1] image is resized
  (bilinear, antialiased when shrinking) to S x S: `image_source` (the
  photo at `input.source_size`, 512 in the full config) when that key is > 0,
  as the paper resizes the original test image to each scale, else `image`
  (upsampled; the demo); then ImageNet-normalised and run through the ViT (learned
  position embedding interpolated to the S/p grid, DINO's bicubic rule); the
  patch logits are resized bilinearly to the input H x W and passed through a
  sigmoid; p_S = softmax(logits)[1]. anomaly_map = mean over scales of the maps;
  image_score = mean_S p_S (for AUROC); decision = majority vote of p_S > 0.5
  (more than half of the scales). The maps are at the `input.image_size`
  H x W of `image` either way (the masks' resolution; the paper resizes them
  to the original test resolution). Fine-tuning and the synthesis read
  `image` only.
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from maskjax import train_utils
from maskjax.errors import ConfigError
from maskjax.methods.base import Duration, Method, PretrainedWeights, Stage, config_choice
from maskjax.methods.aca import heads as aca_heads
from maskjax.models import vit as vit_lib
from maskjax.ops import cutpaste, losses, masks, normalize, sinkhorn
from maskjax.ops.augment import LUMA as _LUMA, make_views, random_color_jitter

PyTree = Any
MASKINGS = ("apmask", "random", "none")
ATTENTION_SOURCES = ("teacher", "student")
SYNTHESES = ("device", "host")
GUIDES = ("pretrained", "current")
PRETRAIN_AUGMENTS = ("dino", "basic")
CUT_LOCATIONS = ("attention", "uniform", "background")
FINETUNE_AUGMENTS = ("color_jitter", "none")
INIT_SOURCES = ("teacher", "student")

# `pretrain.augment = "dino"`: facebookresearch/dino DataAugmentationDINO per
# ACA view (`maskjax.ops.augment.make_views` options). Every view also gets
# the flip p=0.5, ColorJitter(0.4, 0.4, 0.2, hue) p=0.8 and grayscale p=0.2.
# The teacher's one view is DINO's global view 1, the student's global views
# DINO's global view 2, the local views DINO's local views (module docstring).
DINO_VIEW_AUGMENT = {
    "teacher": {"hue": 0.1, "p_blur": 1.0, "p_solarize": 0.0, "random_order": True},
    "global": {"hue": 0.1, "p_blur": 0.1, "p_solarize": 0.2, "random_order": True},
    "local": {"hue": 0.1, "p_blur": 0.5, "p_solarize": 0.0, "random_order": True},
}
# `finetune.augment = "color_jitter"`: torchvision ColorJitter(0.1, 0.1, 0.1,
# 0.1) on every fine-tuning image before the synthesis (the CutPaste PyTorch
# code's `train_transform`, Runinho/pytorch-cutpaste run_training.py).
FINETUNE_JITTER = (0.1, 0.1, 0.1, 0.1)


# ----------------------------------------------------------------------------
# pure helpers (tested against NumPy)
# ----------------------------------------------------------------------------
def ema_update(teacher: PyTree, student: PyTree, momentum) -> PyTree:
  """teacher * m + (1 - m) * student, leaf by leaf."""
  return jax.tree.map(lambda t, s: t * momentum + (1.0 - momentum) * s.astype(t.dtype),
                      teacher, student)


def momentum_at(step, total_steps: int, base: float, schedule: str = "cosine"):
  """EMA momentum after `step` steps: constant `base`, or DINO's cosine
  1 - (1 - base) * (cos(pi * step / total) + 1) / 2 (base at 0, 1 at the end)."""
  if schedule == "constant":
    return jnp.asarray(base, jnp.float32)
  t = jnp.asarray(step, jnp.float32) / max(int(total_steps), 1)
  return 1.0 - (1.0 - base) * (jnp.cos(jnp.pi * t) + 1.0) / 2.0


def l2_normalize_rows(c: jax.Array) -> jax.Array:
  c = c.astype(jnp.float32)
  return c / jnp.maximum(jnp.linalg.norm(c, axis=-1, keepdims=True), 1e-12)


def swapped_cross_entropy(targets: jax.Array, student_scores: jax.Array,
                          temperature: float) -> jax.Array:
  """mean over rows of -sum_k q_k log softmax(s / tau)_k; targets [M,K], scores [M,K]."""
  logp = jax.nn.log_softmax(student_scores.astype(jnp.float32) / temperature, axis=-1)
  return -jnp.mean(jnp.sum(targets * logp, axis=-1))


def _bilinear_sample(img: jax.Array, yy: jax.Array, xx: jax.Array) -> jax.Array:
  """img [H,W,C] at float coordinates (clamped to the image) -> [..., C]."""
  h, w = img.shape[:2]
  yy = jnp.clip(yy, 0.0, h - 1.0)
  xx = jnp.clip(xx, 0.0, w - 1.0)
  y0 = jnp.floor(yy).astype(jnp.int32)
  x0 = jnp.floor(xx).astype(jnp.int32)
  y1 = jnp.minimum(y0 + 1, h - 1)
  x1 = jnp.minimum(x0 + 1, w - 1)
  wy = (yy - y0)[..., None]
  wx = (xx - x0)[..., None]
  top = img[y0, x0] * (1 - wx) + img[y0, x1] * wx
  bot = img[y1, x0] * (1 - wx) + img[y1, x1] * wx
  return top * (1 - wy) + bot * wy


def location_logits(attention: jax.Array, temperature: float) -> jax.Array:
  """[H,W] attention (any range) -> flat logits (a - 1) / T [H*W] of the
  location distribution softmax((a - 1) / T), a = the min-max normalised map
  (`ops.cutpaste.location_probabilities`)."""
  a = attention.astype(jnp.float32)
  lo, hi = jnp.min(a), jnp.max(a)
  a = jnp.where(hi > lo, (a - lo) / jnp.maximum(hi - lo, 1e-12), 0.0)
  return ((a - 1.0) / temperature).reshape(-1)


def draw_location(key: jax.Array, logits: jax.Array, width: int) -> tuple[jax.Array, jax.Array]:
  """One pixel (y, x) (float32) drawn from softmax(logits) over the H*W pixels."""
  flat = jax.random.categorical(key, logits)
  return (flat // width).astype(jnp.float32), (flat % width).astype(jnp.float32)


def cutpaste_one(key: jax.Array, image: jax.Array, attention: jax.Array, *,
                 temperature: float = 0.1, max_rotation: float = 45.0,
                 scale_range=(0.8, 1.2), jitter: float = 0.1,
                 cut_location: str = "uniform"):
  """Device version of `ops.cutpaste.attention_cutpaste` (copy compositing).

  image [H,W,3] in [0,1]; attention [H,W] already at image size (any range, it
  is min-max normalised here). -> (image [H,W,3], mask [H,W] {0,1}).

  cut_location: "uniform" = the patch's top-left corner uniform over the
  positions inside the image; "attention" = the patch centre drawn from the
  same attention distribution as the paste centre (an independent draw, from
  the key the uniform corner would use), then moved the least distance that
  puts the whole patch inside the image; "background" = the same, drawn from
  the inverted attention 1 - a (the least salient pixels)."""
  h, w = image.shape[:2]
  ks = jax.random.split(key, 8)
  pw = jnp.maximum(1.0, jnp.round(jax.random.uniform(ks[0], (), minval=0.1 * w, maxval=0.4 * w)))
  ph = jnp.maximum(1.0, jnp.round(jax.random.uniform(ks[1], (), minval=0.1 * h, maxval=0.4 * h)))
  logits = location_logits(attention, temperature)
  if cut_location in ("attention", "background"):
    # "background": the centre drawn from softmax((a' - 1) / T), a' = 1 - a, the
    # least attended pixels; pasted on the salient ones it takes a part away
    # (MVTec's "missing part"), which a cut from the object itself cannot show
    src_logits = logits if cut_location == "attention" else location_logits(-attention, temperature)
    src_cy, src_cx = draw_location(ks[2], src_logits, w)
    src_cy = jnp.clip(src_cy, (ph - 1) / 2.0, h - 1 - (ph - 1) / 2.0)
    src_cx = jnp.clip(src_cx, (pw - 1) / 2.0, w - 1 - (pw - 1) / 2.0)
  else:
    sy0 = jnp.floor(jax.random.uniform(ks[2]) * (h - ph + 1))
    sx0 = jnp.floor(jax.random.uniform(ks[3]) * (w - pw + 1))
    src_cy, src_cx = sy0 + (ph - 1) / 2.0, sx0 + (pw - 1) / 2.0
  theta = jnp.deg2rad(jax.random.uniform(ks[4], (), minval=-max_rotation, maxval=max_rotation))
  scale = jax.random.uniform(ks[5], (), minval=scale_range[0], maxval=scale_range[1])
  cy, cx = draw_location(ks[6], logits, w)
  yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) - cy,
                        jnp.arange(w, dtype=jnp.float32) - cx, indexing="ij")
  ct, st = jnp.cos(theta), jnp.sin(theta)
  ly = (ct * yy + st * xx) / scale
  lx = (-st * yy + ct * xx) / scale
  inside = (jnp.abs(ly) <= ph / 2.0) & (jnp.abs(lx) <= pw / 2.0)
  mask = inside.astype(jnp.float32)
  patch = _bilinear_sample(image.astype(jnp.float32), src_cy + ly, src_cx + lx)
  f = jax.random.uniform(ks[7], (3,), minval=1.0 - jitter, maxval=1.0 + jitter)
  x = patch * f[0]
  denom = jnp.maximum(jnp.sum(mask), 1.0)
  mean = jnp.sum((x @ _LUMA) * mask) / denom
  x = (x - mean) * f[1] + mean
  gray = (x @ _LUMA)[..., None]
  x = jnp.clip(gray + (x - gray) * f[2], 0.0, 1.0)
  m = mask[..., None]
  return image * (1.0 - m) + x * m, mask


def majority_vote(probs: jax.Array) -> jax.Array:
  """probs [T, B] -> bool [B]: more than half of the T scales say p > 0.5."""
  votes = jnp.sum((probs > 0.5).astype(jnp.int32), axis=0)
  return 2 * votes > probs.shape[0]


# ----------------------------------------------------------------------------
# host transform (Poisson blending option)
# ----------------------------------------------------------------------------
class HostCutPaste:
  """Stage-2 host transform: `ops.cutpaste.attention_cutpaste` with a uniform
  location map (no attention on the host), optional Poisson blending, applied
  with probability `anomaly_prob` (picklable for grain workers); the pasted
  patch's colour jitter is `jitter` (`finetune.jitter`, as on the device).
  `augment = "color_jitter"`: `ops.cutpaste.color_jitter(FINETUNE_JITTER)` on
  every image first (drawn after the paste decision, so "none" draws what it
  always drew)."""

  def __init__(self, anomaly_prob: float = 0.5, poisson: bool = False, augment: str = "none",
               jitter: float = 0.1):
    self.anomaly_prob = float(anomaly_prob)
    self.poisson = bool(poisson)
    self.jitter = float(jitter)
    self.augment = config_choice(augment, FINETUNE_AUGMENTS, "config.method.finetune.augment")

  def __call__(self, example: dict, rng: np.random.Generator) -> dict:
    out = dict(example)
    image = np.asarray(example["image"], np.float32)
    paste = rng.random() < self.anomaly_prob
    if self.augment == "color_jitter":
      image = cutpaste.color_jitter(image, rng, FINETUNE_JITTER)
      out["image"] = image
    if not paste:
      out["mask"] = np.zeros(image.shape[:2], np.float32)
      out["label"] = np.int32(0)
      return out
    img, mask = cutpaste.attention_cutpaste(image, np.ones((4, 4), np.float32), rng,
                                            poisson=self.poisson, jitter=self.jitter)
    out["image"] = img.astype(np.float32)
    out["mask"] = mask.astype(np.float32)
    out["label"] = np.int32(mask.max() > 0)
    return out


def _image_major(x: jax.Array, num: int) -> jax.Array:
  """View-major rows [num * B, ...] -> [B, num, ...] (split by image)."""
  return jnp.swapaxes(x.reshape((num, -1) + x.shape[1:]), 0, 1)


def _view_major(x: jax.Array) -> jax.Array:
  """[B, num, ...] -> view-major rows [num * B, ...] (`make_views`' order)."""
  return jnp.swapaxes(x, 0, 1).reshape((-1,) + x.shape[2:])


# ----------------------------------------------------------------------------
# the method
# ----------------------------------------------------------------------------
class Aca(Method):
  name = "aca"
  uses_init_from = True
  uses_source_image = True
  pretrained = (PretrainedWeights.from_url(
      "model.init_from", "ViT-S/16 encoder",
      "https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/"
      "dino_deitsmall16_pretrain.pth",
      arch="vit_small_patch16"),)
  input_normalization = normalize.IMAGENET_NAME

  def __init__(self, config, data):
    super().__init__(config, data)
    m = config.method
    self.pre, self.fine = m.pretrain, m.finetune
    for section, key, allowed in (
        ("pretrain", "masking", MASKINGS), ("pretrain", "attention_source", ATTENTION_SOURCES),
        ("pretrain", "augment", PRETRAIN_AUGMENTS), ("finetune", "synthesis", SYNTHESES),
        ("finetune", "guide", GUIDES), ("finetune", "cut_location", CUT_LOCATIONS),
        ("finetune", "augment", FINETUNE_AUGMENTS),
        ("finetune", "init_from_stage1", INIT_SOURCES)):
      config_choice(m[section][key], allowed, f"config.method.{section}.{key}")
    if self.fine.synthesis == "host" and self.fine.cut_location != "uniform":
      raise ConfigError(f"config.method.finetune.cut_location={self.fine.cut_location!r} needs "
                        "finetune.synthesis='device': the host transform has no attention map; "
                        "set finetune.cut_location='uniform' for host synthesis")
    if not float(self.fine.seg_lr_scale) > 0.0:
      raise ConfigError(f"config.method.finetune.seg_lr_scale={self.fine.seg_lr_scale} must be > 0 "
                        "(1: the segmentation head's weights learn at the stage's lr)")
    if not 0.0 <= float(self.pre.mask_ratio) < 1.0:
      raise ConfigError(f"config.method.pretrain.mask_ratio={self.pre.mask_ratio} must be in [0, 1)")
    name = str(config.model.backbone)
    kw = vit_lib.vit_config(name, config.model.backbone_overrides, "config.model.backbone")
    self.vit_kw = kw
    self.patch = int(kw["patch"])
    self.img = int(config.input.image_size)
    self.gsize, self.lsize = int(self.pre.global_size), int(self.pre.local_size)
    self.scales = tuple(int(s) for s in m.test_scales)
    # 0: crops and test scales from `image`; > 0: from `image_source` (pipeline)
    self.source = config.input.source_size
    if isinstance(self.source, bool) or not isinstance(self.source, int) or self.source < 0:
      raise ConfigError(f"config.input.source_size={self.source!r} must be an int >= 0 (0: "
                        "crops and test scales from the input image; > 0: from image_source)")
    for key, s in ([("input.image_size", self.img), ("method.pretrain.global_size", self.gsize),
                    ("method.pretrain.local_size", self.lsize)]
                   + [("method.test_scales", s) for s in self.scales]):
      if s <= 0 or s % self.patch:
        raise ConfigError(f"config.{key}={s} must be a positive multiple of the patch "
                          f"size {self.patch} ({name})")
    if not self.scales:
      raise ConfigError("config.method.test_scales is empty; give at least one size")
    self.dtype = train_utils.compute_dtype(config.train)
    abstract = nnx.eval_shape(lambda: self._build(nnx.Rngs(0)))
    self.f = {k: train_utils.Functional(v) for k, v in abstract.items()}
    for k in ("vit",):
      if jax.tree.leaves(self.f[k].rest):
        raise RuntimeError(f"aca: the {k} module holds non-parameter state; use "
                           "pos_embed='learned'")

  # -- modules -----------------------------------------------------------------
  def _build(self, rngs: nnx.Rngs) -> dict:
    p = self.config.model
    vit = vit_lib.ViT(img_size=self.gsize, dtype=self.dtype, rngs=rngs, **self.vit_kw)
    dim, heads = int(self.vit_kw["dim"]), int(self.vit_kw["heads"])
    head = aca_heads.ProjectionHead(dim, int(p.bottleneck), int(p.head_hidden),
                                    int(p.head_layers), dtype=self.dtype, rngs=rngs)
    return {"vit": vit, "head": head,
            "cls": aca_heads.ClassHead(dim, int(p.head_hidden), int(p.head_layers),
                                       dtype=self.dtype, rngs=rngs),
            "seg": aca_heads.AttentionSegHead(heads, lr_scale=float(self.fine.seg_lr_scale),
                                              rngs=rngs)}

  def _fresh(self, rng: jax.Array) -> dict:
    mods = self._build(nnx.Rngs(params=rng))
    return {k: train_utils.split_pure(v)[1] for k, v in mods.items()}

  def _vit(self, params, x, **kw):
    out, _ = self.f["vit"].apply(params, self.f["vit"].rest, x, **kw)
    return out

  def _head(self, params, x):
    out, _ = self.f["head"].apply(params, {}, x)
    return out

  # -- pretrained weights ----------------------------------------------------------
  def _pretrained_vit(self, params: dict) -> dict:
    """`params` with `config.model.init_from` (a converted ViT checkpoint) put
    in (`maskjax.weights.load_params`: read on the host, init stays jittable)."""
    path = str(self.config.model.init_from)
    if not path:
      return params
    from maskjax import weights
    return weights.load_params(
        params, path, where=f"config.model.init_from={path!r} does not fit "
        f"config.model.backbone={self.config.model.backbone!r} at {self.gsize} px")

  # -- stages -----------------------------------------------------------------------
  def _stage_optim(self, scfg):
    """`config.optim` with the stage's lr and warm-up (epochs, or a fraction of
    fixed steps; converted by the loop)."""
    o = ml_collections.ConfigDict(self.config.optim.to_dict())
    o.lr = float(self.stage_setting("optim.lr", scfg.lr))
    o.warmup_epochs = int(scfg.warmup_epochs)
    o.warmup_fraction = float(scfg.warmup_fraction)
    return o

  def _duration(self, scfg) -> Duration:
    return Duration(steps=int(scfg.steps),
                    epochs=int(self.stage_setting("train.epochs", scfg.epochs)))

  def _batch_key(self, stage_key: str) -> str:
    return "input.batch_size" if self.config.input.batch_size is not None else stage_key

  def _batch(self, scfg) -> int:
    return int(self.stage_setting("input.batch_size", scfg.batch_size))

  def stages(self) -> list[Stage]:
    out = []
    if bool(self.config.method.use_pretrain):
      pre = Stage("pretrain", self._duration(self.pre), self._batch(self.pre),
                  self._stage_optim(self.pre),
                  init_model=self.init_pretrain, loss_fn=self.loss_pretrain,
                  prepare=self.prepare_pretrain, batch_key=self._batch_key("method.pretrain.batch_size"),
                  after_update=lambda *a: self.after_update_pretrain(*a, stage=pre))
      out.append(pre)
    host = None
    if self.fine.synthesis == "host":
      host = HostCutPaste(float(self.fine.anomaly_prob), bool(self.fine.poisson),
                          str(self.fine.augment), float(self.fine.jitter))
    out.append(Stage("finetune", self._duration(self.fine), self._batch(self.fine),
                     self._stage_optim(self.fine),
                     init_model=self.init_finetune, loss_fn=self.loss_finetune,
                     prepare=self.prepare_finetune, host_transform=host,
                     batch_key=self._batch_key("method.finetune.batch_size")))
    return out

  # -- stage 1 -----------------------------------------------------------------------
  def init_pretrain(self, rng: jax.Array, previous_state: Optional[PyTree] = None) -> tuple:
    """-> (student {"vit", "head", "prototypes"}, {}, {"teacher": EMA copy})."""
    del previous_state
    k1, k2 = jax.random.split(rng)
    fresh = self._fresh(k1)
    vit = self._pretrained_vit(fresh["vit"])
    protos = l2_normalize_rows(jax.random.normal(
        k2, (int(self.config.model.num_prototypes), int(self.config.model.bottleneck))))
    student = {"vit": vit, "head": fresh["head"], "prototypes": protos}
    teacher = {"vit": jax.tree.map(jnp.copy, vit), "head": jax.tree.map(jnp.copy, fresh["head"])}
    return student, {}, {"teacher": teacher}

  def cls_attention(self, vit_params, x_norm) -> jax.Array:
    """Head-mean last-block CLS attention over the patches [B, N] (no gradient)."""
    out = self._vit(vit_params, x_norm, return_attention=True)
    att = jax.lax.stop_gradient(out["attention"])
    return att[:, :, 0, 1:].mean(axis=1)

  def student_keep_ids(self, key, state, views_norm) -> Optional[jax.Array]:
    """Kept patch-token indices of the student views [M, K] (None = all tokens)."""
    masking, r = self.pre.masking, float(self.pre.mask_ratio)
    n = (views_norm.shape[1] // self.patch) * (views_norm.shape[2] // self.patch)
    if masking == "none" or int(n * r) == 0:
      return None
    if masking == "random":
      # MAE-style per-sample random ranking, dropping the same int(N r) tokens
      # as APMask (mae_random_masking keeps int(N (1 - r)), one fewer when N r
      # is not an integer).
      noise = jax.random.uniform(key, (views_norm.shape[0], n))
      return jnp.sort(jnp.argsort(noise, axis=-1)[:, int(n * r):], axis=-1).astype(jnp.int32)
    src = (state["extras"]["teacher"] if self.pre.attention_source == "teacher"
           else state["params"])
    att = self.cls_attention(jax.lax.stop_gradient(src["vit"]), views_norm)
    return masks.lowest_attention_keep(att, r)

  def prepare_pretrain(self, state, batch, rng, step):
    """Teacher targets (Sinkhorn over the whole batch), the student's views and
    their kept tokens, per image: micro-batches see what the whole batch sees."""
    p = self.pre
    x = self._source_image(batch).astype(jnp.float32)
    b = x.shape[0]
    kt, kg, kl, kmg, kml = jax.random.split(rng, 5)
    gscale = tuple(p.global_scale)
    t_view = normalize.imagenet(make_views(kt, x, 1, self.gsize, gscale,
                                           **self.view_augment("teacher"))).astype(self.dtype)
    teacher = state["extras"]["teacher"]
    t_out = self._vit(teacher["vit"], t_view)
    z_t = self._head(teacher["head"], t_out["tokens"][:, 0])
    c_sg = jax.lax.stop_gradient(l2_normalize_rows(state["params"]["prototypes"]))
    q = jax.lax.stop_gradient(sinkhorn.sinkhorn(z_t @ c_sg.T, float(p.sinkhorn_eps),
                                                int(p.sinkhorn_iters)))
    per_example = {"q": q}
    for name, num, size, scale, kv, km in self._view_groups(kg, kl, kmg, kml):
      views = normalize.imagenet(make_views(kv, x, num, size, scale,
                                            **self.view_augment(name))).astype(self.dtype)
      keep = self.student_keep_ids(km, state, views)
      per_example[f"views/{name}"] = _image_major(views, num)
      if keep is not None:
        per_example[f"keep/{name}"] = _image_major(keep, num)
    return per_example, {"max_cluster_fraction": jnp.max(jnp.sum(q, axis=0)) / b}

  def _source_image(self, batch) -> jax.Array:
    """What crops and test scales are cut from: `image_source` with
    `input.source_size` > 0, else `image`."""
    if not self.source:
      return batch["image"]
    if "image_source" not in batch:
      raise ConfigError(f"config.input.source_size={self.source} but the batch has no "
                        f"'image_source' (keys: {', '.join(sorted(batch))}); batches from "
                        "maskjax.data.pipeline with this input config carry it")
    src = batch["image_source"]
    if src.shape[1:] != (self.source, self.source, 3):
      raise ConfigError(f"batch 'image_source' has shape {src.shape}, config.input.source_size="
                        f"{self.source} expects [B, {self.source}, {self.source}, 3]")
    return src

  def view_augment(self, view: str) -> dict:
    """`make_views` options of the teacher / "global" / "local" views:
    DINO's per-view blur, solarisation, hue and random jitter order with
    `pretrain.augment = "dino"`, none (flip, b/c/s jitter, grayscale) with "basic"."""
    return dict(DINO_VIEW_AUGMENT[view]) if self.pre.augment == "dino" else {}

  def _view_groups(self, kg, kl, kmg, kml):
    p = self.pre
    groups = [("global", int(p.num_global), self.gsize, tuple(p.global_scale), kg, kmg),
              ("local", int(p.num_local), self.lsize, tuple(p.local_scale), kl, kml)]
    return [g for g in groups if g[1] > 0]

  def loss_pretrain(self, student, state, batch, rng, step):
    p = self.pre
    q = batch["q"]
    c = l2_normalize_rows(student["prototypes"])
    total, count, aux = 0.0, 0, {}
    for name, num, *_ in self._view_groups(None, None, None, None):
      views = _view_major(batch[f"views/{name}"])
      keep = _view_major(batch[f"keep/{name}"]) if f"keep/{name}" in batch else None
      out = self._vit(student["vit"], views, keep_ids=keep)
      z = self._head(student["head"], out["tokens"][:, 0])
      ce = swapped_cross_entropy(jnp.tile(q, (num, 1)), z @ c.T, float(p.temperature))
      aux[f"loss/{name}"] = ce
      aux[f"tokens/{name}"] = jnp.asarray(out["tokens"].shape[1] - 1, jnp.float32)
      total = total + ce * num
      count += num
    aux["targets/max_cluster_fraction"] = batch["max_cluster_fraction"]
    return total / count, aux

  def after_update_pretrain(self, new, old, batch, outputs, rng, step, stage):
    """Prototypes back on the unit sphere; the teacher follows the student (EMA)."""
    student = dict(new["params"], prototypes=l2_normalize_rows(new["params"]["prototypes"]))
    mom = momentum_at(step + 1, stage.steps, float(self.pre.momentum),
                      str(self.pre.momentum_schedule))
    teacher = ema_update(old["extras"]["teacher"],
                         {"vit": student["vit"], "head": student["head"]}, mom)
    return dict(new, params=student, extras={"teacher": teacher}), {"momentum": mom}

  # -- stage 2 -----------------------------------------------------------------------
  def init_finetune(self, rng: jax.Array, previous_state: Optional[PyTree] = None) -> tuple:
    """-> (trained ViT + heads, {}, {"guide": frozen copy of the starting ViT}):
    the guide's attention places the synthetic anomalies (`finetune.guide`).
    After stage 1 the ViT is its EMA teacher's or its student's
    (`finetune.init_from_stage1`)."""
    fresh = self._fresh(rng)
    if previous_state is not None:
      if self.fine.init_from_stage1 == "teacher":
        vit = previous_state["extras"]["teacher"]["vit"]
      else:
        vit = previous_state["params"]["vit"]
    else:
      vit = self._pretrained_vit(fresh["vit"])
    params = {"vit": vit, "cls": fresh["cls"], "seg": fresh["seg"]}
    return params, {}, {"guide": jax.tree.map(jnp.copy, vit)}

  def forward(self, params, x01: jax.Array, out_hw: tuple[int, int]):
    """[B,S,S,3] in [0,1] -> (class logits [B,2], seg logits [B,H',W'] at out_hw)."""
    xn = normalize.imagenet(x01.astype(jnp.float32)).astype(self.dtype)
    out = self._vit(params["vit"], xn, return_attention=True)
    grid = (x01.shape[1] // self.patch, x01.shape[2] // self.patch)
    logits, _ = self.f["cls"].apply(params["cls"], {}, out["tokens"][:, 0])
    seg, _ = self.f["seg"].apply(params["seg"], {}, out["attention"], grid)
    seg = jax.image.resize(seg, (seg.shape[0], int(out_hw[0]), int(out_hw[1])), "linear")
    return logits.astype(jnp.float32), seg.astype(jnp.float32)

  def augment_normal(self, key, x01):
    """`finetune.augment`: ColorJitter(`FINETUNE_JITTER`) of every image [B,H,W,3]
    (key fold_in(key, 1): the synthesis' own draws are unchanged); "none": x01."""
    if self.fine.augment == "none":
      return x01
    keys = jax.random.split(jax.random.fold_in(key, 1), x01.shape[0])
    return jax.vmap(lambda k, im: random_color_jitter(k, im, FINETUNE_JITTER))(keys, x01)

  def synthesize(self, key, guide_vit, x01):
    """Device attention-guided cut-paste: -> (images, masks, labels).

    `guide_vit`: the ViT parameters whose CLS attention places the pastes (the
    frozen pre-trained backbone, `state["guide"]`, by default). The images are
    augmented first (`augment_normal`), the attention is that of the augmented
    image, and every image keeps the augmentation whether it gets a paste or not."""
    x01 = self.augment_normal(key, x01.astype(jnp.float32))
    b, h, w = x01.shape[:3]
    xn = normalize.imagenet(x01).astype(self.dtype)
    att = self.cls_attention(jax.lax.stop_gradient(guide_vit), xn)
    grid = (h // self.patch, w // self.patch)
    att = jax.image.resize(att.reshape(b, *grid).astype(jnp.float32), (b, h, w), "linear")
    kp, kc = jax.random.split(key)
    keys = jax.random.split(kc, b)
    fn = lambda k, im, a: cutpaste_one(k, im, a, temperature=float(self.fine.temperature),
                                       jitter=float(self.fine.jitter),
                                       cut_location=str(self.fine.cut_location))
    pasted, mask = jax.vmap(fn)(keys, x01, att)
    do = jax.random.uniform(kp, (b,)) < float(self.fine.anomaly_prob)
    mask = mask * do[:, None, None]
    images = jnp.where(do[:, None, None, None], pasted, x01)
    labels = (jnp.max(mask, axis=(1, 2)) > 0).astype(jnp.int32)
    return images, mask, labels

  def prepare_finetune(self, state, batch, rng, step):
    f = self.fine
    x = batch["image"].astype(jnp.float32)
    if f.synthesis == "device":
      guide = state["extras"]["guide"] if f.guide == "pretrained" else state["params"]["vit"]
      x, target, label = self.synthesize(rng, guide, x)
    else:
      target, label = batch["mask"].astype(jnp.float32), batch["label"].astype(jnp.int32)
    return {"x": x, "target": target, "label": label}, {}

  def loss_finetune(self, params, state, batch, rng, step):
    f = self.fine
    x, target, label = batch["x"], batch["target"], batch["label"]
    logits, seg = self.forward(params, x, x.shape[1:3])
    ce = jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(logits), label[:, None], 1))
    dice = losses.dice_loss(jax.nn.sigmoid(seg), target)
    acc = jnp.mean((jnp.argmax(logits, -1) == label).astype(jnp.float32))
    return float(f.lambda_det) * ce + float(f.lambda_seg) * dice, {
        "loss/ce": ce, "loss/dice": dice, "accuracy": acc,
        "anomalous_fraction": jnp.mean(label.astype(jnp.float32))}

  # -- scoring ------------------------------------------------------------------------
  def score(self, state: PyTree, batch, calibration: dict) -> dict:
    params = state["params"]
    b, h, w = batch["image"].shape[:3]          # maps at the input H x W
    x = self._source_image(batch).astype(jnp.float32)
    xh, xw = x.shape[1:3]
    maps, probs = [], []
    for s in self.scales:
      xs = x if (s, s) == (xh, xw) else jax.image.resize(x, (b, s, s, 3), "linear",
                                                         antialias=True)
      logits, seg = self.forward(params, xs, (h, w))
      maps.append(jax.nn.sigmoid(seg))
      probs.append(jax.nn.softmax(logits, axis=-1)[:, 1])
    probs = jnp.stack(probs)
    return {"anomaly_map": jnp.mean(jnp.stack(maps), axis=0).astype(jnp.float32),
            "image_score": jnp.mean(probs, axis=0).astype(jnp.float32),
            "decision": majority_vote(probs)}

  def describe(self) -> dict:
    init = str(self.config.model.init_from) or (
        "random (config.model.init_from is empty; no pretrained weights)")
    p, f = self.pre, self.fine
    d = {"init": init,
         "backbone": f"{self.config.model.backbone} {self.vit_kw}",
         "stages": ("pretrain + " if self.config.method.use_pretrain else "") + "finetune",
         "test_scales": list(self.scales),
         "image_source": (f"{self.source} px photo (input.source_size): test scales and "
                          "pretraining crops resized from it" if self.source else
                          f"off (input.source_size = 0): test scales and pretraining crops "
                          f"from the {self.img} px input image"),
         "synthesis": (f"device attention-guided cut-paste (p={f.anomaly_prob}, cut "
                       f"location {f.cut_location}, paste location attention)"
                       if f.synthesis == "device" else
                       f"host cut-paste, uniform location, poisson={bool(f.poisson)}")
                      + f", images before synthesis: {f.augment}",
         "finetune_init": (f"stage 1's {f.init_from_stage1}" if self.config.method.use_pretrain
                           else "model.init_from"),
         "seg_head": (f"learned weighting of the last block's CLS attention, its weights at "
                      f"{float(f.seg_lr_scale):g} x the lr"),
         "compute_dtype": str(self.config.train.compute_dtype)}
    if self.config.method.use_pretrain:
      d["pretrain"] = (f"masking={p.masking} r={p.mask_ratio} (attention from "
                       f"{p.attention_source}), augment={p.augment}, views 1 teacher {self.gsize}px + "
                       f"{p.num_global} x {self.gsize}px + {p.num_local} x {self.lsize}px, "
                       f"K={self.config.model.num_prototypes}, tau={p.temperature}")
    return d
