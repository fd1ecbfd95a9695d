"""EAR's building blocks: saliency masks, the mosaic hint (eq. 1), mosaic-scale
tables and the r10 -> m estimator's quantisation.

Conventions: images NHWC float32 in [0, 1]; saliency / attention maps and masks
[B,H,W] float32; masks are 1 on the excised (salient) region, 0 elsewhere.

* `binarise(a)`: S = 1 where a > mean(a) + 0.674 * std(a), per image, over all
  H*W pixels; std is the *population* standard deviation (divide by H*W,
  `np.std` with ddof=0). 0.674 is the upper quartile of a standard normal
  (the paper's "Q3 = mu + 0.674 sigma").
* `excise(x, s, hint)`: eq. 1, I' = M(I) * S + I * (1 - S), with M(I) the
  mosaic (m x m block means, nearest upsampled; `maskjax.ops.mosaic.mosaic`),
  or 0 for the "binary" (w/o obfuscation) variant.
* Saliency sources: "vit" = last-layer CLS attention (head mean) of a frozen
  ViT on the ImageNet-normalised image, upsampled bilinearly
  (`maskjax.models.vit.saliency`); "spectral_residual" = a weight-free
  saliency (Hou & Zhang, CVPR 2007) for runs without a DINO checkpoint, see
  `spectral_residual_saliency`.
"""
from __future__ import annotations

import json
import math
import os
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from maskjax.ops import filters
from maskjax.ops import mosaic as mosaic_ops
from maskjax.ops import ssim as ssim_ops

Q3_SIGMA = 0.674
TABLE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mosaic_table.json")
SALIENCY_SOURCES = ("vit", "spectral_residual")
MOSAIC_MODES = ("m_hat", "m_star", "estimated", "fixed")
OBFUSCATIONS = ("mosaic", "binary")
SSIM_LOSSES = ("torchgeometry", "kornia", "one_minus")


# ----------------------------------------------------------------------------
# saliency
# ----------------------------------------------------------------------------
def binarise(a: jax.Array, sigma: float = Q3_SIGMA) -> jax.Array:
  """[B,H,W] attention -> [B,H,W] float32 mask, 1 where a > mu + sigma * std
  (per image, population std)."""
  a = a.astype(jnp.float32)
  mu = jnp.mean(a, axis=(1, 2), keepdims=True)
  sd = jnp.std(a, axis=(1, 2), keepdims=True)
  return (a > mu + sigma * sd).astype(jnp.float32)


