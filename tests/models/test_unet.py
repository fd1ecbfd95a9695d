"""U-Net shapes, BatchNorm modes and the mask attention module (eq. 2)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import ndimage

from maskjax.models import unet
from maskjax.train_utils import Functional


def _count(module) -> int:
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(module, nnx.Param)))


@pytest.mark.parametrize("upsample", ["transpose", "nearest"])
def test_riad_unet_shapes_and_range(upsample):
  m = unet.RiadUNet((4, 8, 8), upsample=upsample, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 3))
  y = m(x, train=True)
  assert y.shape == (2, 16, 16, 3)
  assert float(jnp.max(jnp.abs(y))) <= 1.0
  with pytest.raises(ValueError, match="divisible by 4"):
    m(jnp.zeros((1, 18, 18, 3)))


def test_riad_unet_full_width_parameter_count():
  # widths 64-512: 5 encoder levels, 4 decoder levels; the count pins the
  # layer list (conv3x3 x2, conv4x4 s2 + conv3x3, ConvT 4x4, 2 x conv3x3 decoders).
  widths = (64, 128, 256, 512, 512)
  m = nnx.eval_shape(lambda: unet.RiadUNet(widths, rngs=nnx.Rngs(0)))

  def conv(k, cin, cout):
    return k * k * cin * cout + cout

  bn = lambda c: 2 * c
  n = conv(3, 3, 64) + bn(64) + conv(3, 64, 64) + bn(64)
  for a, b in zip(widths[:-1], widths[1:]):
    n += conv(4, a, b) + bn(b) + conv(3, b, b) + bn(b)
  cur = widths[-1]
  for w in reversed(widths[:-1]):
    n += conv(4, cur, w) + bn(w) + conv(3, 2 * w, w) + bn(w) + conv(3, w, w) + bn(w)
    cur = w
  n += conv(3, 64, 3)
  assert _count(m) == n


def test_ssm_unet_heads_and_mam_switch():
  with_mam = unet.SsmUNet((4, 8, 8), use_mam=True, rngs=nnx.Rngs(0))
  no_mam = unet.SsmUNet((4, 8, 8), use_mam=False, rngs=nnx.Rngs(0))
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 16, 16, 3))
  mask = jnp.ones((2, 16, 16)).at[:, :8].set(0.0)
  img, msk = with_mam(x, mask, train=True)
  assert img.shape == (2, 16, 16, 3) and msk.shape == (2, 16, 16)
  # MAMs after the bottleneck (8 ch) and after each decoder level (8, 4 ch):
  # per module BN(c) + conv3x3 (c+1 -> c) + BN(c) + conv3x3 (c -> c).
  mam = lambda c: 2 * c + (9 * (c + 1) * c + c) + 2 * c + (9 * c * c + c)
  assert _count(with_mam) - _count(no_mam) == mam(8) + mam(8) + mam(4)
  assert not hasattr(no_mam.body, "mam")


def test_ssm_unet_only_sees_visible_pixels():
  m = unet.SsmUNet((4, 8), rngs=nnx.Rngs(0))
  mask = jnp.ones((1, 8, 8)).at[:, 2:6, 2:6].set(0.0)
  x1 = jax.random.uniform(jax.random.PRNGKey(1), (1, 8, 8, 3))
  x2 = x1.at[:, 2:6, 2:6].set(0.123)   # differs only where hidden
  a = m(x1, mask, train=False)
  b = m(x2, mask, train=False)
  np.testing.assert_allclose(a[0], b[0], atol=1e-6)


def test_batchnorm_modes_and_per_image_independence():
  m = unet.RiadUNet((4, 8), rngs=nnx.Rngs(0))
  f = Functional(m)
  x = jax.random.normal(jax.random.PRNGKey(2), (3, 8, 8, 3))
  _, rest_train = f.apply(f.params, f.rest, x, train=True)
  _, rest_eval = f.apply(f.params, f.rest, x, train=False)
  mean_t = rest_train["body"]["enc"][0][0]["bn"]["mean"]
  mean_e = rest_eval["body"]["enc"][0][0]["bn"]["mean"]
  assert float(jnp.max(jnp.abs(mean_t))) > 0          # train updates running stats
  np.testing.assert_array_equal(mean_e, f.rest["body"]["enc"][0][0]["bn"]["mean"])
  full, _ = f.apply(f.params, rest_train, x, train=False)
  one, _ = f.apply(f.params, rest_train, x[1:2], train=False)
  np.testing.assert_allclose(full[1:2], one, atol=1e-5)


def test_mask_attention_matches_numpy_formula():
  c = 3
  mod = unet.MaskAttention(c, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.PRNGKey(3), (1, 4, 4, c))
  mask = jnp.ones((1, 8, 8)).at[:, :4, :4].set(0.0)     # nearest-resized to 4x4
  out = mod(x, mask, train=False)
  xn = np.asarray(x, np.float64)[0]
  m = np.ones((4, 4)); m[:2, :2] = 0.0

  def bn(v, layer):
    return ((v - np.asarray(layer.mean.value)) / np.sqrt(np.asarray(layer.var.value) + 1e-5)
            * np.asarray(layer.scale.value) + np.asarray(layer.bias.value))

  def conv(v, layer):
    k = np.asarray(layer.kernel.value, np.float64)  # [3,3,cin,cout]
    out = np.zeros(v.shape[:2] + (k.shape[-1],))
    for o in range(k.shape[-1]):
      for i in range(k.shape[-2]):
        out[..., o] += ndimage.correlate(v[..., i], k[:, :, i, o], mode="constant")
    return out + np.asarray(layer.bias.value)

  y = conv(np.concatenate([bn(xn, mod.bn_in), m[..., None]], -1), mod.conv1)
  y = np.maximum(bn(y, mod.bn_mid), 0.0)
  want = xn + conv(y, mod.conv2) * m[..., None]
  np.testing.assert_allclose(np.asarray(out[0]), want, atol=1e-4)
  # fully hidden -> identity
  np.testing.assert_allclose(mod(x, jnp.zeros((1, 4, 4)), train=False), x, atol=0)
