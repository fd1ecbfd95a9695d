"""ACA's full recipe rows against independent computations (docs/RECIPES.md
"ACA"): DINO's per-view augmentations, the tensors weight decay reaches against
torch.optim.AdamW with DINO's parameter groups, the attention-drawn cut
location against a NumPy softmax and coordinate-coded images, the colour
jitter of the normal images before synthesis against colorsys, and the
fine-tuning start (EMA teacher / student). The demo keeps every previous
setting (one switch away)."""
from __future__ import annotations

import colorsys
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import stage_helpers  # noqa: E402

from configs import aca as aca_config  # noqa: E402
from maskjax import train_state  # noqa: E402
from maskjax.errors import ConfigError  # noqa: E402
from maskjax.methods import aca  # noqa: E402
from maskjax.ops import augment  # noqa: E402

FULL_SWITCHES = {"method.pretrain.augment": "dino", "method.finetune.cut_location": "attention",
                 "method.finetune.augment": "color_jitter",
                 "method.finetune.init_from_stage1": "teacher",
                 "optim.decay_mask": "no_bias_norm", "optim.no_decay_names": ("prototypes",)}
DEMO_SWITCHES = {"method.pretrain.augment": "basic", "method.finetune.cut_location": "uniform",
                 "method.finetune.augment": "none", "method.finetune.init_from_stage1": "student",
                 "optim.decay_mask": "all", "optim.no_decay_names": ()}


def _get(c, dotted):
  for k in dotted.split("."):
    c = c[k]
  return tuple(c) if isinstance(c, (tuple, list)) else c


def _set(c, dotted, value):
  *path, last = dotted.split(".")
  for k in path:
    c = c[k]
  c[last] = value


def _tiny(full_switches: bool = True):
  """The demo at test size, with the full variant's switches (or the demo's)."""
  c = stage_helpers.tiny_aca_config(scales=(32,))
  for k, v in (FULL_SWITCHES if full_switches else DEMO_SWITCHES).items():
    _set(c, k, v)
  return c


def _smooth_images(n=4, size=32, seed=0):
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:size, 0:size] / size
  return np.stack([np.stack([0.5 + 0.4 * np.sin(2 * np.pi * (a * yy + b * xx) + p)
                             for p in (0.0, 1.0, 2.0)], -1)
                   for a, b in rng.uniform(0.5, 2.0, (n, 2))]).astype(np.float32)


# ----------------------------------------------------------------------------- switches
def test_full_and_demo_values_of_every_switch():
  full, demo = aca_config.get_config(), aca_config.get_config("demo")
  for k, v in FULL_SWITCHES.items():
    assert _get(full, k) == v, k
  for k, v in DEMO_SWITCHES.items():
    assert _get(demo, k) == v, k
  # ablation variants combine with the full values; poisson cuts uniformly (no attention on the host)
  assert _get(aca_config.get_config("random_mask"), "method.pretrain.augment") == "dino"
  pois = aca_config.get_config("poisson")
  assert (pois.method.finetune.synthesis, pois.method.finetune.cut_location) == ("host", "uniform")
  assert pois.method.finetune.augment == "color_jitter"


def test_a_run_recorded_before_the_switches_reads_as_the_previous_code(tmp_path):
  """maskjax.workdir fills ACA's RECORDED_DEFAULTS into an older run's
  config.json: the previous behaviour, i.e. the demo's values, and no recipe change."""
  import json

  from maskjax import workdir as workdir_lib
  recorded = aca_config.RECORDED_DEFAULTS
  # keys added after the switches, each at the value the code had before it existed
  later = {"method.finetune.seg_lr_scale": 1.0}
  assert set(recorded) == {k for k in DEMO_SWITCHES if k.startswith("method.")} | set(later)
  config = aca_config.get_config("demo")
  old = json.loads(config.to_json())
  for dotted in recorded:
    *parents, leaf = dotted.split(".")
    node = old
    for part in parents:
      node = node[part]
    del node[leaf]                                       # written before the keys existed
  (tmp_path / "config.json").write_text(json.dumps(old))
  loaded = workdir_lib.load_run_config(str(tmp_path))
  for dotted, value in recorded.items():
    assert _get(loaded, dotted) == value == {**DEMO_SWITCHES, **later}[dotted], dotted
  assert json.loads(loaded.to_json()) == json.loads(config.to_json())
  workdir_lib.check(config, str(tmp_path), write=False)  # no recipe change to refuse


