r"""SSM inference throughput: the batched `lax.while_loop` refinement against the
same Algorithm 1 run image by image with a Python loop over the same jitted
network (all scales, refinement included, outputs checked equal).

  python benchmarks/ssm_inference.py                      # CPU, 64 px, demo widths
  python benchmarks/ssm_inference.py --layout full --size 256 \
      --widths 64,128,256,512,512 --batch 16              # the paper's setting (GPU)

`--layout` takes the U-Net switches and input range of that configs/ssm.py
variant (demo: the previous layout; full: the official code's).

The network is randomly initialised and then trained for `--train_steps` steps
on synthetic normals through the loop's own compiled step (`_common.TrainStep`,
so BatchNorm running statistics are realistic); eta is
calibrated on defect-free synthetic images exactly as `Ssm.calibrate` does.
Test images carry square defects so that refinement masks regions. Reference
point: the paper reports 23.5 images/s on an RTX 3090 at 256 x 256.

Prints a table and writes benchmarks/results/ssm_inference_<platform>.json.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402
from maskjax.methods import ssm as ssm_lib  # noqa: E402


def synthetic(n: int, size: int, seed: int, defects: bool) -> np.ndarray:
  """Smooth colour patterns with noise; optional square defects of 1/16-1/4 size."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:size, 0:size] / size
  out = np.empty((n, size, size, 3), np.float32)
  for i in range(n):
    f = rng.uniform(4, 8, 3)
    out[i] = np.stack([0.5 + 0.3 * np.sin(f[0] * xx + f[1] * yy),
                       0.5 + 0.3 * np.cos(f[2] * yy), 0.4 + 0.1 * xx], -1)
    out[i] += rng.normal(0, 0.02, (size, size, 3))
    if defects:
      s = int(size * rng.uniform(1 / 16, 1 / 4))
      r, c = rng.integers(0, size - s, 2)
      out[i, r:r + s, c:c + s] = rng.uniform(0, 1, 3)
  return np.clip(out, 0, 1)


def per_image_python_loop(m: ssm_lib.Ssm, state, x: jax.Array, eta: float):
  """Algorithm 1 with Python control flow, one image at a time, same network."""
  p, r = state["params"], state["model_state"]
  init = {k: jax.jit(lambda x, k=k: m.initial_map(p, r, x, k)) for k in m.ks}
  err = jax.jit(lambda x, mask: ssm_lib.error_map(x, m.reconstruct(p, r, x, mask)))
  thr = {k: jax.jit(lambda s, e, k=k: ssm_lib.threshold_mask(s, e, k)) for k in m.ks}
  maps, scores, iters = [], [], []
  for i in range(x.shape[0]):
    xi = x[i:i + 1]
    e = jnp.full((1,), eta, jnp.float32)
    mk, sk, ik = [], [], 0
    for k in m.ks:
      s = init[k](xi)
      mask, prev, it = jnp.ones_like(s), None, 0
      while it < m.max_iters:
        new = thr[k](s, e)
        if prev is not None and bool(jnp.all(new == prev)):
          break
        mask = prev = new
        s = err(xi, mask)
        it += 1
      mk.append(s)
      sk.append(ssm_lib.image_score(s, mask, m.image_score_mode))
      ik += it
    maps.append(jnp.mean(jnp.stack(mk), 0))
    scores.append(jnp.mean(jnp.stack(sk), 0))
    iters.append(ik)
  return (np.asarray(jnp.concatenate(maps)), np.asarray(jnp.concatenate(scores)),
          np.asarray(iters))


