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
tanh output is in the same space. Every loss and score term is computed on
images mapped back to [0, 1] (`normalize.half_inverse`), so SSIM uses
C1, C2 of a dynamic range of 1 and L2 is the [0, 1] squared error (a quarter of
the [-1, 1] one). (The PyTorch ports compute on the normalised tensors; we
chose [0, 1] for every method so that SSIM constants mean the same thing.)

Loss = w_l2 * mean((r - x)^2) + w_ssim * (1 - mean SSIM(r, x)) +
       w_msgms * mean(MSGMS map(r, x)), weights `config.method.loss_weights`.

Scoring: for each k in `config.method.ks`, the same 3 disjoint masks for every
image (fixed key `config.method.score_seed` folded with k: deterministic),
inpainting as in training with BatchNorm running averages, MSGMS distance map
(`config.method.msgms_variant`, 4 scales). Maps are summed over k (REFERENCE:
the taikiinoue45 port), filtered by a 21x21 box mean (zero padding 10, divisor
441) and the image score is the maximum of the filtered map.

Duration: `config.train.epochs` over the training split (the loop converts
epochs to steps with the data size); `config.train.steps` > 0 overrides.
"""
from __future__ import annotations


import jax
import jax.numpy as jnp
from flax import nnx

from maskjax import train_utils
from maskjax.methods.base import Duration, Method, Stage
from maskjax.models.unet import RiadUNet, check_geometry
from maskjax.ops import gms, masks as masks_lib, normalize, ssim


# ----------------------------------------------------------------------------
# the method
# ----------------------------------------------------------------------------
class Riad(Method):
  """RIAD; see the module docstring. State: U-Net params, BatchNorm statistics
  as model_state."""

  name = "riad"
  input_normalization = "mean = std = 0.5 (images in [-1, 1])"

  def __init__(self, config, data):
    super().__init__(config, data)
    m = config.method
    self.ks = tuple(int(k) for k in m.ks)
    self.widths = tuple(int(w) for w in config.model.widths)
    self.upsample = str(config.model.upsample)
    self.size = check_geometry(config, self.ks, self.widths, "riad")
    self.num_masks = int(m.num_masks)
    w = m.loss_weights
    self.w = {"l2": float(w.l2), "ssim": float(w.ssim), "msgms": float(w.msgms)}
    self.msgms_variant = str(m.msgms_variant)
    self.msgms_scales = int(m.msgms_scales)
    self.filter_size = int(m.score_filter)
    self.score_seed = int(m.score_seed)
    self.dtype = train_utils.compute_dtype(config.train)
    self.f = train_utils.abstract_functional(self._factory)

  def _factory(self, rngs: nnx.Rngs) -> RiadUNet:
    return RiadUNet(self.widths, upsample=self.upsample, rngs=rngs)

  # -- model ------------------------------------------------------------------
  def inpaint(self, params, rest, x01: jax.Array, masks: jax.Array, train: bool):
    """x01 [B,H,W,3] in [0,1], masks [n,H,W] (1 visible) -> (inpainted [B,H,W,3]
    in [0,1], new rest). The model sees the n masked copies as one batch."""
    n = masks.shape[0]
    b, h, w, c = x01.shape
    xn = normalize.half(x01)
    inp = (xn[None] * masks[:, None, :, :, None]).reshape(n * b, h, w, c)
    if self.dtype != jnp.float32:
      params = train_utils.cast_floating(params, self.dtype)
      inp = inp.astype(self.dtype)
    out, new_rest = self.f.apply(params, rest, inp, train=train)
    out = out.astype(jnp.float32).reshape(n, b, h, w, c)
    recon = jnp.sum(out * (1.0 - masks)[:, None, :, :, None], axis=0)
    return normalize.half_inverse(recon), new_rest

  def loss_terms(self, recon01: jax.Array, x01: jax.Array) -> dict:
    return {
        "l2": jnp.mean(jnp.square(recon01 - x01)),
        "ssim": ssim.ssim_loss(recon01, x01, data_range=1.0),
        "msgms": gms.msgms_loss(recon01, x01, self.msgms_scales, self.msgms_variant),
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
    def init_model(rng, previous):
      del previous
      params, rest = train_utils.init_pure(self._factory, rng)
      return params, rest, {}

    def prepare(state, batch, rng, step):
      masks, k = self._train_masks(rng)  # one set of masks for the whole batch
      return {"image": batch["image"].astype(jnp.float32)}, {"masks": masks, "k": k}

    def loss_fn(params, state, batch, rng, step):
      x = batch["image"].astype(jnp.float32)
      recon, rest = self.inpaint(params, state["model_state"], x, batch["masks"], train=True)
      terms = self.loss_terms(recon, x)
      loss = sum(self.w[n] * v for n, v in terms.items())
      aux = {f"loss/{n}": v for n, v in terms.items()}
      aux["k"] = batch["k"].astype(jnp.float32)
      aux["model_state"] = rest
      return loss, aux

    return [Stage(name="train", duration=Duration(epochs=int(self.config.train.epochs)),
                  batch_size=int(self.config.input.batch_size), optim=self.config.optim,
                  init_model=init_model, loss_fn=loss_fn, prepare=prepare)]

  # -- scoring ----------------------------------------------------------------
  def score_masks(self, k: int) -> jax.Array:
    """The fixed test-time masks [n,H,W] for cell size k."""
    key = jax.random.fold_in(jax.random.PRNGKey(self.score_seed), k)
    return masks_lib.disjoint_grid_masks(key, self.size, self.size, k, self.num_masks)

  def score(self, state, batch, calibration) -> dict:
    del calibration
    x = batch["image"].astype(jnp.float32)
    total = None
    for k in self.ks:
      recon, _ = self.inpaint(state["params"], state["model_state"], x, self.score_masks(k),
                              train=False)
      m = gms.msgms_map(recon, x, self.msgms_scales, self.msgms_variant)
      total = m if total is None else total + m
    amap = gms.riad_score_filter(total, self.filter_size) if self.filter_size > 1 else total
    return {"anomaly_map": amap.astype(jnp.float32),
            "image_score": jnp.max(amap, axis=(1, 2)).astype(jnp.float32)}

  def describe(self) -> dict:
    return {"init": "random (no pretrained weights)",
            "model": f"RiadUNet widths={self.widths} upsample={self.upsample}",
            "masks": f"{self.num_masks} disjoint grid masks, k in {self.ks}",
            "score": f"MSGMS ({self.msgms_variant}, {self.msgms_scales} scales) summed over k, "
                     f"{self.filter_size}x{self.filter_size} box filter, image score = max",
            "value_range": "losses and scores on [0, 1] images; U-Net input mean=std=0.5"}