def spectral_residual_saliency(x: jax.Array, work_size: int = 64, blur_sigma: float = 2.5
                               ) -> jax.Array:
  """Spectral-residual saliency of [B,H,W,3] images in [0, 1] -> [B,H,W] float32.

  Hou & Zhang (2007): gray = channel mean, resized to work_size^2 (bilinear,
  antialiased); F = FFT2(gray); L = log(|F| + 1e-8); R = L - mean3x3(L) (3x3
  box mean with periodic wrap, the spectrum being periodic); saliency =
  |IFFT2(exp(R + i angle(F)))|^2, Gaussian-blurred (size 2*ceil(2 sigma)+1,
  zero padding), resized back to H x W (bilinear). Unusual, non-repeating
  structure (defects in regular textures, object outlines) scores high.
  Pure, jit-able, no weights.
  """
  b, h, w, _ = x.shape
  g = jnp.mean(x.astype(jnp.float32), axis=-1)
  g = jax.image.resize(g, (b, work_size, work_size), "linear")
  f = jnp.fft.fft2(g)
  logamp = jnp.log(jnp.abs(f) + 1e-8)
  phase = jnp.angle(f)
  avg = sum(jnp.roll(logamp, (dy, dx), axis=(1, 2))
            for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9.0
  resid = logamp - avg
  s = jnp.abs(jnp.fft.ifft2(jnp.exp(resid + 1j * phase))) ** 2
  size = 2 * int(math.ceil(2 * blur_sigma)) + 1
  s = filters.gaussian_filter(s[..., None], size, blur_sigma)[..., 0]
  return jax.image.resize(s.astype(jnp.float32), (b, h, w), "linear")


# ----------------------------------------------------------------------------
# eq. 1
# ----------------------------------------------------------------------------
def mosaic_per_example(x: jax.Array, m_per_example: jax.Array, m_values: Sequence[int]
                       ) -> jax.Array:
  """Mosaic of each image with its own scale.

  x [B,H,W,C]; m_per_example int [B] whose values are all in the static set
  `m_values`: the mosaic is computed once per distinct scale and selected per
  example (an example whose m is not in `m_values` gets x unchanged).
  """
  out = x
  for m in sorted({int(v) for v in m_values}):
    sel = (m_per_example == m)[:, None, None, None]
    out = jnp.where(sel, mosaic_ops.mosaic(x, m), out)
  return out


def excise(x: jax.Array, s: jax.Array, hint: jax.Array | None) -> jax.Array:
  """EAR eq. 1: I' = hint * S + I * (1 - S). x, hint [B,H,W,C]; s [B,H,W] in
  {0,1}; hint None = binary masking (the excised region becomes 0)."""
  s4 = s.astype(x.dtype)[..., None]
  kept = x * (1.0 - s4)
  return kept if hint is None else hint * s4 + kept


# ----------------------------------------------------------------------------
# SSIM loss conventions
# ----------------------------------------------------------------------------
def ssim_loss(recon: jax.Array, x: jax.Array, convention: str) -> jax.Array:
  """Scalar SSIM loss of [B,H,W,C] images in [0, 1] (window 11, sigma 1.5,
  zero padding 5, data range 1; `maskjax.ops.ssim.ssim_map`), per pixel and
  channel then averaged over everything:

    "torchgeometry": mean(clamp(1 - ssim, 0, 1) / 2), `torchgeometry.losses.SSIM`
      (kornia <= 0.2's `SSIM` loss), what the author's code calls;
    "kornia": mean(clamp((1 - ssim) / 2, 0, 1)), today's `kornia.losses.ssim_loss`
      (equal to the first unless a pixel's SSIM is negative: there the first
      is capped at 0.5, this one is not);
    "one_minus": 1 - mean(ssim) (RIAD / DRAEM `pytorch_ssim`), twice the others.
  """
  if convention == "torchgeometry":
    m = ssim_ops.ssim_map(recon, x, data_range=1.0)
    return jnp.mean(jnp.clip(1.0 - m, 0.0, 1.0) / 2.0)
  if convention in ("kornia", "one_minus"):
    return ssim_ops.ssim_loss(recon, x, data_range=1.0, convention=convention)
  raise ValueError(f"ear.core.ssim_loss: convention must be one of {SSIM_LOSSES}, "
                   f"got {convention!r}")


# ----------------------------------------------------------------------------
# mosaic scales
# ----------------------------------------------------------------------------
def load_table(path: str = TABLE_PATH) -> dict:
  """The paper's Table 1: {"categories": {name: {"group", "m_star", "m_hat"}}, ...}."""
  with open(path) as f:
    return json.load(f)


def base_name(category: str) -> str:
  """"mvtec/metal_nut" -> "metal_nut"; lower case, spaces -> underscores."""
  return category.split("/")[-1].strip().lower().replace(" ", "_")


def in_table(category: str, table: Mapping) -> bool:
  """A run category takes Table 1's values when its base name is a table
  category and its dataset prefix (if any) is the table's dataset."""
  parts = category.split("/")
  if len(parts) > 1 and parts[-2].lower() != str(table.get("dataset", "mvtec")).lower():
    return False
  return base_name(category) in table["categories"]


def quantise_pow2(v: float, floor: int = 2, cap: int | None = None) -> int:
  """Nearest power of two in log2 space (2^round(log2 v)), at least `floor`
  (also for v <= 0, as the paper does for 'wood'), at most `cap` if given."""
  if not np.isfinite(v) or v <= 0:
    m = floor
  else:
    m = int(2 ** int(np.round(np.log2(v))))
  m = max(int(floor), m)
  if cap is not None:
    m = min(m, int(cap))
  return m


def fit_line(r10: Sequence[float], m_star: Sequence[float]) -> tuple[float, float]:
  """Least-squares line m = slope * r10 + intercept; needs >= 2 distinct r10."""
  r = np.asarray(r10, np.float64)
  m = np.asarray(m_star, np.float64)
  if r.size < 2 or np.ptp(r) == 0:
    raise ValueError(f"fit_line: need >= 2 distinct r10 values, got {r.tolist()}")
  slope, intercept = np.polyfit(r, m, 1)
  return float(slope), float(intercept)


def category_scales(categories: Sequence[str], mode: str, *, fixed_m: int, fallback_m: int,
                    use_table: bool = True, estimated: Mapping | None = None,
                    table: Mapping | None = None, where: str = "config.method.mosaic"
                    ) -> tuple[np.ndarray, dict]:
  """Mosaic scale per run category -> (int32 [num_categories], {category: source}).

  mode "m_star" / "m_hat": Table 1 for table categories (when `use_table`),
    else the estimator's value from `estimated` ({category: m}, fit_mosaic's
    output), else `fallback_m`;
  "estimated": `estimated` for every category (error if one is missing);
  "fixed": `fixed_m` for all.
  """
  if mode not in MOSAIC_MODES:
    from maskjax.errors import ConfigError
    raise ConfigError(f"{where} = {mode!r} is not one of {MOSAIC_MODES}")
  table = table if table is not None else load_table()
  estimated = dict(estimated or {})
  out, why = [], {}
  for c in categories:
    if mode == "fixed":
      m, src = fixed_m, "fixed (config.method.mosaic_m)"
    elif mode in ("m_star", "m_hat") and use_table and in_table(c, table):
      m, src = table["categories"][base_name(c)][mode], f"Table 1 {mode}"
    elif c in estimated:
      m, src = estimated[c], "estimated (fit_mosaic)"
    elif mode == "estimated":
      from maskjax.errors import ConfigError
      raise ConfigError(
          f"{where} = 'estimated' but no estimated mosaic scale for category {c!r}; run "
          "`python -m maskjax.methods.ear.fit_mosaic --config=... --workdir=...` first "
          "(or set config.method.mosaic_file to its mosaic.json)")
    else:
      m, src = fallback_m, "fallback (config.method.mosaic_fallback)"
    if int(m) < 1:
      from maskjax.errors import ConfigError
      raise ConfigError(f"mosaic scale for category {c!r} must be >= 1 (got {m}, from {src})")
    out.append(int(m))
    why[c] = f"{int(m)}: {src}"
  return np.asarray(out, np.int32), why