def torch_per_image_loop(m: ssm_lib.Ssm, state, x: np.ndarray, eta: float, device: str = "cpu"):
  """Algorithm 1 the way the official PyTorch code runs it: a per-image Python
  loop over the PyTorch twin of the same network (weights copied), eq. 12 maps
  (L2 + GMS + SSIM) in PyTorch, `torch.no_grad()`, eval-mode BatchNorm."""
  import torch
  import torch.nn.functional as F
  from flax import nnx
  import torch_unets as tu
  from maskjax.ops import filters
  from maskjax.ops import gms as gms_lib
  jm = m.f.module(state["params"], state["model_state"])
  tm = tu.copy_from_maskjax(tu.SsmUNet(m.widths, use_mam=m.use_mam, **m.unet),
                            jm).eval().to(device)
  half = m.input_range == "half"  # U-Net in/out mapped through mean = std = 0.5
  del nnx
  win = torch.tensor(np.sqrt(np.diag(filters.gaussian_kernel(11, 1.5))), dtype=torch.float32,
                     device=device)
  gwin = (win[:, None] * win[None, :])[None, None].repeat(3, 1, 1, 1)
  px = torch.tensor(gms_lib.PREWITT_X, device=device)[None, None].repeat(3, 1, 1, 1)
  py = torch.tensor(gms_lib.PREWITT_Y, device=device)[None, None].repeat(3, 1, 1, 1)

  def gmag(t):
    gx = F.conv2d(t, px, padding=1, groups=3)
    gy = F.conv2d(t, py, padding=1, groups=3)
    return torch.sqrt(gx * gx + gy * gy + 1e-12)

  def err(x01, r01):  # [B,3,H,W] -> [B,H,W]
    l2 = ((x01 - r01) ** 2).mean(1)
    g1, g2 = gmag(x01), gmag(r01)
    gms = ((2 * g1 * g2 + 0.0026) / (g1 * g1 + g2 * g2 + 0.0026 + 1e-12)).mean(1)
    st = F.conv2d(torch.cat([x01, r01, x01 * x01, r01 * r01, x01 * r01], 1),
                  gwin.repeat(5, 1, 1, 1), padding=5, groups=15)
    mx, my, exx, eyy, exy = st.split(3, 1)
    sxx, syy, sxy = exx - mx * mx, eyy - my * my, exy - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    ss = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return l2 + (1 - gms) + (1 - ss.mean(1))

  def recon(x01, mask):
    img, _ = tm(x01 * 2 - 1 if half else x01, mask)
    img = (img + 1) / 2 if half else img
    mm = mask[:, None]
    return img * (1 - mm) + x01 * mm

  def pmean(sm, k):
    return F.interpolate(F.avg_pool2d(sm[:, None], k), scale_factor=k, mode="nearest")[:, 0]

  size = x.shape[1]
  maps, scores, iters = [], [], []
  with torch.no_grad():
    for i in range(x.shape[0]):
      xi = torch.from_numpy(np.ascontiguousarray(x[i:i + 1].transpose(0, 3, 1, 2))).to(device)
      mk, sk, ik = [], [], 0
      for k in m.ks:
        g = size // k
        par = ((torch.arange(g)[:, None] + torch.arange(g)[None, :]) % 2 == 0).float()
        par = par.repeat_interleave(k, 0).repeat_interleave(k, 1).to(device)
        pair = torch.stack([par, 1 - par])
        xx = xi.repeat(2, 1, 1, 1)
        s0 = err(xx, recon(xx, pair))
        sm = 0.5 * (s0[:1] + s0[1:])
        mask, prev, it = torch.ones_like(sm), None, 0
        while it < m.max_iters:
          new = (pmean(sm, k) <= eta).float()
          if prev is not None and bool(torch.equal(new, prev)):
            break
          mask = prev = new
          sm = err(xi, recon(xi, mask))
          it += 1
        mk.append(sm)
        sk.append(sm.sum((1, 2)) / mask.sum((1, 2)).clamp(min=1.0))
        ik += it
      maps.append(torch.stack(mk).mean(0).cpu().numpy())
      scores.append(torch.stack(sk).mean(0).cpu().numpy())
      iters.append(ik)
  return np.concatenate(maps), np.concatenate(scores), np.asarray(iters)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--layout", default="demo", choices=("demo", "full"),
                  help="U-Net layout and input range of that configs/ssm.py variant")
  ap.add_argument("--size", type=int, default=64)
  ap.add_argument("--widths", default="16,32,64,64")
  ap.add_argument("--ks", default="4,8,16")
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--batches", type=int, default=2, help="timed batches")
  ap.add_argument("--max_iters", type=int, default=10)
  ap.add_argument("--train_steps", type=int, default=30)
  ap.add_argument("--torch", action="store_true",
                  help="also time the PyTorch twin running the per-image loop")
  ap.add_argument("--out", default="")
  args = ap.parse_args()
  mach = C.machine()

  c = C.load_config("ssm", args.layout)
  c.input.image_size = args.size
  c.model.widths = tuple(int(w) for w in args.widths.split(","))
  c.method.ks = tuple(int(k) for k in args.ks.split(","))
  c.method.max_iters = args.max_iters
  c.method.eta_mode = "global"
  c.method.eta_per_scale = False
  # Algorithm 1 as written (the loops below implement exactly that recipe)
  c.method.image_score = "as_written"
  if "refined_map" in c.method:
    c.method.refined_map = "as_written"
  c.train.steps = max(args.train_steps, 1)
  c.input.batch_size = 8
  m, (stage,) = C.build_stages(c, ("synthetic",), num_train=8)
  ts = C.TrainStep(stage, c)
  ts.put({"image": synthetic(8, args.size, 0, False)})
  ts.run(args.train_steps)
  state = ts.state
  val = {"image": jnp.asarray(synthetic(args.batch, args.size, 1, False))}
  cal = m.calibrate(np.asarray(m.calibration_stats(state, val)), np.zeros((args.batch,), int))
  eta = float(cal["eta"])

  n = args.batch * args.batches
  test = jnp.asarray(synthetic(n, args.size, 2, True))
  score = jax.jit(m.score)
  batches = [{"image": test[i * args.batch:(i + 1) * args.batch]} for i in range(args.batches)]
  t0 = time.perf_counter()
  jax.block_until_ready(score(state, batches[0], cal))
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  outs = [jax.block_until_ready(score(state, b, cal)) for b in batches]
  batched_s = time.perf_counter() - t0
  b_map = np.concatenate([np.asarray(o["anomaly_map"]) for o in outs])
  b_score = np.concatenate([np.asarray(o["image_score"]) for o in outs])
  b_iters = np.concatenate([np.asarray(o["iterations"]) for o in outs])

  per_image_python_loop(m, state, test[:1], eta)           # warm-up (compiles)
  t0 = time.perf_counter()
  l_map, l_score, l_iters = per_image_python_loop(m, state, test, eta)
  loop_s = time.perf_counter() - t0

  torch_res = None
  if args.torch:
    import torch
    dev = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    test_np = np.asarray(test)
    torch_per_image_loop(m, state, test_np[:1], eta, dev)   # warm-up
    t0 = time.perf_counter()
    t_map, t_score, t_iters = torch_per_image_loop(m, state, test_np, eta, dev)
    if dev == "cuda":
      torch.cuda.synchronize()
    torch_s = time.perf_counter() - t0
    torch_res = {"images_per_s": n / torch_s, "seconds": torch_s, "device": dev,
                 "iterations_equal": bool(np.array_equal(t_iters, b_iters)),
                 "map_max_abs_diff": float(np.max(np.abs(t_map - b_map))),
                 "score_max_rel_diff": float(np.max(np.abs(t_score - b_score)
                                                    / np.maximum(np.abs(b_score), 1e-12))),
                 "mean_iterations_per_image": float(np.mean(t_iters))}

  np.testing.assert_array_equal(b_iters, l_iters)
  np.testing.assert_allclose(b_map, l_map, atol=1e-4)
  np.testing.assert_allclose(b_score, l_score, rtol=1e-4, atol=1e-6)

  dev = jax.devices()[0]
  res = {
      "benchmark": "ssm_inference",
      "machine": dict(C.machine_end(mach), device=f"{dev.platform}:{dev.device_kind}",
                      num_devices=jax.device_count()),
      "setting": {"layout": args.layout, "unet": m.unet, "input_range": m.input_range,
                  "size": args.size, "widths": list(c.model.widths), "ks": list(m.ks),
                  "batch": args.batch, "images": n, "max_iters": args.max_iters,
                  "train_steps": args.train_steps, "eta": eta},
      "batched_while_loop": {"images_per_s": n / batched_s, "seconds": batched_s,
                             "compile_s": compile_s},
      "per_image_python_loop": {"images_per_s": n / loop_s, "seconds": loop_s},
      "speedup": loop_s / batched_s,
      "mean_refinement_iterations_per_image": float(np.mean(b_iters)),
      "mean_refinement_iterations_per_image_per_scale": float(np.mean(b_iters)) / len(m.ks),
      "outputs_equal": True,
      "pytorch_twin_per_image_loop": torch_res,
      "speedup_vs_pytorch": (torch_res["seconds"] / batched_s) if torch_res else None,
      "paper_reference_images_per_s": {"value": 23.5, "device": "RTX 3090", "size": 256},
  }
  print(f"SSM inference, {args.size}x{args.size}, widths {list(c.model.widths)}, "
        f"k {list(m.ks)}, {n} images, device {res['machine']['device']}")
  print(f"{'variant':<28}{'images/s':>12}{'seconds':>10}")
  print(f"{'batched lax.while_loop':<28}{n / batched_s:>12.2f}{batched_s:>10.2f}")
  print(f"{'per-image Python loop':<28}{n / loop_s:>12.2f}{loop_s:>10.2f}")
  if torch_res:
    print(f"{'PyTorch twin per-image loop':<28}{torch_res['images_per_s']:>12.2f}"
          f"{torch_res['seconds']:>10.2f}   (iterations equal: {torch_res['iterations_equal']},"
          f" map max abs diff {torch_res['map_max_abs_diff']:.1e})")
  print(f"speedup {loop_s / batched_s:.2f}x; mean refinement iterations per image "
        f"{np.mean(b_iters):.2f} (over {len(m.ks)} scales); outputs equal")
  C.write_json(args.out or C.result_path("ssm_inference"), res)


if __name__ == "__main__":
  main()
