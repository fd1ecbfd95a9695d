r"""maskjax models beside their PyTorch twins: same weights, outputs checked equal,
forward and train-step throughput side by side in one process.

Models (papers' sizes unless --smoke): RIAD U-Net, SSM U-Net with mask
attention, EAR U-Net (256 px, widths 64-512), DINO ViT-S/8 saliency (last-block
CLS attention, head mean, bilinear to 224), ViT-S/16 (final tokens), MAE
ViT-L/16 encoder + decoder at 75 % masking (pixel predictions); batch 8, 224 px
ViTs. The RIAD and SSM U-Nets take the layout switches (upsample, up_block,
up_kernel, mask_resize, encoder_input) of the packaged `--layout` variant:
"full" (default, the papers' protocols) or "demo" (the previous layout).
U-Net twins: `benchmarks/torch_unets.py` (weights copied from maskjax);
ViT / MAE twins: the test suite's `tests/torch_reference` (weights converted
to maskjax with `maskjax.weights.convert`).

For each model: forward outputs compared (max abs and max relative-to-max
difference; "equal" = rel <= --tol, default 1e-5), forward img/s (maskjax
`jax.jit`, PyTorch `torch.no_grad()`), and for the U-Nets and MAE a train step
(forward + backward + Adam, lr 1e-4; U-Nets: MSE to the input with BatchNorm
in training mode; MAE: MAE's loss on removed patches) img/s, whose first-step
losses are also compared. On GPU: float32 and bf16 (maskjax: compute dtype
bf16 with float32 params; PyTorch: autocast bf16), and `torch.compile`
variants where they compile. Ratio = maskjax img/s / PyTorch img/s.

  python benchmarks/torch_twins.py [--models riad_unet,...] [--iters 2] [--warmup 1]
      [--train_iters 1] [--batch 8] [--layout full|demo] [--dtypes float32,bfloat16]
      [--torch_compile auto]
      [--smoke] [--out PATH] [--merge]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _common as C  # noqa: E402

sys.path.insert(0, os.path.join(C.ROOT, "tests"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from flax import nnx  # noqa: E402

import torch_reference as tr  # noqa: E402
import torch_unets as tu  # noqa: E402
from maskjax import train_utils, weights as W  # noqa: E402
from maskjax.methods.ear import unet as ear_unet  # noqa: E402
from maskjax.models import mae as mae_lib, unet, vit  # noqa: E402
from maskjax.weights import convert  # noqa: E402

ALL = ("riad_unet", "ssm_unet", "ear_unet", "dino_vit_s8_saliency", "vit_s16", "mae_vit_l16")
TRAINED = ("riad_unet", "ssm_unet", "ear_unet", "mae_vit_l16")


# ----------------------------------------------------------------------------
# model pairs
# ----------------------------------------------------------------------------
class Pair:
  """A maskjax model and its twin with the calls and losses to time."""

  def __init__(self, name, jmodel, tmodel, inputs, jax_call, torch_call, jax_loss, torch_loss,
               setting):
    self.name, self.jmodel, self.tmodel = name, jmodel, tmodel
    self.inputs = inputs            # tuple of numpy arrays, NHWC images
    self.jax_call, self.torch_call = jax_call, torch_call
    self.jax_loss, self.torch_loss = jax_loss, torch_loss
    self.setting = setting


def _nchw(x):
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))) if x.ndim == 4 \
      else torch.from_numpy(np.ascontiguousarray(x))


def _images(rng, b, s):
  return rng.standard_normal((b, s, s, 3)).astype(np.float32).clip(-2, 2) * 0.5


def _unet_layout(method: str, variant: str) -> dict:
  """The U-Net switches (upsample, up_block, ...) of a packaged config variant,
  so the twins time the layout that variant trains."""
  import importlib
  cfg = importlib.import_module(f"maskjax.configs.{method}").get_config(variant)
  keys = ("upsample", "up_block") if method == "riad" else (
      "upsample", "up_block", "up_kernel", "mask_resize", "encoder_input")
  return unet.unet_options(cfg.model, keys)


def make_pair(name: str, a) -> Pair:
  rng = np.random.default_rng(0)
  torch.manual_seed(0)
  b = a.batch
  if name in ("riad_unet", "ssm_unet", "ear_unet"):
    b = a.unet_batch or a.batch
    s = a.unet_size
    widths = tuple(a.unet_widths)
    x = np.tanh(_images(rng, b, s))
    mse = lambda out, y: jnp.mean((out.astype(jnp.float32) - y) ** 2)  # noqa: E731
    tmse = lambda out, y: torch.mean((out.float() - y) ** 2)  # noqa: E731
    setting = dict(image_size=s, widths=list(widths), batch=b)
    if name == "riad_unet":
      opts = _unet_layout("riad", a.layout)
      setting.update(layout=a.layout, **opts)
      jm = unet.RiadUNet(widths, **opts, rngs=nnx.Rngs(0))
      tm = tu.copy_from_maskjax(tu.RiadUNet(widths, **opts), jm)
      return Pair(name, jm, tm, (x,), lambda m, x, train: (m(x, train=train),),
                  lambda m, x: (m(x),), lambda o, inp: mse(o[0], inp[0]),
                  lambda o, inp: tmse(o[0], inp[0]), setting)
    if name == "ear_unet":
      jm = ear_unet.EarUNet(widths, rngs=nnx.Rngs(0))
      tm = tu.copy_from_maskjax(tu.EarUNet(widths), jm)
      return Pair(name, jm, tm, (x,), lambda m, x, train: (m(x, train=train),),
                  lambda m, x: (m(x),), lambda o, inp: mse(o[0], inp[0]),
                  lambda o, inp: tmse(o[0], inp[0]), setting)
    opts = _unet_layout("ssm", a.layout)
    setting.update(layout=a.layout, **opts)
    jm = unet.SsmUNet(widths, **opts, rngs=nnx.Rngs(0))
    tm = tu.copy_from_maskjax(tu.SsmUNet(widths, **opts), jm)
    k = 16 if s >= 64 else 4
    cells = rng.random((b, s // k, s // k)) > 0.5
    mask = np.repeat(np.repeat(cells, k, 1), k, 2).astype(np.float32)
    setting["mask_cell"] = k
    return Pair(name, jm, tm, (x, mask),
                lambda m, x, mk, train: m(x, mk, train=train), lambda m, x, mk: m(x, mk),
                lambda o, inp: mse(o[0], inp[0]) + jnp.mean((o[1] - (2 * inp[1] - 1)) ** 2),
                lambda o, inp: tmse(o[0], inp[0]) + torch.mean((o[1] - (2 * inp[1] - 1)) ** 2),
                setting)
  s = a.vit_size
  x = _images(rng, b, s)
  with tempfile.TemporaryDirectory() as d:
    if name in ("dino_vit_s8_saliency", "vit_s16"):
      patch = 8 if name.startswith("dino") else 16
      cfg = dict(dim=384, depth=12, heads=6) if not a.smoke else dict(dim=48, depth=2, heads=3)
      tm = tr.VisionTransformer(patch=patch, img_size=s, **cfg).eval()
      torch.save(tm.state_dict(), os.path.join(d, "w.pth"))
      convert.convert(os.path.join(d, "w.pth"), os.path.join(d, "out"),
                      f"vit_small_patch{patch}", overrides=dict(cfg, img_size=s))
      jm = W.build(os.path.join(d, "out"))
      setting = dict(image_size=s, patch=patch, batch=b, **cfg)
      if name == "vit_s16":
        return Pair(name, jm, tm, (x,), lambda m, x, train: (m(x)["tokens"],),
                    lambda m, x: (m(x)[0],), None, None, setting)

      def jsal(m, x, train):
        return (vit.saliency(m, x, (s, s)),)

      def tsal(m, x):
        _, _, attn = m(x)
        g = s // patch
        amap = attn[:, :, 0, 1:].mean(1).reshape(x.shape[0], 1, g, g)
        return (F.interpolate(amap, size=(s, s), mode="bilinear", align_corners=False)[:, 0],)
      return Pair(name, jm, tm, (x,), jsal, tsal, None, None, setting)
    # MAE ViT-L/16, 75 % masking
    cfg = (dict(dim=1024, depth=24, heads=16, decoder_dim=512, decoder_depth=8, decoder_heads=16)
           if not a.smoke else
           dict(dim=64, depth=2, heads=4, decoder_dim=32, decoder_depth=1, decoder_heads=4))
    tm = tr.MaskedAutoencoder(patch=16, img_size=s, **cfg).eval()
    torch.save({"model": tm.state_dict()}, os.path.join(d, "w.pth"))
    convert.convert(os.path.join(d, "w.pth"), os.path.join(d, "out"), "mae_vit_large_patch16",
                    overrides=dict(cfg, img_size=s))
    jm = W.build(os.path.join(d, "out"))
  n = (s // 16) ** 2
  keep = int(n * 0.25)
  ids_keep, ids_restore, mask = (t.numpy() for t in tr.random_masking_ids(b, n, keep, seed=0))
  setting = dict(image_size=s, patch=16, batch=b, mask_ratio=0.75, **cfg)

  def jmae(m, x, ik, ir, mk, train):
    return (m(x, ik, ir),)

  def tmae(m, x, ik, ir, mk):
    lat, _, _ = m.forward_encoder(x, ik)
    return (m.forward_decoder(lat, ir),)

  def tmae_loss(o, inp):
    x, mk = inp[0], inp[3]
    p = 16
    bb, c, h, w = x.shape
    target = x.reshape(bb, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(
        bb, (h // p) * (w // p), p * p * c)
    per = ((o[0].float() - target) ** 2).mean(-1)
    return (per * mk).sum() / mk.sum()
  return Pair("mae_vit_l16", jm, tm, (x, ids_keep, ids_restore, mask), jmae, tmae,
              lambda o, inp: mae_lib.mae_loss(inp[0], o[0], inp[3], 16), tmae_loss, setting)


# ----------------------------------------------------------------------------
# maskjax side
# ----------------------------------------------------------------------------
def _cast_floats(tree, dtype):
  return jax.tree_util.tree_map(
      lambda v: v.astype(dtype) if jnp.issubdtype(v.dtype, jnp.floating) else v, tree)


def jax_fns(pair: Pair, dtype):
  """Jitted (forward, train_step) over the model as pure functions of plain-dict
  pytrees (`maskjax.train_utils.Functional`, as the methods run it); bf16 = params
  and inputs cast to bf16 inside the computation (float32 master params and Adam
  state), as the methods' compute_dtype does."""
  f = train_utils.Functional(pair.jmodel)
  cd = jnp.dtype(dtype)

  def prep(p, inputs):
    if cd != jnp.float32:
      p = train_utils.cast_floating(p, cd)
      inputs = tuple(i.astype(cd) if jnp.issubdtype(i.dtype, jnp.floating) else i
                     for i in inputs)
    return p, inputs

  def fwd(p, r, *inputs):
    p, inputs = prep(p, inputs)
    m = f.module(p, r)
    return tuple(o.astype(jnp.float32) for o in pair.jax_call(m, *inputs, train=False))

  train = None
  if pair.jax_loss is not None:
    tx = optax.adam(1e-4)

    def step(p, r, opt, *inputs):
      def loss_fn(p):
        pc, ic = prep(p, inputs)
        m = f.module(pc, r)
        out = pair.jax_call(m, *ic, train=True)
        _, _, new_r = nnx.split(m, nnx.Param, ...)
        return pair.jax_loss(out, inputs), new_r.to_pure_dict()
      (loss, new_r), g = jax.value_and_grad(loss_fn, has_aux=True)(p)
      upd, opt = tx.update(g, opt, p)
      return optax.apply_updates(p, upd), new_r, opt, loss
    train = (jax.jit(step, donate_argnums=(0, 1, 2)), tx)
  return jax.jit(fwd), train, f.params, f.rest


