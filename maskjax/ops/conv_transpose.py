"""The U-Nets' 4x4 stride-2 transposed convolution with a fast kernel gradient.

The forward pass is exactly `lax.conv_transpose(x, k, (2, 2), "SAME")`, what
`nnx.ConvTranspose` computes (no kernel flip, PyTorch `padding=1` geometry).
Autodiff differentiates it with respect to the kernel through an lhs-dilated
convolution, which XLA:CPU runs outside its fast convolution path (about 20-100x
slower than the forward pass: `benchmarks/conv_transpose_grad.py`). The kernel
gradient is the same number written another way:

  <dy, conv_transpose(x, k)> = <conv_s2(dy, T(k)), x>,

with conv_s2 the 4x4 stride-2 convolution with padding 1 and T(k) the kernel
flipped in space with its in/out channels swapped. So d/dk is the kernel
gradient of an ordinary strided convolution (an rhs-dilated convolution, the
fast path), mapped back through T. The input gradient is autodiff's. Values
equal autodiff's up to float32 summation order (tests/test_conv_transpose.py).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

_DN = ("NHWC", "HWIO", "NHWC")


def _forward(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return lax.conv_transpose(x, kernel, (2, 2), "SAME", dimension_numbers=_DN)


def _swap(kernel: jax.Array) -> jax.Array:
  """T(k): flip the 4x4 window, swap in/out channels (an involution)."""
  return jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)


@jax.custom_vjp
def conv_transpose_4x4_s2(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """x [N, H, W, Cin], kernel [4, 4, Cin, Cout] -> [N, 2H, 2W, Cout]."""
  return _forward(x, kernel)


def _fwd(x, kernel):
  return _forward(x, kernel), (x, kernel)


def _bwd(res, dy):
  x, kernel = res
  _, input_vjp = jax.vjp(lambda x_: _forward(x_, kernel), x)
  (dx,) = input_vjp(dy)
  strided = lambda kt: lax.conv_general_dilated(  # noqa: E731
      dy, kt, (2, 2), ((1, 1), (1, 1)), dimension_numbers=_DN)
  _, kernel_vjp = jax.vjp(strided, _swap(kernel))
  (dkt,) = kernel_vjp(x)
  return dx, _swap(dkt)


conv_transpose_4x4_s2.defvjp(_fwd, _bwd)
