"""Parameter initialisers that compile quickly under `jax.jit` and give the same values.

Why: with threefry keys, every `jax.random` draw of a new shape lowers to its
own unrolled threefry-2x32 computation (20 rounds of 32-bit mixing per
element), and XLA compiles one such kernel per distinct parameter shape. A
U-Net has ~20 distinct kernel shapes, so its jitted init spent ~0.7 s of XLA
CPU compile time per shape (~12 s for the RIAD demo net on an idle 2-core
CPU, ~27 s when loaded) for a few milliseconds of work.

`fast(init)` wraps a Flax initialiser so that its random bits come from
fixed-size chunks: the flat index range of the parameter is covered by
`lax.map` over chunks of `CHUNK` counters, each chunk one threefry call of the
same shape, so all parameters share one compiled kernel. With
`jax_threefry_partitionable` (the default since JAX 0.5) the bits of element i
of `jax.random.bits(key, shape)` are threefry(key, (i >> 32, i & 0xffffffff)),
which depends on the flat index only; the chunked draw computes exactly those
bits, and the initialiser's own float arithmetic (uniform, erf_inv, scaling)
is unchanged, so the parameters are bit-identical to the stock initialiser's.
When the flag is off, or for non-32-bit draws, the stock path is used.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import random as jex_random

CHUNK = 1 << 14


def _chunked_bits(key_data: jax.Array, bit_width: int, shape) -> jax.Array:
  n = math.prod(shape)
  if (bit_width != 32 or not jax.config.jax_threefry_partitionable or n == 0
      or n >= 2 ** 32 - CHUNK):
    return jex_random.threefry_prng_impl.random_bits(key_data, bit_width, shape)
  k1, k2 = key_data[..., 0], key_data[..., 1]
  nchunks = -(-n // CHUNK)
  base = lax.iota(jnp.uint32, CHUNK)
  hi = jnp.zeros((CHUNK,), jnp.uint32)

  def chunk(c):
    lo = base + c * jnp.uint32(CHUNK)
    b1, b2 = jex_random.threefry2x32_p.bind(k1, k2, hi, lo)
    return b1 ^ b2

  bits = lax.map(chunk, jnp.arange(nchunks, dtype=jnp.uint32))
  return bits.reshape(-1)[:n].reshape(shape)


def _random_bits(key_data, bit_width, shape):
  if key_data.ndim != 1:  # batched keys (vmap of split keys): stock path
    return jex_random.threefry_prng_impl.random_bits(key_data, bit_width, shape)
  return _chunked_bits(key_data, bit_width, tuple(int(d) for d in shape))


_fry = jex_random.threefry_prng_impl
CHUNKED_THREEFRY = jex_random.define_prng_impl(
    key_shape=(2,), seed=_fry.seed, split=_fry.split, random_bits=_random_bits,
    fold_in=_fry.fold_in, name="threefry2x32_chunked", tag="fryc")


def _is_threefry(key) -> bool:
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    return jax.random.key_impl(key) == jax.random.key_impl(jax.random.key(0))
  return key.dtype == jnp.uint32 and key.shape[-1:] == (2,)


def rekey(key):
  """The same threefry key with the chunked `random_bits` (non-threefry keys unchanged)."""
  if not _is_threefry(key):
    return key
  data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
  return jax.random.wrap_key_data(data, impl=CHUNKED_THREEFRY)


def fast(init):
  """`init(key, shape, dtype)` with chunked random bits (same values, faster compile)."""
  def wrapped(key, shape, dtype=jnp.float32, *args, **kwargs):
    return init(rekey(key), shape, dtype, *args, **kwargs)
  wrapped.__wrapped__ = init
  return wrapped


def lecun_normal():
  """Flax's default conv/linear kernel init, chunked (same values)."""
  return fast(jax.nn.initializers.lecun_normal())


__all__ = ["CHUNK", "CHUNKED_THREEFRY", "fast", "lecun_normal", "rekey"]