@pytest.mark.parametrize("key", ["method.pretrain.augment", "method.finetune.cut_location",
                                 "method.finetune.augment", "method.finetune.init_from_stage1"])
def test_unknown_values_name_the_key(key):
  c = _tiny()
  _set(c, key, "nope")
  with pytest.raises(ConfigError, match=rf"config\.{key.replace('.', r'[.]')}='nope'; known"):
    stage_helpers.build(c)


def test_attention_cut_needs_device_synthesis():
  c = _tiny()
  c.method.finetune.synthesis = "host"
  with pytest.raises(ConfigError, match="finetune.cut_location='attention' needs"):
    stage_helpers.build(c)


# ----------------------------------------------------------------------------- row 1
def test_views_get_dino_augmentations_teacher_as_global_view_1():
  """DataAugmentationDINO (facebookresearch/dino main_dino.py), written out:
  global_transfo1 GaussianBlur(1.0); global_transfo2 GaussianBlur(0.1) +
  Solarization(0.2); local_transfo GaussianBlur(p=0.5); every view
  ColorJitter(0.4, 0.4, 0.2, 0.1) (random order) p 0.8 and grayscale p 0.2."""
  dino = {"global_transfo1": (1.0, 0.0), "global_transfo2": (0.1, 0.2), "local_transfo": (0.5, 0.0)}
  ours = {"teacher": "global_transfo1", "global": "global_transfo2", "local": "local_transfo"}
  m = stage_helpers.build(_tiny())
  for view, transfo in ours.items():
    opts = m.view_augment(view)
    assert (opts["p_blur"], opts["p_solarize"]) == dino[transfo], view
    assert opts["hue"] == 0.1 and opts["random_order"]
  basic = stage_helpers.build(_tiny(full_switches=False))
  assert all(basic.view_augment(v) == {} for v in ours)


def test_teacher_view_is_always_blurred_and_never_solarised():
  """The teacher's view in the pretraining step: the plain view (same key, no
  DINO options) blurred with some sigma in [0.1, 2] (checked against the
  exact blur at the sigma found by a scan), never solarised."""
  m = stage_helpers.build(_tiny())
  x = jnp.asarray(_smooth_images(3))
  key = jax.random.key(5)
  dino = augment.make_views(key, x, 1, 32, (0.4, 1.0), **m.view_augment("teacher"))
  # the same crops, flips and jitter draws without blur (its key is its own)
  no_blur = augment.make_views(key, x, 1, 32, (0.4, 1.0),
                               **{**m.view_augment("teacher"), "p_blur": 0.0})
  sigmas = np.linspace(0.1, 2.0, 381)
  for i in range(3):
    errs = [float(jnp.max(jnp.abs(augment.gaussian_blur(no_blur[i], s) - dino[i]))) for s in sigmas]
    assert min(errs) < 2e-4, i          # 0.005 px sigma steps (measured <= 5.7e-5)


def test_pretrain_step_with_dino_views_is_finite():
  c = _tiny()
  m = stage_helpers.build(c)
  s1, _ = stage_helpers.stages(m)
  batch = {"image": jnp.asarray(_smooth_images())}
  st = jax.jit(s1.init)(jax.random.key(0), None)
  st, met = jax.jit(s1.train_step)(st, batch, jax.random.key(1))
  assert np.isfinite(float(met["loss"])) and float(met["loss/local"]) > 0


# ----------------------------------------------------------------------------- row 2
def _ones_like_tree(tree):
  return jax.tree.map(lambda x: jnp.ones(x.shape, jnp.float32), tree)


