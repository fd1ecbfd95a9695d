"""SSM (Huang et al., TMM 2022): self-supervised masking with a conditional
U-Net and progressive mask refinement at test time.

Masks are float32 [B,H,W] with 1 = visible, 0 = masked (hidden from the net).

Network (`maskjax.models.unet.SsmUNet`, switches under `config.model`): the
full variant builds the official code's U-Net (MediaBrain-SJTU/SSM
`models/unet_multi.py`, `UNet(up_mode='upsample')`): the encoder sees the 3
channels of image * mask (`encoder_input="image"`), each decoder level
upsamples by nearest x2 and a bare 1x1 conv (`up_kernel=1`,
`up_block="conv"`: no BN / ReLU until after the skip concatenation), and the
mask attention modules resize the mask like PyTorch's
`F.interpolate(mode="nearest")` (`mask_resize="floor"`). The demo variant
keeps the previous net: 4-channel encoder input (image * mask, mask), nearest
x2 + 3x3 conv + BN + ReLU, half-pixel nearest mask resize ("image_mask", 3,
"conv_bn_relu", "half_pixel"). `upsample="transpose"` (ConvTranspose 4x4 s2)
ignores `up_kernel`.

Value ranges: batches arrive in [0, 1]. With `config.method.input_range =
"half"` (default) the U-Net sees mean = std = 0.5 normalised images (masked
pixels are 0 = mid-grey) and both tanh heads are mapped back to [0, 1] by
(t + 1) / 2; with "unit" (SSM's official code) it sees [0, 1] images and the
tanh outputs are used as they are. Every loss and error term is computed on
[0, 1] images.

Training (stage "train"): for every image and step, a cell size k drawn from
`config.method.train_ks` and a random grid mask with that k
(`maskjax.ops.masks.random_grid_masks`, every cell hidden with probability 0.5).
The inpainted image is composed as in paper eq. 3, I_hat = I' (1 - M) + I M, and
  loss = w_mse * mean((I_hat - I)^2) + w_gms * mean(1 - GMS(I_hat, I))
       + w_ssim * (1 - mean SSIM(I_hat, I)) + w_mask * mean((M' - M)^2)
(eq. 4, 5, 9, 10, 11; weights `config.method.loss_weights`).

Error map (eq. 12), per pixel: f = mean_c (I - I_hat)^2 + (1 - GMS) + (1 - mean_c SSIM),
with I_hat composed as above (GMS single scale, eq. 6-8).

Inference (Algorithm 1), for each k in `config.method.ks`:
  * S^0 = mean of f over the two complementary checkerboards of k x k cells
    (each composed image is exact where visible, so each map carries the
    error of the pixels that mask hides, as in the paper's Fig. 5);
  * refinement, run as one `lax.while_loop` over the whole batch. Carry: mask
    M, map S, the next mask M_next = threshold(S^0), done [B], iters [B]. Each
    iteration, for every image not done: M = M_next, S = f(I, compose(net(I, M))),
    iters += 1, M_next = 1 where the k x k patch mean of S is <= eta and 0
    where it exceeds eta (line 7-9); the image is done when M_next == M (the
    mask converged: S already belongs to it) or iters == max_iters. Done
    images keep their values (`jnp.where`), and BatchNorm uses running
    averages, so an image's result does not depend on the rest of the batch.
    `max_iters = 0` returns S^0 (mask all visible).
  * eps_k (line 15) = sum(S) / sum(M) ("as_written", default; sum(M) clamped to
    >= 1 pixel), the mean of S over the masked area ("masked_mean"; 0 when
    nothing is masked) or max(S) ("max"), `config.method.image_score`.
  * the refined map S^k: as written (`config.method.refined_map =
    "as_written"`), S = f(I, I') with visible pixels composed from I itself, so
    S is exactly 0 wherever M = 1, and an image none of whose patches exceeds
    eta gets an all-zero map: the sub-threshold evidence of S^0 is discarded
    (docs/RECIPES.md: on the photo demo 86 % of dahlia maps are all zero and the
    pixel AUROC drops from 0.835 (S^0) to 0.726). "s0_visible" keeps S^0 on
    visible patches and the refined S on masked ones.
Final map = mean over k of S^k; image score = mean over k of eps_k. `score`
also returns "iterations" (int32 [B]): refinement reconstructions summed over
the scales.

eta (`calibrate`): the maximum, over the validation split of training
normals, of the statistic the threshold is compared with: the k x k patch means
of S^0 ("patch", default) or the pixels of S^0 ("pixel"),
`config.method.eta_statistic`. With `config.method.eta_per_scale = True`
(default) there is one eta per k: the run of Algorithm 1 at scale k compares
k x k patch means of its own S^k with eta, so eta_k is the maximum of that same
statistic on the validation normals ("the maximum error in the validation
set", measured in the unit it is compared in) [decision]. With False one eta
(the maximum over every k) serves all scales; small patches are the noisiest,
so the k = 4 maximum then sets the threshold for the larger cells too and
their refinement rarely fires. Computed per category (the paper trains and
thresholds one category at a time) and overall; `config.method.eta_mode`
"per_category" (default) or "global" picks which one score uses, multiplied by
`config.method.eta_scale` (1 = the paper). Calibration dict: "eta" (float,
max over categories and k), "eta_per_category" [C] (max over k),
"eta_per_scale" [len(ks)] and "eta_per_category_scale" [C, len(ks)].

`config.method.refine = False` is the paper's "no refinement" baseline: per k,
the mean of f over `config.method.num_random_masks` (16) fixed random grid masks;
image score = mean of that map.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from maskjax import train_utils
from maskjax.errors import ConfigError, DataError
from maskjax.methods.base import Stage, config_choice
from maskjax.methods.grid_inpainting import GridInpaintingMethod
from maskjax.models.unet import SsmUNet
from maskjax.ops import gms, masks as masks_lib, normalize, ssim

IMAGE_SCORES = ("as_written", "masked_mean", "max")
REFINED_MAPS = ("as_written", "s0_visible")
INPUT_RANGES = ("half", "unit")
ETA_STATISTICS = ("patch", "pixel")
ETA_MODES = ("per_category", "global")


# ----------------------------------------------------------------------------
# Algorithm 1 building blocks (pure, batched)
# ----------------------------------------------------------------------------
def error_map(x01: jax.Array, r01: jax.Array) -> jax.Array:
  """Eq. 12 per pixel: [B,H,W,3] x2 in [0,1] -> [B,H,W] float32."""
  x01 = x01.astype(jnp.float32)
  r01 = r01.astype(jnp.float32)
  l2 = jnp.mean(jnp.square(x01 - r01), axis=-1)
  return l2 + (1.0 - gms.gms_map(x01, r01)) + (1.0 - jnp.mean(ssim.ssim_map(x01, r01), axis=-1))


def patch_mean(s: jax.Array, k: int) -> jax.Array:
  """Mean of [B,H,W] over each k x k patch, broadcast back to [B,H,W]."""
  b, h, w = s.shape
  p = s.reshape(b, h // k, k, w // k, k).mean(axis=(2, 4))
  return jnp.repeat(jnp.repeat(p, k, axis=1), k, axis=2)


def threshold_mask(s: jax.Array, eta: jax.Array, k: int) -> jax.Array:
  """Algorithm 1 lines 6-9: 0 (masked) on patches whose mean exceeds eta [B]."""
  return (patch_mean(s, k) <= eta[:, None, None]).astype(jnp.float32)


def image_score(s: jax.Array, m: jax.Array, mode: str = "as_written") -> jax.Array:
  """eps_k [B] from map s and final mask m ([B,H,W]); see module docstring."""
  if mode == "as_written":
    return jnp.sum(s, axis=(1, 2)) / jnp.maximum(jnp.sum(m, axis=(1, 2)), 1.0)
  if mode == "masked_mean":
    hidden = 1.0 - m
    return jnp.sum(s * hidden, axis=(1, 2)) / jnp.maximum(jnp.sum(hidden, axis=(1, 2)), 1.0)
  if mode == "max":
    return jnp.max(s, axis=(1, 2))
  raise ConfigError(f"config.method.image_score must be one of {IMAGE_SCORES}, got {mode!r}")


def refine(err_fn: Callable[[jax.Array], jax.Array], s0: jax.Array, eta: jax.Array, k: int,
           max_iters: int):
  """Progressive mask refinement (Algorithm 1, lines 4-14) for a whole batch.

  err_fn(mask [B,H,W]) -> S [B,H,W] reconstructs the batch under `mask` and
  returns the eq. 12 map. s0 [B,H,W]; eta [B]. Returns (mask, map, iters [B]
  int32). Every image stops on its own (see module docstring).
  """
  b = s0.shape[0]
  ones = jnp.ones_like(s0)
  m_next = threshold_mask(s0, eta, k)
  init = (ones, s0, m_next, jnp.full((b,), max_iters <= 0), jnp.zeros((b,), jnp.int32))

  def cond(carry):
    return jnp.any(~carry[3])

  def body(carry):
    m, s, m_next, done, iters = carry
    s_new = err_fn(m_next)
    iters_new = iters + 1
    m_after = threshold_mask(s_new, eta, k)
    converged = jnp.all(m_after == m_next, axis=(1, 2))
    keep = done[:, None, None]
    m = jnp.where(keep, m, m_next)
    s = jnp.where(keep, s, s_new)
    m_next = jnp.where(keep, m_next, m_after)
    iters = jnp.where(done, iters, iters_new)
    done = done | converged | (iters >= max_iters)
    return m, s, m_next, done, iters

  m, s, _, _, iters = jax.lax.while_loop(cond, body, init)
  return m, s, iters


class Ssm(GridInpaintingMethod):
  """One stage: the conditional U-Net (image and mask heads) trained on one
  random grid mask per image; BatchNorm statistics as model_state. Calibrates
  eta on validation normals, scores by Algorithm 1 (`refine`)."""

  name = "ssm"
  UNET_KEYS = ("upsample", "up_block", "up_kernel", "mask_resize", "encoder_input")

  def __init__(self, config, data):
    m = config.method
    self.train_ks = tuple(int(k) for k in m.train_ks)
    super().__init__(config, data, geometry_ks=self.train_ks)
    self.use_mam = bool(config.model.use_mam)
    w = m.loss_weights
    self.w = {"mse": float(w.mse), "gms": float(w.gms), "ssim": float(w.ssim),
              "mask": float(w.mask)}
    self.input_range = config_choice(str(m.input_range), INPUT_RANGES,
                                     "config.method.input_range")
    self.refine_on = bool(m.refine)
    self.max_iters = int(m.max_iters)
    self.num_random_masks = int(m.num_random_masks)
    self.image_score_mode = config_choice(str(m.image_score), IMAGE_SCORES,
                                          "config.method.image_score")
    self.refined_map = config_choice(str(m.refined_map), REFINED_MAPS,
                                     "config.method.refined_map")
    self.eta_statistic = config_choice(str(m.eta_statistic), ETA_STATISTICS,
                                       "config.method.eta_statistic")
    self.eta_mode = config_choice(str(m.eta_mode), ETA_MODES, "config.method.eta_mode")
    self.eta_scale = float(m.eta_scale)
    self.eta_per_scale = bool(m.eta_per_scale)
    self.f = train_utils.abstract_functional(self._factory)

  def _factory(self, rngs: nnx.Rngs) -> SsmUNet:
    return SsmUNet(self.widths, use_mam=self.use_mam, **self.unet, rngs=rngs)

  # -- model ------------------------------------------------------------------
  def predict(self, params, rest, x01: jax.Array, mask: jax.Array, train: bool = False):
    """Raw heads in [0, 1]: (image [B,H,W,3], mask [B,H,W]), new rest."""
    x = normalize.half(x01) if self.input_range == "half" else x01
    if self.dtype != jnp.float32:
      params = train_utils.cast_floating(params, self.dtype)
      x = x.astype(self.dtype)
    (img, msk), new_rest = self.f.apply(params, rest, x, mask, train=train)
    img = img.astype(jnp.float32)
    msk = msk.astype(jnp.float32)
    if self.input_range == "half":
      img, msk = normalize.half_inverse(img), normalize.half_inverse(msk)
    return (img, msk), new_rest

  def reconstruct(self, params, rest, x01: jax.Array, mask: jax.Array) -> jax.Array:
    """Eq. 3 (inference, running BatchNorm averages): I' (1 - M) + I M in [0,1]."""
    (img, _), _ = self.predict(params, rest, x01, mask, train=False)
    m = mask[..., None]
    return img * (1.0 - m) + x01 * m

  def error_fn(self, params, rest, x01: jax.Array) -> Callable[[jax.Array], jax.Array]:
    """mask [B,H,W] -> eq. 12 map [B,H,W] of the batch x01 reconstructed under it."""
    return lambda mask: error_map(x01, self.reconstruct(params, rest, x01, mask))

  # -- training ---------------------------------------------------------------
  def train_masks(self, rng: jax.Array, batch: int) -> tuple[jax.Array, jax.Array]:
    """Per-image k from train_ks and a random grid mask with it: ([B,H,W], k [B])."""
    k_rng, m_rng = jax.random.split(rng)
    idx = jax.random.randint(k_rng, (batch,), 0, len(self.train_ks))
    keys = jax.random.split(m_rng, len(self.train_ks))
    all_masks = jnp.stack([masks_lib.random_grid_masks(keys[i], batch, self.size, self.size, k)
                           for i, k in enumerate(self.train_ks)])
    return all_masks[idx, jnp.arange(batch)], jnp.asarray(self.train_ks)[idx]

  def loss_terms(self, x01, img01, mask_pred, mask) -> dict:
    m = mask[..., None]
    comp = img01 * (1.0 - m) + x01 * m
    return {
        "mse": jnp.mean(jnp.square(comp - x01)),
        "gms": jnp.mean(1.0 - gms.gms_map(comp, x01)),
        "ssim": ssim.ssim_loss(comp, x01, data_range=1.0),
        "mask": jnp.mean(jnp.square(mask_pred - mask)),
    }

  def stages(self) -> list[Stage]:
    def prepare(state, batch, rng, step):
      x = batch["image"].astype(jnp.float32)
      mask, k = self.train_masks(rng, x.shape[0])
      return {"image": x, "mask": mask, "k": k}, {}

    def loss_fn(params, state, batch, rng, step):
      (img, mpred), rest = self.predict(params, state["model_state"], batch["image"],
                                        batch["mask"], train=True)
      terms = self.loss_terms(batch["image"], img, mpred, batch["mask"])
      loss = sum(self.w[n] * v for n, v in terms.items())
      aux = {f"loss/{n}": v for n, v in terms.items()}
      aux["mean_k"] = jnp.mean(batch["k"].astype(jnp.float32))
      aux["model_state"] = rest
      return loss, aux

    return [self.train_stage(loss_fn, prepare)]

  # -- inference ----------------------------------------------------------------
  def initial_map(self, params, rest, x01: jax.Array, k: int) -> jax.Array:
    """S^0 [B,H,W]: mean of eq. 12 over the complementary checkerboard pair."""
    b = x01.shape[0]
    pair = masks_lib.checkerboard_pair(self.size, self.size, k)
    xx = jnp.concatenate([x01, x01], axis=0)
    mm = jnp.repeat(pair, b, axis=0)
    s = error_map(xx, self.reconstruct(params, rest, xx, mm))
    return 0.5 * (s[:b] + s[b:])

  def random_mask_map(self, params, rest, x01: jax.Array, k: int) -> jax.Array:
    """No-refinement baseline: mean of eq. 12 over fixed random grid masks."""
    b = x01.shape[0]
    ms = masks_lib.random_grid_masks(self.score_key(k), self.num_random_masks, self.size,
                                     self.size, k)

    def body(acc, m):
      mm = jnp.broadcast_to(m, (b,) + m.shape)
      return acc + error_map(x01, self.reconstruct(params, rest, x01, mm)), None

    acc, _ = jax.lax.scan(body, jnp.zeros((b, self.size, self.size), jnp.float32), ms)
    return acc / self.num_random_masks

  def eta_for_batch(self, batch, calibration: dict, scale: int | None = None) -> jax.Array:
    """Per-image threshold [B] from the calibration dict.

    scale: index into `ks` of the cell size being refined; with
    `eta_per_scale` the threshold of that scale is used (required then).
    """
    b = batch["image"].shape[0]
    if not calibration or "eta" not in calibration:
      raise ConfigError("ssm: score needs calibration['eta'] (run calibrate on the validation "
                        "split; config.input.val_fraction must be > 0)")
    if self.eta_per_scale:
      if scale is None:
        raise ConfigError("ssm: eta_for_batch needs the scale index when "
                          "config.method.eta_per_scale is True")
      if "eta_per_scale" not in calibration:
        raise ConfigError("ssm: config.method.eta_per_scale=True but the calibration has no "
                          "'eta_per_scale' (it comes from an older run): recalibrate "
                          "(--mode=eval) or set --config.method.eta_per_scale=False")
      eta_global = jnp.asarray(calibration["eta_per_scale"], jnp.float32)
      if eta_global.shape != (len(self.ks),):
        raise ConfigError(f"ssm: calibration['eta_per_scale'] has shape {eta_global.shape}, "
                          f"expected ({len(self.ks)},) for config.method.ks={self.ks}")
      eta_global = eta_global[scale]
      table = calibration.get("eta_per_category_scale")
      table = None if table is None else jnp.asarray(table, jnp.float32)
      if table is not None and table.size:
        table = table[:, scale]
    else:
      eta_global = jnp.asarray(calibration["eta"], jnp.float32)
      table = calibration.get("eta_per_category")
      table = None if table is None else jnp.asarray(table, jnp.float32)
    eta = jnp.broadcast_to(eta_global, (b,))
    if self.eta_mode == "per_category" and table is not None and table.size:
      cid = batch.get("category_id")
      cid = jnp.zeros((b,), jnp.int32) if cid is None else cid.astype(jnp.int32)
      n = table.shape[0]
      eta = jnp.where(cid < n, table[jnp.clip(cid, 0, n - 1)], eta_global)
    return eta * self.eta_scale

  def score_scale(self, params, rest, x01, eta, k: int):
    """(map S^k [B,H,W], eps_k [B], iterations [B]) for one cell size."""
    b = x01.shape[0]
    if not self.refine_on:
      s = self.random_mask_map(params, rest, x01, k)
      return s, jnp.mean(s, axis=(1, 2)), jnp.zeros((b,), jnp.int32)
    s0 = self.initial_map(params, rest, x01, k)
    m, s, iters = refine(self.error_fn(params, rest, x01), s0, eta, k, self.max_iters)
    if self.refined_map == "s0_visible":
      # the refined S is exactly 0 on visible pixels (they are composed from I
      # itself); keep the evidence S^0 had there instead of discarding it
      s = jnp.where(m > 0.5, s0, s)
    return s, image_score(s, m, self.image_score_mode), iters

  def score(self, state, batch, calibration) -> dict:
    x = batch["image"].astype(jnp.float32)
    b = x.shape[0]
    maps, scores, iters = [], [], []
    for j, k in enumerate(self.ks):
      eta = (self.eta_for_batch(batch, calibration, j) if self.refine_on
             else jnp.zeros((b,), jnp.float32))
      s, e, it = self.score_scale(state["params"], state["model_state"], x, eta, k)
      maps.append(s)
      scores.append(e)
      iters.append(it)
    return {"anomaly_map": jnp.mean(jnp.stack(maps), axis=0),
            "image_score": jnp.mean(jnp.stack(scores), axis=0),
            "iterations": jnp.sum(jnp.stack(iters), axis=0).astype(jnp.int32)}

  # -- calibration --------------------------------------------------------------
  calibrates = True

  def calibration_stats(self, state, batch) -> jax.Array:
    return self.validation_stats(state, batch)

  def validation_stats(self, state, batch) -> jax.Array:
    """Per image and k, the maximum of the eta statistic of S^0: [B, len(ks)]."""
    x = batch["image"].astype(jnp.float32)
    out = []
    for k in self.ks:
      s0 = self.initial_map(state["params"], state["model_state"], x, k)
      stat = patch_mean(s0, k) if self.eta_statistic == "patch" else s0
      out.append(jnp.max(stat, axis=(1, 2)))
    return jnp.stack(out, axis=1)

  def calibrate(self, stats: np.ndarray, category_ids: np.ndarray) -> dict:
    """eta: the maxima of `validation_stats` over the validation normals,
    overall, per category, per scale (host arrays gathered by the loop)."""
    nk = len(self.ks)
    if len(stats) == 0:
      raise DataError("ssm: the validation split of training normals is empty, so eta "
                      "cannot be computed; set config.input.val_fraction > 0")
    stats = np.asarray(stats, np.float64).reshape(-1, nk)
    overall = stats.max(axis=0)
    per_cat = {int(c): stats[category_ids == c].max(axis=0) for c in np.unique(category_ids)}
    rows = [per_cat.get(i, overall) for i in range(max(per_cat) + 1)]
    return {"eta": float(overall.max()),
            "eta_per_category": [float(r.max()) for r in rows],
            "eta_per_scale": [float(v) for v in overall],
            "eta_per_category_scale": [[float(v) for v in r] for r in rows]}

  def describe(self) -> dict:
    return {"init": "random (no pretrained weights)",
            "model": f"SsmUNet widths={self.widths} mam={self.use_mam} " + " ".join(
                f"{k}={v}" for k, v in self.unet.items()
                if k != "up_kernel" or self.unet["upsample"] == "nearest"),
            "inference": (f"progressive mask refinement (lax.while_loop, max_iters="
                          f"{self.max_iters}), k in {self.ks}, eta {self.eta_mode} "
                          f"{'per k ' if self.eta_per_scale else 'max over k '}"
                          f"({self.eta_statistic} max) x {self.eta_scale}, image score "
                          f"{self.image_score_mode}, refined map {self.refined_map}")
                         if self.refine_on else
                         f"no refinement: {self.num_random_masks} random masks per k in {self.ks}",
            "value_range": f"losses/errors on [0, 1] images; U-Net input {self.input_range}",
            "extra_outputs": "score() also returns 'iterations' [B]"}
