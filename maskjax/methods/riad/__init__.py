"""RIAD (Zavrtanik et al., PR 2021): inpainting with disjoint random grid masks.

Training (one stage, "train"): per step one cell size k is drawn from
`config.method.ks` (as in the public RIAD ports) and one set of n = 3 disjoint
grid masks (`maskjax.ops.masks.disjoint_grid_masks`, 1 = visible, 0 = masked)
shared by the batch. The U-Net runs on the 3 masked copies of the batch at once
(a batch of 3B: BatchNorm statistics are taken over the 3B inputs), and the
inpainted image is `sum_i out_i * (1 - M_i)` (each pixel comes from the one
pass that did not see it).

Value ranges: batches arrive in [0, 1]; the U-Net sees mean = std = 0.5
normalised images ([-1, 1]; masked pixels are 0 there, i.e. mid-grey) and its
tanh output is in the same space. `config.method.metric_space` picks the space
of every loss and score term:
  "half" (full config, both public RIAD ports): the [-1, 1] tensors the U-Net
    sees and returns, with the constants unchanged (SSIM C1 = 0.01^2,
    C2 = 0.03^2, GMS c = 0.0026). Relative to the data these constants are 4x
    smaller than on [0, 1], L2 is 4x the [0, 1] one, and the zero-padded
    borders of the SSIM / Prewitt filters see mid-grey instead of black;
  "unit" (demo, the previous behaviour): images mapped back to [0, 1]
    (`normalize.half_inverse`), SSIM with a dynamic range of 1.

Loss = w_l2 * mean((r - x)^2) + w_ssim * (1 - mean SSIM(r, x)) +
       w_msgms * MSGMS loss(r, x), weights `config.method.loss_weights`; the
MSGMS loss is the mean of the resized multi-scale map ("map", taikiinoue45 at
HEAD) or the mean over scales of each scale's own map ("per_scale", the
plutoyuxie port), `config.method.msgms_loss_reduction`.

Scoring: for each k in `config.method.ks`, the same 3 disjoint masks for every
image (fixed key `config.method.score_seed` folded with k: deterministic),
inpainting as in training with BatchNorm running averages, MSGMS distance map
(`config.method.msgms_variant`, 4 scales). `config.method.score_pipeline`:
  "taikiinoue45": maps summed over k, filtered by a 21x21 box mean (zero
    padding 10, divisor 441; `config.method.score_filter`);
  "plutoyuxie" (that port's test.py, with its "gray_median" MSGMS): each k's
    map weighted by 1 / N_k^2 with N_k = image size // k (the number of grid
    cells per side), summed, then `scipy.ndimage.gaussian_filter(sigma=7)`
    per image (reflect borders, radius int(4 * 7 + 0.5) = 28). The port's
    MSGMS score map is (1 - sum_s GMS_s) / 4, ours 1 - sum_s GMS_s / 4: a
    constant 3/4 apart, so the port's map = ours - 0.75 * sum_k 1 / N_k^2
    everywhere (same ranking, same AUROC / AUPRO).
The image score is the maximum of the filtered map.

Duration: `config.train.epochs` over the training split (the loop converts
epochs to steps with the data size); `config.train.steps` > 0 overrides.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from maskjax import train_utils
from maskjax.methods.base import Stage, config_choice
from maskjax.methods.grid_inpainting import GridInpaintingMethod
from maskjax.models.unet import RiadUNet
from maskjax.ops import filters, gms, normalize, ssim
from maskjax.ops import masks as masks_lib

METRIC_SPACES = ("half", "unit")
SCORE_PIPELINES = ("taikiinoue45", "plutoyuxie")
MSGMS_LOSS_REDUCTIONS = ("map", "per_scale")
PLUTOYUXIE_SIGMA = 7.0     # test.py: gaussian_filter(score[i], sigma=7)


class Riad(GridInpaintingMethod):
  """One stage: the inpainting U-Net trained on disjoint grid masks; its
  BatchNorm statistics are the state's model_state. Scores by MSGMS over the
  fixed masks of every k."""

  name = "riad"
  UNET_KEYS = ("upsample", "up_block")

  def __init__(self, config, data):
    super().__init__(config, data)
    m = config.method
    self.num_masks = int(m.num_masks)
    w = m.loss_weights
    self.w = {"l2": float(w.l2), "ssim": float(w.ssim), "msgms": float(w.msgms)}
    self.msgms_variant = config_choice(str(m.msgms_variant), gms.VARIANTS,
                                 "config.method.msgms_variant")
    self.msgms_scales = int(m.msgms_scales)
    self.metric_space = config_choice(str(m.metric_space), METRIC_SPACES, "config.method.metric_space")
    self.score_pipeline = config_choice(str(m.score_pipeline), SCORE_PIPELINES,
                                  "config.method.score_pipeline")
    self.msgms_loss_reduction = config_choice(str(m.msgms_loss_reduction), MSGMS_LOSS_REDUCTIONS,
                                        "config.method.msgms_loss_reduction")
    self.filter_size = int(m.score_filter)
    self.f = train_utils.abstract_functional(self._factory)

  def _factory(self, rngs: nnx.Rngs) -> RiadUNet:
    return RiadUNet(self.widths, **self.unet, rngs=rngs)

  # -- model ------------------------------------------------------------------
  def inpaint_half(self, params, rest, x01: jax.Array, masks: jax.Array, train: bool):
    """x01 [B,H,W,3] in [0,1], masks [n,H,W] (1 visible) -> (inpainted [B,H,W,3]
    in the U-Net's [-1, 1] space, new rest). The model sees the n masked copies
    as one batch; each pixel comes from the pass that did not see it."""
    n = masks.shape[0]
    b, h, w, c = x01.shape
    xn = normalize.half(x01)
    inp = (xn[None] * masks[:, None, :, :, None]).reshape(n * b, h, w, c)
    if self.dtype != jnp.float32:
      params = train_utils.cast_floating(params, self.dtype)
      inp = inp.astype(self.dtype)
    out, new_rest = self.f.apply(params, rest, inp, train=train)
    out = out.astype(jnp.float32).reshape(n, b, h, w, c)
    return jnp.sum(out * (1.0 - masks)[:, None, :, :, None], axis=0), new_rest

  def inpaint(self, params, rest, x01: jax.Array, masks: jax.Array, train: bool):
    """As `inpaint_half`, the inpainted image mapped back to [0, 1]."""
    recon, new_rest = self.inpaint_half(params, rest, x01, masks, train)
    return normalize.half_inverse(recon), new_rest

  def metric_pair(self, recon_half: jax.Array, x01: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(reconstruction, image) in `config.method.metric_space`: the [-1, 1]
    tensors ("half") or both in [0, 1] ("unit")."""
    if self.metric_space == "half":
      return recon_half, normalize.half(x01)
    return normalize.half_inverse(recon_half), x01

  def loss_terms(self, recon: jax.Array, x: jax.Array) -> dict:
    """The loss terms of a (reconstruction, image) pair given in the metric space."""
    return {
        "l2": jnp.mean(jnp.square(recon - x)),
        "ssim": ssim.ssim_loss(recon, x, data_range=1.0),
        "msgms": gms.msgms_loss(recon, x, self.msgms_scales, self.msgms_variant,
                                reduction=self.msgms_loss_reduction),
    }

  def _train_masks(self, rng: jax.Array) -> jax.Array:
    k_rng, m_rng = jax.random.split(rng)
    idx = jax.random.randint(k_rng, (), 0, len(self.ks))
    branches = [
        (lambda r, k=k: masks_lib.disjoint_grid_masks(r, self.size, self.size, k,
                                                      self.num_masks))
        for k in self.ks]
    return jax.lax.switch(idx, branches, m_rng), jnp.asarray(self.ks)[idx]

  # -- training ---------------------------------------------------------------
  def stages(self) -> list[Stage]:
    def prepare(state, batch, rng, step):
      masks, k = self._train_masks(rng)  # one set of masks for the whole batch
      return {"image": batch["image"].astype(jnp.float32)}, {"masks": masks, "k": k}

    def loss_fn(params, state, batch, rng, step):
      x = batch["image"].astype(jnp.float32)
      recon, rest = self.inpaint_half(params, state["model_state"], x, batch["masks"],
                                      train=True)
      terms = self.loss_terms(*self.metric_pair(recon, x))
      loss = sum(self.w[n] * v for n, v in terms.items())
      aux = {f"loss/{n}": v for n, v in terms.items()}
      aux["k"] = batch["k"].astype(jnp.float32)
      aux["model_state"] = rest
      return loss, aux

    return [self.train_stage(loss_fn, prepare)]

  # -- scoring ----------------------------------------------------------------
  def score_masks(self, k: int) -> jax.Array:
    """The fixed test-time masks [n,H,W] for cell size k."""
    return masks_lib.disjoint_grid_masks(self.score_key(k), self.size, self.size, k,
                                         self.num_masks)

  def score(self, state, batch, calibration) -> dict:
    del calibration
    x = batch["image"].astype(jnp.float32)
    total = None
    for k in self.ks:
      recon, _ = self.inpaint_half(state["params"], state["model_state"], x,
                                   self.score_masks(k), train=False)
      m = gms.msgms_map(*self.metric_pair(recon, x), self.msgms_scales, self.msgms_variant)
      if self.score_pipeline == "plutoyuxie":
        m = m / float((self.size // k) ** 2)
      total = m if total is None else total + m
    if self.score_pipeline == "plutoyuxie":
      amap = filters.gaussian_filter_reflect(total, PLUTOYUXIE_SIGMA)
    else:
      amap = gms.riad_score_filter(total, self.filter_size) if self.filter_size > 1 else total
    return {"anomaly_map": amap.astype(jnp.float32),
            "image_score": jnp.max(amap, axis=(1, 2)).astype(jnp.float32)}

  def describe(self) -> dict:
    return {"init": "random (no pretrained weights)",
            "model": f"RiadUNet widths={self.widths} " + " ".join(
                f"{k}={v}" for k, v in self.unet.items()),
            "masks": f"{self.num_masks} disjoint grid masks, k in {self.ks}",
            "score": (f"MSGMS ({self.msgms_variant}, {self.msgms_scales} scales) summed over k, "
                      f"{self.filter_size}x{self.filter_size} box filter, image score = max"
                      if self.score_pipeline == "taikiinoue45" else
                      f"MSGMS ({self.msgms_variant}, {self.msgms_scales} scales) / N_k^2 summed "
                      f"over k, Gaussian sigma {PLUTOYUXIE_SIGMA:g} (reflect), image score = max"),
            "value_range": ("losses and scores on the [-1, 1] U-Net tensors"
                            if self.metric_space == "half" else
                            "losses and scores on [0, 1] images") + "; U-Net input mean=std=0.5"}