def _dotted(path):
  return ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _updates(tx, params):
  """One step from zero gradients on params of 1: -lr * wd where decayed, 0 elsewhere."""
  upd = jax.jit(lambda p: tx.update(jax.tree.map(jnp.zeros_like, p), tx.init(p), p)[0])(params)
  return {_dotted(p): float(np.mean(np.asarray(v)))
          for p, v in jax.tree_util.tree_flatten_with_path(upd)[0]}


def _torch_dino_decay(torch, modules, lr, wd, no_decay_extra=()):
  """torch.optim.AdamW with DINO's `utils.get_params_groups` (no decay for
  names ending in ".bias" or 1-D tensors; frozen tensors not optimised),
  one step from zero gradients on parameters of 1 (float64): -> name -> change.
  `no_decay_extra`: names moved to the undecayed group as well."""
  decay, no_decay, before, named = [], [], {}, {}
  for prefix, mod in modules.items():
    mod.double()
    for n, p in mod.named_parameters():
      if not p.requires_grad:
        continue
      name = f"{prefix}.{n}"
      with torch.no_grad():
        p.fill_(1.0)
      named[name] = p
      plain = n.endswith(".bias") or p.ndim == 1
      (no_decay if plain or name in no_decay_extra else decay).append(p)
      before[name] = p.detach().clone()
      p.grad = torch.zeros_like(p)
  opt = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=lr, weight_decay=wd)
  opt.step()
  return {n: float((p.detach() - before[n]).mean()) for n, p in named.items()}


def test_weight_decay_reaches_the_tensors_dino_decays_but_not_the_prototypes():
  torch = pytest.importorskip("torch")
  import torch_reference as tr

  from maskjax.weights import convert

  c = _tiny()
  m = stage_helpers.build(c)
  s1, s2 = stage_helpers.stages(m)
  lr, wd = float(s1.schedule(0)), float(c.optim.weight_decay)
  assert lr > 0 and wd == 0.04
  st = jax.eval_shape(lambda: jax.jit(s1.init)(jax.random.key(0), None))
  ours = _updates(train_state.build(s1, c)[2], _ones_like_tree(st["params"]))

  o = c.model.backbone_overrides
  vit = tr.VisionTransformer(patch=8, dim=o.dim, depth=o.depth, heads=o.heads, img_size=32)
  head = tr.DINOHead(o.dim, c.model.num_prototypes, nlayers=c.model.head_layers,
                     hidden_dim=c.model.head_hidden, bottleneck_dim=c.model.bottleneck)
  head.last_layer.weight_g.requires_grad = False     # DINO: norm_last_layer=True
  ref = _torch_dino_decay(torch, {"vit": vit, "head": head}, lr, wd)
  # the names: maskjax's converter maps the torch keys onto ours
  _, src_vit = convert.torch_to_flat({k: v.numpy() for k, v in vit.state_dict().items()}, "vit",
                                     {"patch": 8, "img_size": 32, "dim": o.dim,
                                      "pos_embed": "learned"})
  _, src_head = convert.torch_to_flat({k: v.numpy() for k, v in head.state_dict().items()},
                                      "dino_head", {})
  twin = {f"vit.{k}": f"vit.{v}" for k, v in src_vit.items()}
  twin.update({f"head.{k}": f"head.{v}" for k, v in src_head.items() if "last_layer" not in k})
  twin["prototypes"] = "head.last_layer.weight_v"       # ACA's prototypes = DINO's last layer
  assert set(twin) == set(ours) and set(twin.values()) == set(ref)
  for k, t in twin.items():
    want = 0.0 if k == "prototypes" else ref[t]        # the one deviation from DINO, by decision
    np.testing.assert_allclose(ours[k], want, rtol=1e-6, atol=0, err_msg=k)
  assert ref["head.last_layer.weight_v"] != 0.0        # DINO itself decays its last layer
  assert ref["vit.pos_embed"] != 0.0 and ref["vit.cls_token"] != 0.0   # and these (rank 3)
  assert ours["vit.blocks.0.norm1.scale"] == 0.0 and ours["vit.blocks.0.attn.qkv.bias"] == 0.0
  # stage 2 (ViT + classifier + segmentation weights): the same rule
  st2 = jax.eval_shape(lambda: jax.jit(s2.init)(jax.random.key(0), st))
  shapes = {_dotted(p): x.shape for p, x in jax.tree_util.tree_flatten_with_path(st2["params"])[0]}
  lr2 = float(s2.schedule(0))
  for k, v in _updates(train_state.build(s2, c)[2], _ones_like_tree(st2["params"])).items():
    want = 0.0 if (len(shapes[k]) <= 1 or k.endswith(".bias")) else -lr2 * wd
    np.testing.assert_allclose(v, want, rtol=1e-6, atol=0, err_msg=k)
  # the demo's switch decays every tensor (the comparison above would fail)
  d = _tiny(full_switches=False)
  ds1, _ = stage_helpers.stages(stage_helpers.build(d))
  legacy = _updates(train_state.build(ds1, d)[2], _ones_like_tree(st["params"]))
  assert legacy["prototypes"] != 0.0 and legacy["vit.blocks.0.norm1.scale"] != 0.0


