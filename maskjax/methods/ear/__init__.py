"""EAR (Park et al. 2023): excision by attention, mosaic hint, recovery by a U-Net.

Per image I (float32 [H,W,3] in [0, 1]), on device and under jit, in both the
train step and `score`:

  1. saliency A [H,W] (`config.method.saliency_source`):
       "vit": last-block CLS attention, head mean, of a frozen ViT
         (`config.model.saliency_arch`, default ViT-S/8) on the ImageNet-
         normalised image, bilinearly upsampled (`maskjax.models.vit.saliency`).
         Weights from `config.model.saliency_init_from` (a converted DINO
         checkpoint, `maskjax.weights.load_into`); without one the ViT is
         randomly initialised, which `describe()` and the log say. The ViT's
         parameters live in the state under "saliency" and are never updated.
       "spectral_residual": a weight-free saliency (Hou & Zhang 2007; see
         `core.spectral_residual_saliency`) for runs without a checkpoint.
  2. S = A > mean(A) + 0.674 std(A) (per image, population std; `core.binarise`);
     with `config.method.use_attention = False` (the paper's EAR w/o attn)
     S = 1 everywhere.
  3. I' = M_m(I) * S + I * (1 - S) (eq. 1), M_m = m x m mosaic
     (`maskjax.ops.mosaic.mosaic`); `config.method.obfuscation = "binary"` (EAR
     w/o obf) uses M = 0 (the excised region is black in [0, 1]).
     m per category (`config.method.mosaic`): "m_hat" / "m_star" from the
     paper's Table 1 (`mosaic_table.json`; MVTec AD category names), "estimated"
     from `fit_mosaic`'s `mosaic.json`, or "fixed" (`config.method.mosaic_m`).
     Categories not in the table take the estimate when `mosaic.json` has one,
     else `config.method.mosaic_fallback`. The scales are a [num_categories]
     int array indexed by the batch's category_id; the mosaic is computed for
     each distinct scale (a small static set) and selected per example.
  4. recovery: EarUNet(normalize.half(I')) -> tanh output, mapped back to
     [0, 1] (`normalize.half_inverse`) = Î.
  5. loss (training, BatchNorm in train mode): LAMP(w_l2 L2 + w_ssim L_ssim
     + w_msgms MSGMS(3 scales)) with LAMP(L) = -log(1 - clamp(L, 0, 1 - 1e-6))
     (`maskjax.ops.losses.lamp`; the gradient is zero where the clamp bites).
     L_ssim per `config.method.ssim_loss` (`core.ssim_loss`): full =
     "torchgeometry" mean(clamp(1 - SSIM, 0, 1) / 2) with weights 1 each (the
     author's code: unit-weighted sum); demo = "one_minus" 1 - SSIM, 1/3 each.
     The U-Net's skip layout is `config.model.skips` (`unet.EarUNet`).
  6. score (BatchNorm running averages): anomaly_map = MSGMS distance map
     (3 scales, "riad" variant) between I and Î, image_score = its maximum.

All losses and scores are on [0, 1] images (SSIM with dynamic range 1).

Mosaic-scale file: `config.method.mosaic_file` (a `mosaic.json` written by
`python -m maskjax.methods.ear.fit_mosaic`), default `<workdir>/mosaic.json`
of the run (set by the loop); read when present.

Duration: `config.train.epochs` over the training split (converted to steps by
the loop with the data size); `config.train.steps` > 0 overrides.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from maskjax import train_utils
from maskjax.errors import ConfigError
from maskjax.methods.base import Duration, Method, PretrainedWeights, Stage
from maskjax.methods.ear import core
from maskjax.methods.ear.unet import EarUNet
from maskjax.ops import gms, losses, normalize


class Ear(Method):
  """EAR; see the package docstring. State: U-Net params, BatchNorm statistics
  as model_state, extras {"saliency": frozen ViT parameters} when
  `saliency_source == "vit"`."""

  name = "ear"
  pretrained = (PretrainedWeights.from_url(
      "model.saliency_init_from", "DINO ViT-S/8 saliency backbone",
      "https://dl.fbaipublicfiles.com/dino/dino_deitsmall8_pretrain/"
      "dino_deitsmall8_pretrain.pth",
      arch="vit_small_patch8"),)
  input_normalization = "U-Net: [0, 1] images; saliency ViT: ImageNet mean / std"

  @classmethod
  def pretrained_modules(cls, config):
    # the weight-free spectral-residual saliency has no pretrained part
    return cls.pretrained if str(config.method.saliency_source) == "vit" else ()

  def __init__(self, config, data):
    super().__init__(config, data)
    m, mo = config.method, config.model
    self.size = int(config.input.image_size)
    if self.size % 32:
      raise ConfigError(f"ear: config.input.image_size={self.size} must be a multiple of 32 "
                        "(5 stride-2 blocks of the EAR U-Net)")
    self.widths = tuple(int(w) for w in mo.unet_widths)
    self.kernel_size = int(mo.kernel_size)
    self.negative_slope = float(mo.negative_slope)
    from maskjax.methods.ear.unet import SKIPS
    self.skips = str(mo.skips)
    if self.skips not in SKIPS:
      raise ConfigError(f"config.model.skips = {self.skips!r}; known: {', '.join(SKIPS)}")
    self.ssim_convention = str(m.ssim_loss)
    if self.ssim_convention not in core.SSIM_LOSSES:
      raise ConfigError(f"config.method.ssim_loss = {self.ssim_convention!r}; known: "
                        f"{', '.join(core.SSIM_LOSSES)}")
    self.source = str(m.saliency_source)
    if self.source not in core.SALIENCY_SOURCES:
      raise ConfigError(f"config.method.saliency_source = {self.source!r}; known: "
                        f"{', '.join(core.SALIENCY_SOURCES)}")
    self.obfuscation = str(m.obfuscation)
    if self.obfuscation not in core.OBFUSCATIONS:
      raise ConfigError(f"config.method.obfuscation = {self.obfuscation!r}; known: "
                        f"{', '.join(core.OBFUSCATIONS)}")
    self.use_attention = bool(m.use_attention)
    self.sigma = float(m.threshold_sigma)
    self.mosaic_mode = str(m.mosaic)
    if self.mosaic_mode not in core.MOSAIC_MODES:
      raise ConfigError(f"config.method.mosaic = {self.mosaic_mode!r}; known: "
                        f"{', '.join(core.MOSAIC_MODES)}")
    self.msgms_scales = int(m.msgms_scales)
    w = m.loss_weights
    self.w = {"l2": float(w.l2), "ssim": float(w.ssim), "msgms": float(w.msgms)}
    self.use_lamp = bool(m.lamp)
    self.sr_work_size = int(m.spectral_work_size)
    self.sr_sigma = float(m.spectral_blur_sigma)
    self.dtype = train_utils.compute_dtype(config.train)
    self.f = train_utils.Functional(nnx.eval_shape(lambda: self._unet(nnx.Rngs(0))))
    self._categories: list[str] = list(data.categories)
    self._scales: Optional[np.ndarray] = None
    self._scale_sources: dict = {}
    self._saliency_note = ""
    self.vit_f = None
    self._vit_path = ""
    if self.source == "vit" and self.use_attention:
      self._setup_vit()

  # -- models -----------------------------------------------------------------
  def _unet(self, rngs: nnx.Rngs) -> EarUNet:
    return EarUNet(self.widths, self.kernel_size, negative_slope=self.negative_slope,
                   skips=self.skips, rngs=rngs)

  def _vit(self, rngs: nnx.Rngs):
    from maskjax.models import vit
    mo = self.config.model
    overrides = dict(mo.saliency_overrides)
    return vit.build_vit(str(mo.saliency_arch), img_size=self.size,
                         rngs=rngs, **overrides)

  def _setup_vit(self) -> None:
    path = str(self.config.model.saliency_init_from)
    arch = str(self.config.model.saliency_arch)
    self.vit_f = train_utils.Functional(nnx.eval_shape(lambda: self._vit(nnx.Rngs(0))))
    self._vit_path = path
    if path:
      from maskjax import weights
      weights.read_meta(path)   # a missing or unreadable checkpoint fails now, not at init
      self._saliency_note = f"ViT ({arch}) CLS attention, weights from {path}"
    else:
      self._saliency_note = (f"saliency: random-init ViT ({arch}, no checkpoint; "
                             "config.model.saliency_init_from is empty)")
      logging.warning("ear: %s: its attention masks are close to arbitrary; give a converted "
                      "DINO checkpoint or use config.method.saliency_source='spectral_residual'",
                      self._saliency_note)

  # -- mosaic scales ----------------------------------------------------------
  def categories(self) -> list[str]:
    """The run's category list (category_id indexes it), from its `DataInfo`."""
    return self._categories

  def mosaic_file(self) -> str:
    path = str(self.config.method.mosaic_file)
    if not path and self.workdir:
      path = os.path.join(str(self.workdir), "mosaic.json")
    return path

  def scales(self) -> np.ndarray:
    """int32 [num_categories] mosaic scale per category id (host, static)."""
    if self._scales is not None:
      return self._scales
    m = self.config.method
    fixed = int(m.mosaic_m)
    if self.mosaic_mode == "fixed":
      self._scales = np.asarray([fixed], np.int32)
      self._scale_sources = {"*": f"{fixed}: fixed (config.method.mosaic_m)"}
      return self._scales
    estimated = {}
    path = self.mosaic_file()
    if path and os.path.isfile(path):
      try:
        with open(path) as f:
          data = json.load(f)
        estimated = {c: int(v["m_hat"]) for c, v in data.get("categories", {}).items()
                     if v.get("m_hat") is not None}
      except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"config.method.mosaic_file: cannot read {path!r} ({e}); expected "
                          "the mosaic.json written by maskjax.methods.ear.fit_mosaic") from None
    self._scales, self._scale_sources = core.category_scales(
        self.categories(), self.mosaic_mode, fixed_m=fixed,
        fallback_m=int(m.mosaic_fallback), use_table=bool(m.mosaic_table),
        estimated=estimated)
    logging.info("ear: mosaic scales per category: %s", self._scale_sources)
    return self._scales

  # -- the excision ------------------------------------------------------------
  def saliency(self, state, x01: jax.Array) -> jax.Array:
    """Raw saliency map [B,H,W] of [B,H,W,3] images in [0, 1]."""
    if self.source == "vit":
      from maskjax.models import vit
      module = self.vit_f.module(jax.lax.stop_gradient(state["saliency"]), {})
      return vit.saliency(module, normalize.imagenet(x01), x01.shape[1:3])
    return core.spectral_residual_saliency(x01, self.sr_work_size, self.sr_sigma)

  def saliency_state(self, rng: jax.Array) -> dict:
    """{"saliency": frozen ViT params} for the "vit" source (the converted
    checkpoint `config.model.saliency_init_from`, `maskjax.weights.load_params`,
    else random), else {}."""
    if self.vit_f is None:
      return {}
    _, vp, _ = train_utils.split_pure(self._vit(nnx.Rngs(params=rng)))
    if self._vit_path:
      from maskjax import weights
      vp = weights.load_params(vp, self._vit_path,
                               where=f"config.model.saliency_init_from={self._vit_path!r} does "
                                     f"not fit config.model.saliency_arch="
                                     f"{self.config.model.saliency_arch!r}")
    return {"saliency": vp}

  def saliency_mask(self, state, x01: jax.Array) -> jax.Array:
    """Binary S [B,H,W] (1 = excised)."""
    if not self.use_attention:
      return jnp.ones(x01.shape[:3], jnp.float32)
    return core.binarise(self.saliency(state, x01), self.sigma)

  def excise(self, state, x01: jax.Array, category_id: jax.Array) -> tuple[jax.Array, jax.Array]:
    """-> (I' [B,H,W,3] in [0, 1], S [B,H,W])."""
    s = self.saliency_mask(state, x01)
    if self.obfuscation == "binary":
      return core.excise(x01, s, None), s
    table = self.scales()
    if table.size == 1:
      from maskjax.ops import mosaic as mosaic_ops
      hint = mosaic_ops.mosaic(x01, int(table[0]))
    else:
      per_ex = jnp.take(jnp.asarray(table), category_id.astype(jnp.int32), mode="clip")
      hint = core.mosaic_per_example(x01, per_ex, tuple(int(v) for v in np.unique(table)))
    return core.excise(x01, s, hint), s

  def recover(self, params, rest, xp01: jax.Array, train: bool):
    inp = normalize.half(xp01)
    if self.dtype != jnp.float32:
      params = train_utils.cast_floating(params, self.dtype)
      inp = inp.astype(self.dtype)
    out, new_rest = self.f.apply(params, rest, inp, train=train)
    return normalize.half_inverse(out.astype(jnp.float32)), new_rest

  def loss_terms(self, recon01: jax.Array, x01: jax.Array) -> dict:
    return {"l2": jnp.mean(jnp.square(recon01 - x01)),
            "ssim": core.ssim_loss(recon01, x01, self.ssim_convention),
            "msgms": gms.msgms_loss(recon01, x01, self.msgms_scales)}

  def objective(self, recon01: jax.Array, x01: jax.Array) -> tuple[jax.Array, dict, jax.Array]:
    """-> (training loss, {term: value}, combined L = sum_n w_n term_n); the
    loss is LAMP(L) (eq. 5) when `config.method.lamp`, else L."""
    terms = self.loss_terms(recon01, x01)
    comb = sum(self.w[n] * v for n, v in terms.items())
    return (losses.lamp(comb) if self.use_lamp else comb), terms, comb

  # -- training ---------------------------------------------------------------
  def stages(self) -> list[Stage]:
    if self.obfuscation == "mosaic":
      self.scales()  # resolve on the host, before tracing

    def init_model(rng, previous):
      del previous
      _, params, rest = train_utils.split_pure(self._unet(nnx.Rngs(params=rng)))
      return params, rest, self.saliency_state(jax.random.fold_in(rng, 1))

    def prepare(state, batch, rng, step):
      x = batch["image"].astype(jnp.float32)
      xp, s = self.excise(state["extras"], x, batch["category_id"])
      return {"x": x, "xp": jax.lax.stop_gradient(xp), "s": s}, {}

    def loss_fn(params, state, batch, rng, step):
      recon, rest = self.recover(params, state["model_state"], batch["xp"], train=True)
      loss, terms, comb = self.objective(recon, batch["x"])
      aux = {f"loss/{n}": v for n, v in terms.items()}
      aux["loss/comb"] = comb
      aux["mask_fraction"] = jnp.mean(batch["s"])
      aux["model_state"] = rest
      return loss, aux

    return [Stage(name="train", duration=Duration(epochs=int(self.config.train.epochs)),
                  batch_size=int(self.config.input.batch_size), optim=self.config.optim,
                  init_model=init_model, loss_fn=loss_fn, prepare=prepare)]

  # -- scoring ----------------------------------------------------------------
  def reconstruct(self, state, batch) -> dict:
    """{"excised": I', "mask": S, "recon": Î} for a batch (eval mode)."""
    x = batch["image"].astype(jnp.float32)
    xp, s = self.excise(state["extras"], x, batch["category_id"])
    recon, _ = self.recover(state["params"], state["model_state"], xp, train=False)
    return {"excised": xp, "mask": s, "recon": recon}

  def score(self, state, batch, calibration) -> dict:
    del calibration
    x = batch["image"].astype(jnp.float32)
    recon = self.reconstruct(state, batch)["recon"]
    amap = gms.msgms_map(recon, x, self.msgms_scales)
    return {"anomaly_map": amap.astype(jnp.float32),
            "image_score": jnp.max(amap, axis=(1, 2)).astype(jnp.float32)}

  def describe(self) -> dict:
    if not self.use_attention:
      sal = "none (EAR w/o attn: mosaic over the whole image)"
    elif self.source == "vit":
      sal = self._saliency_note
    else:
      sal = (f"saliency: spectral residual (weight-free, work size {self.sr_work_size}, "
             f"blur sigma {self.sr_sigma}); no ViT")
    out = {"saliency": sal,
           "mask": f"S = A > mean + {self.sigma} std (per image, population std)",
           "obfuscation": ("mosaic hint (eq. 1)" if self.obfuscation == "mosaic"
                           else "binary (EAR w/o obf): excised region set to 0"),
           "model": f"EarUNet widths={self.widths} kernel={self.kernel_size} skips={self.skips}",
           "loss": (("LAMP(" if self.use_lamp else "(") +
                    f"{self.w['l2']:.3g} L2 + {self.w['ssim']:.3g} SSIM[{self.ssim_convention}] + "
                    f"{self.w['msgms']:.3g} MSGMS({self.msgms_scales} scales))"),
           "score": f"MSGMS map ({self.msgms_scales} scales), image score = max",
           "value_range": "losses and scores on [0, 1] images; U-Net input mean=std=0.5"}
    if self.obfuscation == "mosaic":
      try:
        self.scales()
        out["mosaic"] = f"{self.mosaic_mode}: " + ", ".join(
            f"{k}={v}" for k, v in self._scale_sources.items())
      except Exception as e:  # description must not fail the run
        out["mosaic"] = f"{self.mosaic_mode} (unresolved: {e})"
    return out
