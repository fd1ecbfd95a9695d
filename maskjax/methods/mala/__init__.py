"""MALA (Chen et al., IEEE Access 2023): one model for all categories.

Stage 1 ("stage1", perceive normal patterns)
  MAE (ViT encoder with fixed sin-cos positions + `decoder_depth` x
  `decoder_dim` decoder, `maskjax.models.mae`) reconstructs normal images from
  25% of their patch tokens (`method.mask_ratio` = 0.75, per-sample random
  masking). The MAE sees ImageNet-normalised images and predicts normalised
  pixels (the convention of the published `mae_visualize` weights); the
  prediction of *all* patches is mapped back to [0, 1] (`recon`) and
  compared with the original x in [0, 1]:
    L = a1 * mean|x - recon| + a2 * (1 - SSIM(recon, x)) + a3 * L_pl
  (`maskjax.ops.ssim`, 11x11 Gaussian window, zero padding, data range 1).
  PLPM (`maskjax.methods.mala.heads.PLPMDiscriminator`) labels originals 0 and
  reconstructions 1; it is trained with BCE in its own optimiser step after
  the MAE step of the same batch, on the reconstructions of that step
  (stop-gradient):  L_D = 0.5 * (BCE(D(x), 0) + BCE(D(recon), 1)).
  L_pl is the reconstruction side of the paper's eq. (3): -1/(2n) sum
  log(1 - sigmoid(D(recon))) = 0.5 * mean softplus(D(recon)), which pushes D's
  output on reconstructions towards "original" (the eq.'s term on originals
  does not depend on the MAE and is left out of the gradient step; it is
  reported in L_D). Optimiser AdamW (`config.optim`: wd 0.05, betas 0.9/0.95,
  `optim.decay_mask` "no_bias_norm": biases and LayerNorm parameters are not
  decayed, as in MAE's timm parameter groups), peak lr = base_lr * batch / 256
  (paper), for the MAE and, separately, for D; `stage1.schedule`
  "warmup_cosine" = MAE's linear warm-up then half-cycle cosine, per step (see
  `Mala._stage1_optim`), shared by D's optimiser.

Stage 2 ("stage2", predict anomaly maps)
  The encoder is frozen: its parameters live under state["encoder"], outside
  the optimiser (no gradients, no optimiser state), and its outputs pass
  through `stop_gradient`. The decoder (initialised from stage 1) sees *all*
  tokens (no masking, no mask tokens). The Token Balance Module
  (`mala_heads.TokenBalanceModule`, paper eq. 5) fuses the encoder's first-
  block output and final (normed) tokens with the decoder's last (normed)
  tokens into 2*p*p values per token, unpatchified to logits [B, H, W, 2];
  channel 0 is the anomaly channel: p = softmax(logits)[..., 0].
    L = b1 * mean|mask - p| + b2 * focal(mask, softmax)
  (focal per DRAEM, gamma 2, on softmax probabilities with the anomaly class
  as channel 0). Training images: Perlin-noise anomalies (`maskjax.ops.perlin`)
  with probability `stage2.anomaly_prob` (0.8 = 64 of 80), of which a
  fraction `stage2.local_prob` is restricted to the image's foreground
  (`foreground_mask`), the rest global; a fraction `stage2.self_texture_prob`
  of them (0 in the paper's settings) pastes the image itself, shifted
  (`perlin.self_texture`), instead of a texture, and a fraction
  `stage2.backdrop_prob` of the local ones (0 in the paper's settings) takes the
  backdrop instead (`perlin.backdrop_texture`: each foreground pixel gets its
  nearest background pixel's colour), which removes a piece of the object as
  a missing part does. Texture sources: the images under
  `config.input.texture_dir` (DTD in the paper); without it the run is refused
  (`check_textures`, at construction) unless `method.builtin_textures` asks
  for the built-in procedural bank. Constant lr (paper: "fixed").

Scoring
  end_to_end: anomaly_map = p (channel-0 probability) at the input size;
  image_score = max over pixels of avgpool_k(p), k = `method.score_kernel`
  (odd), stride 1, zero padding k // 2 with divisor k*k
  (`F.avg_pool2d(..., count_include_pad=True)`, `maskjax.ops.filters.box_filter`).
  reconstruction (ablation, stage-1 model): `recon_passes` passes with
  disjoint kept-token sets (each covering 1/recon_passes of the tokens,
  fixed seed); the map is the channel-mean |x - recon| averaged over the
  passes in which the pixel's patch was masked; then the same pooled max.
  `method.map_sigma` > 0 (not in the paper, whose map is p itself): the map
  is then smoothed by a Gaussian of that sigma in pixels of the model's input
  (`filters.gaussian_filter_reflect`, = scipy.ndimage.gaussian_filter). Only
  the map: the image score stays the pooled max of the unsmoothed map. A
  per-token map marks the outline of a large defect more than its inside, and
  the smoothing fills the inside (anomalib smooths its models' maps likewise,
  sigma 4 by default).

Multi-class: one model for all configured categories; sampling is balanced
per category: every epoch draws `samples_per_category` training images from
each category (stage 1: 200 normals, stage 2: 80 of which anomaly_prob are
made anomalous), so a small category weighs as much as a large one; stage
lengths follow these quotas: steps = epochs * samples_per_category *
num_categories / batch (unless `config.train.steps` > 0).

Pretrained weights: `config.model.init_from` (an Orbax checkpoint written by
`maskjax.weights.convert` for an MAE, encoder keys under `encoder.`) is read on
the host inside stage 1's init through `jax.pure_callback`, so init stays a
jittable function; missing decoder keys (encoder-only checkpoints) keep their
random initialisation and the run log says which parts were loaded.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from maskjax import durations, train_utils
from maskjax.errors import ConfigError
from maskjax.methods.base import Duration, Method, PretrainedWeights, Stage
from maskjax.models import mae as mae_lib
from maskjax.methods.mala import heads as mala_heads
from maskjax.models import vit as vit_lib
from maskjax.ops import filters, losses, masks, normalize, ssim

PyTree = Any
SCORINGS = ("end_to_end", "reconstruction")
STAGE1_SCHEDULES = ("warmup_cosine", "constant")
DTD_URL = "https://www.robots.ox.ac.uk/~vgg/data/dtd/"


def check_textures(config) -> None:
  """Refuse, in one line, a stage-2 run that would paste built-in procedural
  textures where the paper pastes DTD, unless `method.builtin_textures` asks
  for them (ConfigError). No stage 2 (reconstruction scoring): no textures."""
  m = config.method
  if m.scoring != "end_to_end" or str(config.input.texture_dir) or m.builtin_textures:
    return
  raise ConfigError(
      "mala: stage 2 pastes DTD textures (paper) and config.input.texture_dir is empty: "
      f"download DTD from {DTD_URL} and pass --config.input.texture_dir=<dtd>/images, or set "
      "--config.method.builtin_textures=True to use the built-in procedural textures")


# ----------------------------------------------------------------------------
# pure helpers (tested against NumPy)
# ----------------------------------------------------------------------------
def image_score(anomaly_map: jax.Array, kernel: int) -> jax.Array:
  """max over pixels of the k x k mean filter of `anomaly_map` [B,H,W] -> [B].

  Stride 1, zero padding k // 2, every window divided by k*k (PyTorch
  `avg_pool2d(count_include_pad=True)`), k odd."""
  pooled = filters.box_filter(anomaly_map.astype(jnp.float32)[..., None], int(kernel))[..., 0]
  return jnp.max(pooled, axis=(1, 2))


def anomaly_probability(logits: jax.Array) -> jax.Array:
  """Softmax over the 2 channels of [B,H,W,2] logits; channel 0 = anomaly -> [B,H,W]."""
  return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[..., 0]


def stage2_loss(logits: jax.Array, target: jax.Array, b1: float, b2: float,
                gamma: float = 2.0) -> tuple[jax.Array, dict]:
  """b1 * mean|target - p0| + b2 * focal(target, softmax), channel 0 = anomaly.

  `losses.focal_loss` takes the anomalous class as channel 1, so the
  probabilities are passed with the channels swapped."""
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  l1 = jnp.mean(jnp.abs(target.astype(jnp.float32) - probs[..., 0]))
  focal = losses.focal_loss(probs[..., ::-1], target, gamma=gamma)
  return b1 * l1 + b2 * focal, {"loss/l1": l1, "loss/focal": focal}


def foreground_mask(image: np.ndarray, border: int = 4, min_fraction: float = 0.05,
                    max_fraction: float = 0.95) -> Optional[np.ndarray]:
  """Host-side foreground estimate for local Perlin anomalies.

  The background colour is the per-channel median of a `border`-pixel frame;
  each pixel's Euclidean RGB distance to it is thresholded with Otsu's method
  (256-bin histogram of the distances). Returns a float32 [H,W] {0,1} mask, or
  None when the foreground covers less than `min_fraction` or more than
  `max_fraction` of the image (textures, objects filling the frame): the caller
  then uses a global anomaly.
  """
  img = np.asarray(image, np.float32)
  h, w = img.shape[:2]
  b = max(1, min(border, h // 4, w // 4))
  frame = np.concatenate([img[:b].reshape(-1, 3), img[-b:].reshape(-1, 3),
                          img[:, :b].reshape(-1, 3), img[:, -b:].reshape(-1, 3)])
  bg = np.median(frame, axis=0)
  dist = np.sqrt(np.sum((img - bg) ** 2, axis=-1))
  hi = float(dist.max())
  if hi <= 1e-6:
    return None
  hist, edges = np.histogram(dist, bins=256, range=(0.0, hi))
  p = hist.astype(np.float64) / hist.sum()
  centres = 0.5 * (edges[:-1] + edges[1:])
  w0 = np.cumsum(p)
  m0 = np.cumsum(p * centres)
  mt = m0[-1]
  w1 = 1.0 - w0
  with np.errstate(divide="ignore", invalid="ignore"):
    between = (mt * w0 - m0) ** 2 / (w0 * w1)
  between[~np.isfinite(between)] = -1.0
  thr = edges[int(np.argmax(between)) + 1]
  fg = (dist > thr).astype(np.float32)
  frac = float(fg.mean())
  if frac < min_fraction or frac > max_fraction:
    return None
  return fg


@dataclasses.dataclass
class PerlinTransform:
  """Stage-2 host transform (picklable for grain workers).

  Per example, from the example's generator: with probability
  `anomaly_prob` a Perlin anomaly, local (restricted to `foreground_mask`)
  with probability `local_prob` when a foreground is found, else global;
  otherwise the clean image (mask 0, label 0). A local anomaly's texture is
  the backdrop (`perlin.backdrop_texture`) with probability `backdrop_prob`."""
  texture_dir: str = ""
  anomaly_prob: float = 0.8
  local_prob: float = 0.5
  self_texture_prob: float = 0.0
  backdrop_prob: float = 0.0

  def __post_init__(self):
    from maskjax.ops import perlin
    self._synth = perlin.PerlinAnomaly(self.texture_dir, anomaly_prob=1.0,
                                       self_prob=self.self_texture_prob)

  @property
  def source_description(self) -> str:
    return self._synth.source_description

  def __call__(self, example: dict, rng: np.random.Generator) -> dict:
    out = dict(example)
    image = example["image"]
    if rng.random() >= self.anomaly_prob:
      out["mask"] = np.zeros(image.shape[:2], np.float32)
      out["label"] = np.int32(0)
      return out
    fg = foreground_mask(image) if rng.random() < self.local_prob else None
    tex = None
    # (no draw when backdrop_prob is 0: the sequence of a run without it is unchanged)
    if fg is not None and self.backdrop_prob > 0 and rng.random() < self.backdrop_prob:
      from maskjax.ops import perlin  # pylint: disable=g-import-not-at-top
      tex = perlin.backdrop_texture(image, fg)
    img, mask, label = self._synth(image, rng, fg, texture=tex)
    out["image"] = img.astype(np.float32)
    out["mask"] = mask.astype(np.float32)
    out["label"] = np.int32(label)
    return out


def _dotted(path) -> str:
  """jax key path -> "encoder.blocks.0.attn.qkv.kernel" (maskjax.weights naming)."""
  return ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


# ----------------------------------------------------------------------------
# the method
# ----------------------------------------------------------------------------
class Mala(Method):
  name = "mala"
  uses_init_from = True
  pretrained = (PretrainedWeights.from_url(
      "model.init_from", "MAE ViT-L/16 encoder + decoder",
      "https://dl.fbaipublicfiles.com/mae/visualize/mae_visualize_vit_large.pth",
      arch="mae_vit_large_patch16"),)
  input_normalization = normalize.IMAGENET_NAME
  uses_textures = True

  def __init__(self, config, data):
    super().__init__(config, data)
    m = config.method
    if m.scoring not in SCORINGS:
      raise ConfigError(f"config.method.scoring={m.scoring!r}; known: {', '.join(SCORINGS)}")
    if not (np.isfinite(float(m.map_sigma)) and float(m.map_sigma) >= 0):
      raise ConfigError(f"config.method.map_sigma={m.map_sigma} must be >= 0 (0 = no smoothing)")
    k = int(m.score_kernel)
    if k < 1 or k % 2 == 0:
      raise ConfigError(f"config.method.score_kernel={k} must be a positive odd integer")
    if not 0.0 < float(m.mask_ratio) < 1.0:
      raise ConfigError(f"config.method.mask_ratio={m.mask_ratio} must be in (0, 1)")
    if m.scoring == "reconstruction" and not m.use_stage1:
      raise ConfigError("config.method.scoring='reconstruction' needs stage 1 "
                        "(config.method.use_stage1=True)")
    if m.stage1.schedule not in STAGE1_SCHEDULES:
      raise ConfigError(f"config.method.stage1.schedule={m.stage1.schedule!r}; known: "
                        f"{', '.join(STAGE1_SCHEDULES)}")
    if not 0.0 <= float(m.stage1.warmup_fraction) < 1.0:
      raise ConfigError(f"config.method.stage1.warmup_fraction={m.stage1.warmup_fraction} "
                        "must be in [0, 1)")
    for key in ("anomaly_prob", "local_prob", "self_texture_prob", "backdrop_prob"):
      if not 0.0 <= float(m.stage2[key]) <= 1.0:
        raise ConfigError(f"config.method.stage2.{key}={m.stage2[key]} must be in [0, 1]")
    check_textures(config)  # before any training work
    self.dtype = train_utils.compute_dtype(config.train)
    self.img = int(config.input.image_size)
    enc_name = str(config.model.encoder)
    enc_kw = vit_lib.vit_config(enc_name, config.model.encoder_overrides, "config.model.encoder")
    self.patch = int(enc_kw["patch"])
    if self.img % self.patch:
      raise ConfigError(f"config.input.image_size={self.img} must be a multiple of the "
                        f"encoder patch {self.patch} ({enc_name})")
    self.grid = (self.img // self.patch, self.img // self.patch)
    self.num_tokens = self.grid[0] * self.grid[1]
    self.enc_kw = enc_kw
    # Abstract modules: graph definitions and state templates, no weights.
    abstract = nnx.eval_shape(lambda: self._build(nnx.Rngs(0)))
    self.f_mae = train_utils.Functional(abstract["mae"])
    self.f_disc = train_utils.Functional(abstract["disc"])
    self.f_tbm = train_utils.Functional(abstract["tbm"])
    self.encoder_key = "encoder"
    if self.encoder_key not in self.f_mae.params:
      raise RuntimeError("maskjax.models.mae.MAE no longer keeps its ViT under 'encoder'")
    self._host_transform = None

  # -- modules -----------------------------------------------------------------
  def _build(self, rngs: nnx.Rngs) -> dict:
    c = self.config.model
    enc = vit_lib.ViT(img_size=self.img, pos_embed="sincos", dtype=self.dtype, rngs=rngs,
                      **self.enc_kw)
    mae = mae_lib.MAE(enc, decoder_dim=int(c.decoder_dim), decoder_depth=int(c.decoder_depth),
                      decoder_heads=int(c.decoder_heads), rngs=rngs)
    disc = mala_heads.PLPMDiscriminator(int(c.plpm_width), int(c.plpm_layers), dtype=self.dtype,
                                        rngs=rngs)
    tbm = mala_heads.TokenBalanceModule(int(self.enc_kw["dim"]), int(c.decoder_dim), self.patch,
                                        use_encoder_tokens=bool(self.config.method.use_tbm),
                                        dtype=self.dtype, rngs=rngs)
    return {"mae": mae, "disc": disc, "tbm": tbm}

  def _fresh(self, rng: jax.Array) -> dict:
    """Random-init pure dicts {name: (params, rest)} (jittable)."""
    mods = self._build(nnx.Rngs(params=rng))
    out = {}
    for k, mod in mods.items():
      _, p, r = train_utils.split_pure(mod)
      out[k] = (p, r)
    return out

  # -- optimisers ----------------------------------------------------------------
  def _lr(self, stage_cfg) -> float:
    lr = float(self.stage_setting("optim.lr", stage_cfg.lr))
    return lr if lr > 0 else float(stage_cfg.base_lr) * self._batch(stage_cfg) / 256.0

  def _batch_key(self, stage_key: str) -> str:
    return "input.batch_size" if self.config.input.batch_size is not None else stage_key

  def _batch(self, stage_cfg) -> int:
    return int(self.stage_setting("input.batch_size", stage_cfg.batch_size))

  def _optim_cfg(self, lr: float):
    o = ml_collections.ConfigDict(self.config.optim.to_dict())
    o.lr = lr
    return o

  def _stage_optim(self, stage_cfg):
    return self._optim_cfg(self._lr(stage_cfg))

  def _stage1_optim(self, stage_cfg):
    """Stage 1's optimiser config: `config.optim` with the stage's lr and, for
    "warmup_cosine", MAE's schedule (`util/lr_sched.adjust_learning_rate`, per
    step): lr * epoch / W during W = round(warmup_fraction * epochs) whole
    epochs, then end_lr + (lr - end_lr) (1 + cos(pi (epoch - W) / (E - W))) / 2,
    epoch = step / steps_per_epoch; stages of fixed steps warm up for
    warmup_fraction of them (`maskjax.durations.optimizer_config`)."""
    o = self._stage_optim(stage_cfg)
    if stage_cfg.schedule == "warmup_cosine":
      fraction = float(stage_cfg.warmup_fraction)
      epochs = int(self.stage_setting("train.epochs", stage_cfg.epochs))
      o.schedule = "warmup_cosine"
      o.warmup_steps = 0
      o.warmup_epochs = int(round(fraction * epochs))
      o.warmup_fraction = fraction
    return o

  def _disc_optim(self, stage):
    """The PLPM's optimiser config: stage 1's (schedule lengths in steps), peak
    lr `disc_lr` or the stage-1 lr."""
    o = durations.optimizer_config(stage, self.config)
    o.lr = float(self.config.method.disc_lr) or self._lr(self.config.method.stage1)
    return o

  def _disc_tx(self, stage):
    return train_utils.make_optimizer(self._disc_optim(stage), stage.steps)

  def disc_schedule(self, stage):
    """The PLPM's learning rate per step (the schedule `_disc_tx` applies)."""
    return train_utils.make_schedule(self._disc_optim(stage), stage.steps)

  def _duration(self, stage_cfg) -> Duration:
    return Duration(epochs=int(self.stage_setting("train.epochs", stage_cfg.epochs)),
                    samples_per_category=int(stage_cfg.samples_per_category))

  def stages(self) -> list[Stage]:
    m = self.config.method
    if m.per_category and self.data.num_categories != 1:
      raise ConfigError(
          f"configs/mala.py:per_category trains one model per category, but "
          f"config.input.categories={tuple(self.config.input.categories)} selects "
          f"{self.data.num_categories}; pick one category per run, or run them all with "
          "python -m maskjax.sweep --sweep=configs/sweeps/mala_single_class.py")
    out = []
    if m.use_stage1:
      s1 = m.stage1
      stage1 = Stage("stage1", self._duration(s1), self._batch(s1), self._stage1_optim(s1),
                     init_model=lambda rng, prev: self.init_stage1(rng, prev, stage1),
                     loss_fn=self.loss_stage1, prepare=self.prepare_stage1,
                     after_update=lambda *a: self.after_update_stage1(*a, stage=stage1),
                     batch_key=self._batch_key("method.stage1.batch_size"))
      out.append(stage1)
    if m.scoring == "end_to_end":
      s2 = m.stage2
      out.append(Stage("stage2", self._duration(s2), self._batch(s2), self._stage_optim(s2),
                       init_model=self.init_stage2, loss_fn=self.loss_stage2,
                       host_transform=self.host_transform(),
                       batch_key=self._batch_key("method.stage2.batch_size")))
    return out

  def host_transform(self) -> PerlinTransform:
    if self._host_transform is None:
      s2 = self.config.method.stage2
      self._host_transform = PerlinTransform(str(self.config.input.texture_dir),
                                             float(s2.anomaly_prob), float(s2.local_prob),
                                             float(s2.self_texture_prob),
                                             float(s2.backdrop_prob))
    return self._host_transform

  # -- pretrained weights --------------------------------------------------------------
  def _pretrained_mae(self, params: dict) -> dict:
    """params with the tensors of `config.model.init_from` put in
    (`maskjax.weights.load_params`). An encoder-only checkpoint (kind "vit")
    fills the encoder; decoder tensors it lacks keep their random init
    (logged). Unexpected keys, shape mismatches or missing encoder tensors fail."""
    path = str(self.config.model.init_from)
    if not path:
      return params
    from maskjax import weights
    flat, meta = weights.read(path)
    encoder_only = meta.get("kind") == "vit" or not any(
        k.startswith(self.encoder_key + ".") for k in flat)
    return weights.load_params(
        params, path, checkpoint=(flat, meta), prefix=self.encoder_key if encoder_only else "",
        optional=tuple(k for k in params if k != self.encoder_key),
        where=f"config.model.init_from={path!r} does not fit config.model.encoder="
              f"{self.config.model.encoder!r} (overrides {self.enc_kw}) with decoder "
              f"{self.config.model.decoder_depth} x {self.config.model.decoder_dim} at "
              f"{self.img} px")

  # -- forward passes -----------------------------------------------------------------
  def _mae(self, params, rest):
    return self.f_mae.module(params, rest)

  def _reconstruct(self, params, rest, x01, keep_ids, ids_restore):
    """x01 [B,H,W,3] in [0,1] -> reconstruction of every patch, in [0,1] space (float32)."""
    mae = self._mae(params, rest)
    latent = mae.forward_encoder(normalize.imagenet(x01.astype(self.dtype)), keep_ids)["tokens"]
    pred = mae.forward_decoder(latent, ids_restore, grid_hw=self.grid)
    img = mae_lib.unpatchify(pred.astype(jnp.float32), self.patch, *self.grid)
    return normalize.imagenet_inverse(img)

  def _disc(self, params, x):
    logits, _ = self.f_disc.apply(params, {}, x)
    return logits.astype(jnp.float32)

  def _map_logits(self, enc_params, dec_params, tbm_params, rest, x01):
    """Stage-2 forward: [B,H,W,3] in [0,1] -> logits [B,H,W,2] (channel 0 = anomaly)."""
    mae = self._mae({**dec_params, self.encoder_key: enc_params}, rest)
    out = mae.encoder(normalize.imagenet(x01.astype(self.dtype)), return_blocks=True)
    first = jax.lax.stop_gradient(out["blocks"][0])
    last = jax.lax.stop_gradient(out["tokens"])
    dec_last = mae.decode_all_tokens(last)
    tbm = self.f_tbm.module(tbm_params, {})
    tokens = tbm(first[:, 1:], last[:, 1:], dec_last[:, 1:])
    return mala_heads.unpatchify_channels(tokens, self.patch, self.grid, 2)

  # -- stage 1 -----------------------------------------------------------------------
  def init_stage1(self, rng: jax.Array, previous_state: Optional[PyTree], stage) -> tuple:
    """-> (MAE params, MAE other state, {"disc", "disc_opt"} when PLPM is on)."""
    fresh = self._fresh(rng)
    mae_p = self._pretrained_mae(fresh["mae"][0])
    extras = {}
    if self.config.method.use_plpm:
      extras = {"disc": fresh["disc"][0],
                "disc_opt": self._disc_tx(stage).init(fresh["disc"][0])}
    return mae_p, fresh["mae"][1], extras

  def prepare_stage1(self, state, batch, rng, step):
    x = batch["image"].astype(jnp.float32)
    keep_ids, _, ids_restore = masks.mae_random_masking(rng, x.shape[0], self.num_tokens,
                                                        float(self.config.method.mask_ratio))
    return {"image": x, "keep_ids": keep_ids, "ids_restore": ids_restore}, {}

  def loss_stage1(self, params, state, batch, rng, step):
    m = self.config.method
    x = batch["image"]
    recon = self._reconstruct(params, state["model_state"], x, batch["keep_ids"],
                              batch["ids_restore"])
    l1 = jnp.mean(jnp.abs(recon - x))
    ls = ssim.ssim_loss(recon, x)
    loss = float(m.a1) * l1 + float(m.a2) * ls
    aux = {"loss/l1": l1, "loss/ssim": ls}
    if m.use_plpm:
      pl = 0.5 * jnp.mean(jax.nn.softplus(self._disc(state["extras"]["disc"], recon)))
      loss = loss + float(m.a3) * pl
      aux["loss/pseudo_label"] = pl
    aux["outputs"] = {"recon": recon}
    return loss, aux

  def after_update_stage1(self, new, old, batch, outputs, rng, step, stage):
    """The PLPM discriminator's own step on the batch and its reconstructions."""
    if not self.config.method.use_plpm:
      return new, {}
    x = batch["image"].astype(jnp.float32)
    fake = jax.lax.stop_gradient(outputs["recon"])

    def d_loss_fn(dp):
      lo = self._disc(dp, x)
      lp = self._disc(dp, fake)
      real = jnp.mean(jax.nn.softplus(lo))       # BCE(D(x), 0)
      fake_l = jnp.mean(jax.nn.softplus(-lp))    # BCE(D(recon), 1)
      acc = 0.5 * (jnp.mean(lo < 0) + jnp.mean(lp > 0))
      return 0.5 * (real + fake_l), acc

    ex = old["extras"]
    (dl, acc), dg = jax.value_and_grad(d_loss_fn, has_aux=True)(ex["disc"])
    dp, dopt = train_utils.apply_updates(self._disc_tx(stage), ex["disc"],
                                         ex["disc_opt"], dg)
    return dict(new, extras={"disc": dp, "disc_opt": dopt}), {"disc/loss": dl,
                                                              "disc/accuracy": acc}

  # -- stage 2 ------------------------------------------------------------------------
  def split_mae(self, mae_params: dict) -> tuple[dict, dict]:
    """MAE pure dict -> (encoder params, decoder params = everything else)."""
    enc = mae_params[self.encoder_key]
    dec = {k: v for k, v in mae_params.items() if k != self.encoder_key}
    return enc, dec

  def init_stage2(self, rng: jax.Array, previous_state: Optional[PyTree] = None) -> tuple:
    """-> ({"decoder", "tbm"} trained, {"encoder": frozen, "mae": MAE other state}, {})."""
    fresh = self._fresh(rng)
    if previous_state is not None:
      mae_p, rest = previous_state["params"], previous_state["model_state"]
    else:   # "no stage 1": ImageNet weights when given, else random
      mae_p, rest = self._pretrained_mae(fresh["mae"][0]), fresh["mae"][1]
    enc, dec = self.split_mae(mae_p)
    return {"decoder": dec, "tbm": fresh["tbm"][0]}, {"encoder": enc, "mae": rest}, {}

  def loss_stage2(self, params, state, batch, rng, step):
    m = self.config.method
    ms = state["model_state"]
    logits = self._map_logits(ms["encoder"], params["decoder"], params["tbm"], ms["mae"],
                              batch["image"].astype(jnp.float32))
    return stage2_loss(logits, batch["mask"].astype(jnp.float32), float(m.b1), float(m.b2),
                       float(m.focal_gamma))

  # -- scoring ------------------------------------------------------------------------
  def score(self, state: PyTree, batch, calibration: dict) -> dict:
    x = batch["image"].astype(jnp.float32)
    h, w = x.shape[1:3]
    if (h, w) != (self.img, self.img):
      x = jax.image.resize(x, (x.shape[0], self.img, self.img, 3), "linear")
    if self.config.method.scoring == "reconstruction":
      amap = self._recon_error_map(state, x)
    else:
      ms = state["model_state"]
      logits = self._map_logits(ms["encoder"], state["params"]["decoder"],
                                state["params"]["tbm"], ms["mae"], x)
      amap = anomaly_probability(logits)
    resize = lambda a: (a if (h, w) == (self.img, self.img) else
                        jax.image.resize(a, (a.shape[0], h, w), "linear"))
    raw = resize(amap)
    score = image_score(raw, int(self.config.method.score_kernel))
    sigma = float(self.config.method.map_sigma)
    # the smoothing runs at the model's input size, where sigma is counted
    amap = resize(filters.gaussian_filter_reflect(amap, sigma)) if sigma > 0 else raw
    return {"anomaly_map": amap.astype(jnp.float32), "image_score": score}

  def _recon_error_map(self, state, x):
    """Reconstruction-based map (ablation): see the module docstring."""
    n = max(2, int(self.config.method.recon_passes))
    b = x.shape[0]
    perm = jax.random.permutation(jax.random.key(0), self.num_tokens)
    chunks = np.array_split(np.arange(self.num_tokens), n)
    err_sum = jnp.zeros((b, self.img, self.img), jnp.float32)
    cnt = jnp.zeros((1, self.img, self.img), jnp.float32)
    for ch in chunks:
      keep = perm[ch[0]:ch[-1] + 1]
      removed = jnp.ones((self.num_tokens,), jnp.float32).at[keep].set(0.0)
      order = jnp.concatenate([keep, jnp.setdiff1d(perm, keep, size=self.num_tokens - len(ch))])
      ids_restore = jnp.argsort(order)
      keep_b = jnp.broadcast_to(keep[None], (b, len(ch)))
      rest_b = jnp.broadcast_to(ids_restore[None], (b, self.num_tokens))
      recon = self._reconstruct(state["params"], state["model_state"], x, keep_b, rest_b)
      err = jnp.mean(jnp.abs(recon - x), axis=-1)
      pix = mae_lib.unpatchify(jnp.broadcast_to(removed[None, :, None],
                                                (1, self.num_tokens, self.patch ** 2)),
                               self.patch, *self.grid)[..., 0]
      err_sum = err_sum + err * pix
      cnt = cnt + pix
    return err_sum / jnp.maximum(cnt, 1.0)

  def describe(self) -> dict:
    m = self.config.method
    init = str(self.config.model.init_from) or "random (no checkpoint)"
    d = {"init": init,
         "encoder": f"{self.config.model.encoder} {self.enc_kw} at {self.img} px",
         "stages": ("stage1 + " if m.use_stage1 else "") +
                   ("stage2" if m.scoring == "end_to_end" else "(reconstruction scoring)"),
         "plpm": bool(m.use_plpm), "tbm": bool(m.use_tbm),
         "compute_dtype": str(self.config.train.compute_dtype),
         "sampling": (f"balanced: {int(m.stage1.samples_per_category)} (stage 1) / "
                      f"{int(m.stage2.samples_per_category)} (stage 2) images per category "
                      "per epoch")}
    if m.use_stage1:
      s1 = m.stage1
      d["stage1_lr_schedule"] = (
          f"warmup_cosine (MAE): linear warm-up over {s1.warmup_fraction:g} of stage 1, "
          "half-cycle cosine to config.optim.end_lr" if s1.schedule == "warmup_cosine"
          else "constant")
    d["weight_decay"] = (f"{self.config.optim.weight_decay:g}, "
                         + ("not on rank <= 1 tensors (MAE parameter groups)"
                            if self.config.optim.decay_mask == "no_bias_norm"
                            else "on every tensor"))
    d["map_smoothing"] = (f"Gaussian sigma {float(m.map_sigma):g} px at {self.img} px "
                          "(the image score is from the unsmoothed map)"
                          if float(m.map_sigma) > 0 else "none (the map is p)")
    if m.scoring == "end_to_end":
      src = self.host_transform().source_description
      if not str(self.config.input.texture_dir):
        src += " (config.method.builtin_textures=True)"
      d["anomaly_source"] = src
    return d
