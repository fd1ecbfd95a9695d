"""Attention-map throughput of ViT-S/8 at 224: maskjax (jit) vs the PyTorch module.

Same random weights (the PyTorch reference module of the tests, saved as .pth,
converted with `maskjax.weights.convert`), same machine, same process. Timed
unit: images -> last-block attention -> CLS saliency map [B, 28, 28]
(maskjax `cls_attention_map` under `nnx.jit`; PyTorch `torch.no_grad()`).
Checks that both give the same maps first. On a GPU it also times bf16
compute (float32 params) for maskjax.

  python benchmarks/vit.py [--batch 8] [--iters 3] [--out benchmarks/results/vit_<device>.json]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

sys.path.insert(0, os.path.join(C.ROOT, "tests"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402

import torch_reference as tr  # noqa: E402

from maskjax import weights as W  # noqa: E402
from maskjax.models import vit  # noqa: E402
from maskjax.weights import convert  # noqa: E402


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--iters", type=int, default=3)
  p.add_argument("--size", type=int, default=224)
  p.add_argument("--out", default="")
  a = p.parse_args()
  mach = C.machine()
  backend = jax.default_backend()

  torch.manual_seed(0)
  ref = tr.VisionTransformer(patch=8, dim=384, depth=12, heads=6).eval()
  with tempfile.TemporaryDirectory() as d:
    torch.save(ref.state_dict(), os.path.join(d, "s8.pth"))
    convert.convert(os.path.join(d, "s8.pth"), os.path.join(d, "out"), "vit_small_patch8")
    models = {"float32": W.build(os.path.join(d, "out"))}
    if backend == "gpu":
      models["bfloat16"] = W.build(os.path.join(d, "out"), dtype=jnp.bfloat16)

  grid = (a.size // 8, a.size // 8)

  @nnx.jit
  def jax_maps(model, x):
    return vit.cls_attention_map(model(x, return_attention=True)["attention"], grid)

  def torch_maps(x):
    with torch.no_grad():
      _, _, attn = ref(x)
      return attn[:, :, 0, 1:].mean(1).reshape(x.shape[0], *grid)

  rng = np.random.default_rng(0)
  x_np = rng.standard_normal((a.batch, a.size, a.size, 3)).astype(np.float32)
  x_t = torch.from_numpy(x_np.transpose(0, 3, 1, 2).copy())
  x_j = jax.device_put(jnp.asarray(x_np))

  t0 = time.perf_counter()
  m_jax = np.asarray(jax_maps(models["float32"], x_j))
  compile_s = time.perf_counter() - t0
  m_t = torch_maps(x_t).numpy()
  max_rel = float(np.max(np.abs(m_jax - m_t)) / np.max(np.abs(m_t)))

  rows = []
  for name, model in models.items():
    if name != "float32":
      jax_maps(model, x_j).block_until_ready()
    t = C.timeit(lambda model=model: jax_maps(model, x_j), 0, a.iters)
    rows.append(dict(impl="maskjax", dtype=name, device=str(jax.devices()[0]),
                     batch=a.batch, best_s=t["best_s"], images_per_s=a.batch / t["best_s"]))
  t = C.timeit(lambda: torch_maps(x_t), 0, a.iters, sync=lambda out: out)
  rows.append(dict(impl="pytorch", dtype="float32", device="cpu", batch=a.batch,
                   best_s=t["best_s"], images_per_s=a.batch / t["best_s"]))

  print(f"ViT-S/8 at {a.size}x{a.size}, batch {a.batch}, best of {a.iters}; "
        f"maps agree to {max_rel:.2e} (max rel); maskjax compile {compile_s:.1f} s")
  C.print_table(rows, ["impl", "dtype", "device", "best_s", "images_per_s"])
  result = dict(
      benchmark="vit_s8_attention_map_throughput", image_size=a.size, batch=a.batch,
      iters=a.iters, max_rel_diff_maps=max_rel, maskjax_compile_s=compile_s, rows=rows,
      machine=C.machine_end(mach))
  C.write_json(a.out or C.result_path("vit"), result)


if __name__ == "__main__":
  main()
