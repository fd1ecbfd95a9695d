"""Image normalisations applied on device to float images in [0, 1] (NHWC).

  imagenet: (x - (0.485, 0.456, 0.406)) / (0.229, 0.224, 0.225), for DINO / MAE
            ViTs (attention for saliency masks is always computed this way);
  half:     (x - 0.5) / 0.5, i.e. [0, 1] -> [-1, 1], for the RIAD-style U-Nets.
The inverses map back to [0, 1]. The result keeps the input dtype.
"""
from __future__ import annotations

import jax
import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
# how plans and reports name each convention (`Method.input_normalization`)
IMAGENET_NAME = "ImageNet mean / std"
HALF_NAME = "mean = std = 0.5 (images in [-1, 1])"


def imagenet(x: jax.Array) -> jax.Array:
  """[..., 3] in [0, 1] -> ImageNet-normalised."""
  return ((x - IMAGENET_MEAN) / IMAGENET_STD).astype(x.dtype)


def imagenet_inverse(x: jax.Array) -> jax.Array:
  """Inverse of `imagenet`: back to [0, 1] (no clipping)."""
  return (x * IMAGENET_STD + IMAGENET_MEAN).astype(x.dtype)


def half(x: jax.Array) -> jax.Array:
  """[0, 1] -> [-1, 1] (mean = std = 0.5)."""
  return ((x - 0.5) / 0.5).astype(x.dtype)


def half_inverse(x: jax.Array) -> jax.Array:
  """[-1, 1] -> [0, 1] (no clipping)."""
  return (x * 0.5 + 0.5).astype(x.dtype)