# ----------------------------------------------------------------------------- row 3
def test_location_draws_follow_the_softmax_of_the_attention():
  from scipy import stats
  rng = np.random.default_rng(0)
  att = rng.random((6, 7)).astype(np.float32) * 3.0 + 1.0
  a64 = att.astype(np.float64)
  a = (a64 - a64.min()) / (a64.max() - a64.min())         # independent: min-max, softmax((a-1)/T)
  p = np.exp((a - 1.0) / 0.3)
  p = (p / p.sum()).ravel()
  logits = aca.location_logits(jnp.asarray(att), 0.3)
  keys = jax.random.split(jax.random.key(1), 20000)
  ys, xs = jax.vmap(lambda k: aca.draw_location(k, logits, 7))(keys)
  counts = np.bincount((np.asarray(ys) * 7 + np.asarray(xs)).astype(int), minlength=42)
  assert stats.chisquare(counts, p * counts.sum()).pvalue > 1e-3


def _coded_image(size=64):
  """Channel 0 = y / (size - 1), channel 1 = x / (size - 1): a pasted pixel
  reveals the source coordinates it was sampled from (bilinear sampling of a
  linear ramp is exact)."""
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
  return np.stack([yy, xx, np.full_like(yy, 0.5)], -1)


def _source_centre(out, mask, size=64):
  m = mask > 0
  return out[m, 0].mean() * (size - 1), out[m, 1].mean() * (size - 1)


def test_attention_cut_location_cuts_from_the_salient_spots():
  """Two hot pixels A, B; no rotation, scale 1, no jitter: the patch is cut
  centred on A or B and pasted centred on A or B, independently (all four
  combinations occur); uniform cutting takes patches from anywhere."""
  img = jnp.asarray(_coded_image())
  hot = [(20, 20), (44, 44)]
  att = np.zeros((64, 64), np.float32)
  for y, x in hot:
    att[y, x] = 1.0
  kw = {"temperature": 0.01, "max_rotation": 0.0, "scale_range": (1.0, 1.0), "jitter": 0.0}
  fn = jax.jit(lambda k, loc: aca.cutpaste_one(k, img, jnp.asarray(att), cut_location=loc, **kw),
               static_argnums=1)
  pairs, uniform_sources = set(), []
  for i in range(40):
    out, mask = map(np.asarray, fn(jax.random.key(i), "attention"))
    sy, sx = _source_centre(out, mask)
    src = min(range(2), key=lambda j: abs(sy - hot[j][0]) + abs(sx - hot[j][1]))
    np.testing.assert_allclose((sy, sx), hot[src], atol=2e-3)
    ys, xs = np.nonzero(mask)
    dst = min(range(2), key=lambda j: abs(ys.mean() - hot[j][0]))
    np.testing.assert_allclose((ys.mean(), xs.mean()), hot[dst], atol=0.51)
    pairs.add((src, dst))
    out_u, mask_u = map(np.asarray, fn(jax.random.key(i), "uniform"))
    uniform_sources.append(_source_centre(out_u, mask_u))
  assert pairs == {(0, 0), (0, 1), (1, 0), (1, 1)}
  far = [min(abs(sy - y) + abs(sx - x) for y, x in hot) for sy, sx in uniform_sources]
  assert np.mean(np.asarray(far) > 3) > 0.8


