"""Why RIAD's U-Net train step was slow on XLA:CPU: the kernel gradient of the
4x4 stride-2 transposed convolution (RIAD's decoder upsampling), as autodiff
writes it (an lhs-dilated convolution).

Times forward, d/dkernel and d/dinput of a conv 3x3, a conv 4x4 stride 2, a
plain `nnx.ConvTranspose` 4x4 stride 2, and maskjax's U-Net up-conv
(`maskjax.models.unet.Up`, same forward, kernel gradient written as a strided
conv's: `maskjax.ops.conv_transpose`) on [2, 64, 64, 128] -> 64 channels,
each jitted, best of --iters after a warm-up.

  python benchmarks/conv_transpose_grad.py [--iters 2] [--out PATH]
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from maskjax.models.unet import Up  # noqa: E402


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--iters", type=int, default=2)
  p.add_argument("--out", default="")
  a = p.parse_args()
  mach = C.machine()
  x = jnp.ones((2, 64, 64, 128))
  layers = {
      "conv3x3": nnx.Conv(128, 64, (3, 3), padding=((1, 1), (1, 1)), rngs=nnx.Rngs(0)),
      "conv4x4_s2": nnx.Conv(128, 64, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)),
                             rngs=nnx.Rngs(0)),
      "conv_transpose4x4_s2": nnx.ConvTranspose(128, 64, (4, 4), strides=(2, 2),
                                                padding="SAME", rngs=nnx.Rngs(0)),
      "maskjax_up_transpose": Up(128, 64, mode="transpose", block="conv", rngs=nnx.Rngs(0)),
  }
  rows = []
  for name, mod in layers.items():
    g, params = nnx.split(mod)
    call = (lambda m, x: m(x, False)) if isinstance(mod, Up) else (lambda m, x: m(x))
    f = lambda p, x, call=call: call(nnx.merge(g, p), x).sum()  # noqa: E731
    fns = {"forward": (jax.jit(f), (params, x)),
           "d_kernel": (jax.jit(jax.grad(f)), (params, x)),
           "d_input": (jax.jit(jax.grad(f, argnums=1)), (params, x))}
    for what, (fn, args) in fns.items():
      t = C.timeit(lambda: fn(*args), 1, a.iters)
      rows.append(dict(layer=name, op=what, best_s=t["best_s"]))
      print(f"{name:<22}{what:<10}{t['best_s']:.4f}s", flush=True)
  C.print_table(rows, ["layer", "op", "best_s"])
  C.write_json(a.out or C.result_path("conv_transpose_grad"),
               dict(benchmark="conv_transpose_grad", input=[2, 64, 64, 128], out_channels=64,
                    rows=rows, machine=C.machine_end(mach)))


if __name__ == "__main__":
  main()