# ----------------------------------------------------------------------------
# PyTorch side
# ----------------------------------------------------------------------------
def torch_inputs(pair: Pair, device):
  out = []
  for i in pair.inputs:
    t = _nchw(i) if (i.ndim == 4 and i.shape[-1] == 3) else torch.from_numpy(np.array(i))
    if pair.name == "mae_vit_l16" and t.dtype == torch.int64:
      t = t.long()
    out.append(t.to(device))
  return tuple(out)


def torch_sync(device):
  if device.type == "cuda":
    return lambda out: torch.cuda.synchronize()
  return lambda out: out


def _to_nhwc(t):
  t = t.detach().float().cpu().numpy()
  return t.transpose(0, 2, 3, 1) if t.ndim == 4 else t


def compare(a_list, b_list) -> dict:
  abs_d, rel_d = 0.0, 0.0
  for a, b in zip(a_list, b_list):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    d = float(np.max(np.abs(a - b)))
    abs_d = max(abs_d, d)
    rel_d = max(rel_d, d / max(float(np.max(np.abs(b))), 1e-30))
  return dict(max_abs_diff=abs_d, max_rel_diff=rel_d)


def bench_pair(name: str, a, device) -> list[dict]:
  t0 = time.perf_counter()
  pair = make_pair(name, a)
  build_s = time.perf_counter() - t0
  rows = []
  b = pair.setting["batch"]
  tin = torch_inputs(pair, device)
  tmodel = pair.tmodel.to(device)
  sync = torch_sync(device)

  # --- equality (float32, eval mode) -------------------------------------------
  jfwd, jtrain, params, rest = jax_fns(pair, "float32")
  jin = tuple(jnp.asarray(i) for i in pair.inputs)
  t0 = time.perf_counter()
  jout = jax.block_until_ready(jfwd(params, rest, *jin))
  jcompile = time.perf_counter() - t0
  tmodel.eval()
  with torch.no_grad():
    tout = pair.torch_call(tmodel, *tin)
  eq = compare([np.asarray(o) for o in jout], [_to_nhwc(o) for o in tout])
  eq["equal"] = eq["max_rel_diff"] <= a.tol
  print(f"{name}: outputs max abs diff {eq['max_abs_diff']:.2e}, max rel {eq['max_rel_diff']:.2e}"
        f" -> {'equal' if eq['equal'] else 'NOT EQUAL'} (tol {a.tol:g}); build {build_s:.1f}s, "
        f"maskjax forward compile {jcompile:.1f}s", flush=True)
  common = dict(model=name, **pair.setting, **eq)

  dtypes = [d for d in a.dtypes.split(",") if d]
  want_compile = a.torch_compile == "on" or (a.torch_compile == "auto" and device.type == "cuda")
  compile_dtypes = [d for d in a.compile_dtypes.split(",") if d] or dtypes

  for dt in dtypes:
    compile_modes = [False] + ([True] if want_compile and dt in compile_dtypes else [])
    tdt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dt]
    if dt != "float32":
      jfwd, jtrain, params, rest = jax_fns(pair, dt)
    # forward
    _progress(name, f"{dt} forward timing")
    jt = C.timeit(lambda: jfwd(params, rest, *jin), a.warmup, a.iters)
    rows.append(dict(common, phase="forward", dtype=dt, impl="maskjax",
                     s_per_batch=jt["best_s"], img_per_s=b / jt["best_s"], timing=jt))
    for comp in compile_modes:
      fn = pair.torch_call
      impl = "pytorch"
      if comp:
        try:
          fn = torch.compile(pair.torch_call)
          impl = "pytorch+compile"
        except Exception as e:  # noqa: BLE001
          rows.append(dict(common, phase="forward", dtype=dt, impl="pytorch+compile",
                           error=str(e)[:300]))
          continue

      def tf(fn=fn):
        with torch.no_grad(), torch.autocast(device.type, dtype=tdt, enabled=dt != "float32"):
          return fn(tmodel, *tin)
      try:
        tt = C.timeit(tf, a.warmup + (1 if comp else 0), a.iters, sync=sync)
        rows.append(dict(common, phase="forward", dtype=dt, impl=impl,
                         s_per_batch=tt["best_s"], img_per_s=b / tt["best_s"], timing=tt))
      except Exception as e:  # noqa: BLE001 - e.g. torch.compile failing on this backend
        rows.append(dict(common, phase="forward", dtype=dt, impl=impl, error=str(e)[:300]))
    # train step
    if jtrain is not None and name in TRAINED and not a.forward_only:
      step, tx = jtrain
      state = [jax.tree_util.tree_map(jnp.copy, params), jax.tree_util.tree_map(jnp.copy, rest)]
      state.append(tx.init(state[0]))
      losses = {}

      def jstep():
        p, r, o, loss = step(state[0], state[1], state[2], *jin)
        state[:] = [p, r, o]
        losses.setdefault("maskjax", float(loss))
        return loss
      _progress(name, f"{dt} train step: maskjax")
      t0 = time.perf_counter()
      jax.block_until_ready(jstep())
      tcompile = time.perf_counter() - t0
      jt = C.timeit(jstep, a.train_warmup, a.train_iters)
      rows.append(dict(common, phase="train_step", dtype=dt, impl="maskjax",
                       s_per_batch=jt["best_s"], img_per_s=b / jt["best_s"], timing=jt,
                       compile_s=tcompile))
      del state
      for comp in compile_modes:
        ttm = _clone(tmodel)
        ttm.train()
        opt = torch.optim.Adam([p for p in ttm.parameters() if p.requires_grad], lr=1e-4)
        call = pair.torch_call
        impl = "pytorch"
        if comp:
          call = torch.compile(pair.torch_call)
          impl = "pytorch+compile"

        def tstep(ttm=ttm, opt=opt, call=call, impl=impl):
          opt.zero_grad(set_to_none=True)
          with torch.autocast(device.type, dtype=tdt, enabled=dt != "float32"):
            out = call(ttm, *tin)
          loss = pair.torch_loss(out, tin)
          loss.backward()
          opt.step()
          losses.setdefault(impl, float(loss.detach()))
          return loss
        _progress(name, f"{dt} train step: {impl}")
        try:
          t0 = time.perf_counter()
          tstep()
          sync(None)
          first = time.perf_counter() - t0
          tt = C.timeit(tstep, max(a.train_warmup - 1, 0) + (1 if comp else 0), a.train_iters,
                        sync=sync)
          rows.append(dict(common, phase="train_step", dtype=dt, impl=impl,
                           s_per_batch=tt["best_s"], img_per_s=b / tt["best_s"], timing=tt,
                           compile_s=first))
        except Exception as e:  # noqa: BLE001
          rows.append(dict(common, phase="train_step", dtype=dt, impl=impl, error=str(e)[:300]))
        del ttm, opt
      if "maskjax" in losses and "pytorch" in losses:
        lj, lt = losses["maskjax"], losses["pytorch"]
        for r in rows:
          if r["phase"] == "train_step" and r["dtype"] == dt:
            r["first_loss_maskjax"], r["first_loss_pytorch"] = lj, lt
            r["first_loss_rel_diff"] = abs(lj - lt) / max(abs(lt), 1e-30)
      print(f"  {name} {dt}: first-step loss maskjax {losses.get('maskjax')} "
            f"pytorch {losses.get('pytorch')}", flush=True)
  # ratios
  for r in rows:
    if r.get("impl") == "maskjax":
      for o in rows:
        if (o["phase"], o["dtype"]) == (r["phase"], r["dtype"]) and o["impl"] == "pytorch" \
            and o.get("img_per_s"):
          r["ratio_vs_pytorch"] = r["img_per_s"] / o["img_per_s"]
        if (o["phase"], o["dtype"]) == (r["phase"], r["dtype"]) and \
            o["impl"] == "pytorch+compile" and o.get("img_per_s"):
          r["ratio_vs_pytorch_compile"] = r["img_per_s"] / o["img_per_s"]
  for r in rows:
    print(f"  {r['phase']:<11}{r['dtype']:<9}{r['impl']:<16}"
          + (f"{r['img_per_s']:9.2f} img/s" if r.get("img_per_s") else f" ERROR {r.get('error')}")
          + (f"   ratio {r['ratio_vs_pytorch']:.2f}x" if r.get("ratio_vs_pytorch") else ""),
          flush=True)
  return rows