def test_background_cut_location_cuts_from_the_least_salient_spot():
  """Attention 1 at H, 0 at C, 0.5 elsewhere: "background" cuts centred on C
  (the inverted map's hot pixel) and pastes centred on H."""
  img = jnp.asarray(_coded_image())
  hot, cold = (44, 44), (32, 16)
  att = jnp.full((64, 64), 0.5).at[hot].set(1.0).at[cold].set(0.0)
  fn = jax.jit(lambda k: aca.cutpaste_one(k, img, att, temperature=0.01, max_rotation=0.0,
                                          scale_range=(1.0, 1.0), jitter=0.0,
                                          cut_location="background"))
  for i in range(12):
    out, mask = map(np.asarray, fn(jax.random.key(i)))
    np.testing.assert_allclose(_source_centre(out, mask), cold, atol=2e-3)
    ys, xs = np.nonzero(mask)
    np.testing.assert_allclose((ys.mean(), xs.mean()), hot, atol=0.51)
  c = _tiny()
  c.method.finetune.synthesis = "host"
  c.method.finetune.cut_location = "background"
  with pytest.raises(ConfigError, match="finetune.cut_location='background' needs"):
    stage_helpers.build(c)


def test_attention_cut_near_the_border_moves_the_patch_inside():
  """A hot pixel at (2, 61): the cut centre moves the least distance that keeps
  the ph x pw patch inside: ((ph - 1) / 2, 63 - (pw - 1) / 2)."""
  img = jnp.asarray(_coded_image())
  att = jnp.zeros((64, 64)).at[2, 61].set(1.0)
  for i in range(8):
    out, mask = map(np.asarray, aca.cutpaste_one(
        jax.random.key(i), img, att, temperature=0.01, max_rotation=0.0,
        scale_range=(1.0, 1.0), jitter=0.0, cut_location="attention"))
    ys, xs = np.nonzero(mask)
    # pasted at (2, 61), clipped by the border: rows 0 .. 2 + floor(ph / 2)
    half_h, half_w = ys.max() - 2, 61 - xs.min()
    dec_y = out[mask > 0, 0] * 63 - ys        # source row - target row = src_cy - 2
    dec_x = out[mask > 0, 1] * 63 - xs
    src_cy, src_cx = dec_y.mean() + 2, dec_x.mean() + 61
    assert min(abs(src_cy - (ph - 1) / 2) for ph in (2 * half_h, 2 * half_h + 1)) < 2e-3
    assert min(abs(src_cx - (63 - (pw - 1) / 2)) for pw in (2 * half_w, 2 * half_w + 1)) < 2e-3
    assert np.ptp(dec_y) < 2e-3 and np.ptp(dec_x) < 2e-3   # a pure translation


# ----------------------------------------------------------------------------- row 4
def _ref_jitter(img, factors, delta, order):
  """torchvision ColorJitter's functions in float64 NumPy, hue via colorsys."""
  luma = np.array([0.299, 0.587, 0.114])
  x = img.astype(np.float64)
  for op in order:
    if op == 0:
      x = np.clip(x * factors[0], 0, 1)
    elif op == 1:
      mean = np.mean(x @ luma)
      x = np.clip((x - mean) * factors[1] + mean, 0, 1)
    elif op == 2:
      g = (x @ luma)[..., None]
      x = np.clip(g + (x - g) * factors[2], 0, 1)
    else:
      y = np.empty_like(x)
      for idx in np.ndindex(x.shape[:-1]):
        h, s, v = colorsys.rgb_to_hsv(*x[idx])
        y[idx] = colorsys.hsv_to_rgb((h + delta) % 1.0, s, v)
      x = y
  return x


def test_normal_images_are_colour_jittered_before_the_synthesis():
  m = stage_helpers.build(_tiny())
  x = jnp.asarray(_smooth_images(8, size=16, seed=1))
  guide = jax.jit(lambda k: m.init_finetune(k, None)[2]["guide"])(jax.random.key(0))
  key = jax.random.key(3)
  out, mask, label = map(np.asarray, jax.jit(m.synthesize)(key, guide, x))
  keys = jax.random.split(jax.random.fold_in(key, 1), 8)
  assert 0 < label.sum() < 8
  for i in range(8):
    f, d, o = augment.jitter_params(keys[i], aca.FINETUNE_JITTER)
    assert np.all(np.abs(np.asarray(f) - 1) <= 0.1 + 1e-6) and abs(float(d)) <= 0.1
    ref = _ref_jitter(np.asarray(x[i]), np.asarray(f), float(d), np.asarray(o).tolist())
    keep = mask[i] == 0                      # normal images: all of it; pasted: outside the paste
    np.testing.assert_allclose(out[i][keep], ref[keep], atol=5e-6)
    assert np.abs(out[i] - np.asarray(x[i])).max() > 1e-3    # every image is augmented
  # "none" (the demo): normal images untouched
  plain = stage_helpers.build(_tiny(full_switches=False))
  out0, _, lab0 = map(np.asarray, jax.jit(plain.synthesize)(key, guide, x))
  np.testing.assert_array_equal(out0[lab0 == 0], np.asarray(x)[lab0 == 0])


def test_host_transform_jitters_every_image_first():
  img = _smooth_images(1, size=12)[0]
  ex = {"image": img, "mask": np.zeros((12, 12), np.float32), "label": np.int32(0)}
  t = aca.HostCutPaste(anomaly_prob=0.5, augment="color_jitter")
  normals = 0
  for seed in range(12):
    out = t(ex, np.random.default_rng(seed))
    rng = np.random.default_rng(seed)         # replay: paste decision, then torchvision's draws
    rng.random()
    order = rng.permutation(4)
    factors = [rng.uniform(0.9, 1.1) for _ in range(3)]
    ref = _ref_jitter(img, factors, rng.uniform(-0.1, 0.1), order)
    keep = out["mask"] == 0
    np.testing.assert_allclose(out["image"][keep], ref[keep], atol=5e-6)
    normals += int(out["label"]) == 0
  assert 0 < normals < 12


# ----------------------------------------------------------------------------- row 5
@pytest.mark.parametrize("source", ["teacher", "student"])
def test_finetune_starts_from_the_chosen_stage1_network(source):
  c = _tiny()
  c.method.finetune.init_from_stage1 = source
  m = stage_helpers.build(c)
  s1, s2 = stage_helpers.stages(m)
  batch = {"image": jnp.asarray(_smooth_images())}
  st = jax.jit(s1.init)(jax.random.key(0), None)
  st, _ = jax.jit(s1.train_step)(st, batch, jax.random.key(1))
  st2 = jax.jit(s2.init)(jax.random.key(2), st)
  want = st["extras"]["teacher"]["vit"] if source == "teacher" else st["params"]["vit"]
  other = st["params"]["vit"] if source == "teacher" else st["extras"]["teacher"]["vit"]
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(st2["params"]["vit"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(st2["extras"]["guide"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))   # the guide = the start
  assert max(float(jnp.abs(a - b).max())
             for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(other))) > 0
  st2, met = jax.jit(s2.train_step)(st2, batch, jax.random.key(3))
  assert np.isfinite(float(met["loss"]))