_T0 = time.perf_counter()


def _progress(name, what):
  print(f"  [{time.perf_counter() - _T0:7.1f}s] {name}: {what}", flush=True)


def _clone(m):
  import copy
  return copy.deepcopy(m)


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--models", default=",".join(ALL))
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--unet_size", type=int, default=256)
  p.add_argument("--unet_batch", type=int, default=0, help="U-Net batch (0 = --batch)")
  p.add_argument("--unet_widths", default="64,128,256,512,512")
  p.add_argument("--layout", default="full", choices=("full", "demo"),
                 help="RIAD/SSM U-Net layout: that config variant's model switches")
  p.add_argument("--vit_size", type=int, default=224)
  p.add_argument("--iters", type=int, default=2)
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--train_iters", type=int, default=1)
  p.add_argument("--train_warmup", type=int, default=1)
  p.add_argument("--dtypes", default="")
  p.add_argument("--torch_compile", default="auto", choices=("auto", "on", "off"))
  p.add_argument("--compile_dtypes", default="", help="dtypes timed with torch.compile too")
  p.add_argument("--forward_only", action="store_true")
  p.add_argument("--tol", type=float, default=1e-5)
  p.add_argument("--smoke", action="store_true", help="tiny sizes (CPU test of the script)")
  p.add_argument("--out", default="")
  p.add_argument("--merge", action="store_true",
                 help="keep rows of other models already in --out")
  a = p.parse_args(argv)
  if a.smoke:
    a.batch, a.unet_size, a.vit_size = 2, 32, 32
    a.unet_widths = "4,8,8,8,8"
    a.iters, a.warmup, a.train_iters, a.train_warmup = 1, 0, 1, 0
  a.unet_widths = [int(w) for w in str(a.unet_widths).split(",")]
  backend = jax.default_backend()
  device = torch.device("cuda" if backend == "gpu" and torch.cuda.is_available() else "cpu")
  if not a.dtypes:
    a.dtypes = "float32,bfloat16" if backend == "gpu" else "float32"
  mach = C.machine()
  print(f"machine: {mach['cpu_model']} x{mach['cpu_count']}, load {mach['load_avg_start']}, "
        f"jax {mach['jax']} {mach['devices'][0]}, torch {torch.__version__} on {device} "
        f"({torch.get_num_threads()} threads)", flush=True)
  rows, failures = [], {}
  for name in [m for m in a.models.split(",") if m]:
    try:
      rows.extend(bench_pair(name, a, device))
    except Exception as e:  # noqa: BLE001 - one model failing does not hide the others
      failures[name] = f"{type(e).__name__}: {e}"[:500]
      print(f"{name}: FAILED {failures[name]}", flush=True)
    # the pair's models, states and closures die with bench_pair's frame: free them
    # (and their device memory) before the next model
    gc.collect()
    if device.type == "cuda":
      torch.cuda.empty_cache()
  out = a.out or C.result_path("torch_twins")
  if a.merge and os.path.exists(out):
    with open(out) as f:
      old = json.load(f)
    done = {r["model"] for r in rows} | set(failures)
    rows = [r for r in old.get("rows", []) if r["model"] not in done] + rows
    mach = dict(mach, previous_runs=old.get("machine_runs", []) + [old.get("machine")])
  cols = ["model", "phase", "dtype", "impl", "img_per_s", "ratio_vs_pytorch", "max_rel_diff"]
  C.print_table([r for r in rows if r.get("img_per_s")], cols)
  mach = C.machine_end(mach)
  res = dict(benchmark="torch_twins", args=vars(a), rows=rows, failures=failures,
             all_equal=all(r.get("equal", False) for r in rows) and not failures,
             machine=mach, markdown=C.format_table([r for r in rows if r.get("img_per_s")],
                                                   cols, markdown=True))
  C.write_json(out, res)
  return res


if __name__ == "__main__":
  r = main()
  sys.exit(0 if r["all_equal"] else 1)
