"""MALA's full recipe against independent computations: the stage-1 lr
schedule against MAE's `adjust_learning_rate` written in NumPy, the tensors
weight decay reaches against torch.optim.AdamW on a PyTorch MAE with MAE's
(timm) parameter groups, and the refusal to train without DTD textures."""
from __future__ import annotations

import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import stage_helpers  # noqa: E402

from configs import mala as mala_config  # noqa: E402
from maskjax import durations, train_state  # noqa: E402
from maskjax.errors import ConfigError  # noqa: E402
from maskjax.methods import DataInfo, build_method  # noqa: E402
from maskjax.methods import mala  # noqa: E402

CATEGORIES = [f"c{i}" for i in range(27)]   # MVTec AD + VisA


def _full(**method):
  c = mala_config.get_config()
  c.method.builtin_textures = True
  for k, v in method.items():
    c.method.stage1[k] = v
  return c


def _stages(c, image_size=224):
  m = build_method(c, DataInfo.uniform(CATEGORIES, 10, image_size))
  return m, stage_helpers.stages(m)


def mae_adjust_learning_rate(epoch, *, lr, min_lr, warmup_epochs, epochs):
  """facebookresearch/mae util/lr_sched.py, called per iteration with the
  fractional epoch data_iter_step / len(data_loader) + epoch (NumPy)."""
  epoch = np.asarray(epoch, np.float64)
  warm = lr * epoch / warmup_epochs
  cos = min_lr + (lr - min_lr) * 0.5 * (
      1.0 + np.cos(np.pi * (epoch - warmup_epochs) / (epochs - warmup_epochs)))
  return np.where(epoch < warmup_epochs, warm, cos)


def _at(schedule, steps):
  return np.array([float(schedule(jnp.asarray(s, jnp.int32))) for s in steps], np.float64)


# ----------------------------------------------------------------------------- row 1
def test_stage1_schedule_is_mae_warmup_then_half_cycle_cosine():
  c = _full()
  m, (s1, s2) = _stages(c)
  spe = math.ceil(200 * 27 / 128)                       # 43 steps per balanced epoch
  assert (s1.steps_per_epoch, s1.steps) == (spe, 2000 * spe)
  warm = 100                                            # 0.05 of 2000 epochs
  assert durations.optimizer_config(s1, c).warmup_steps == warm * spe
  peak = 1e-3 * 128 / 256
  steps = np.array([0, 1, 21, 42, 43, 44, 2150, warm * spe - 1, warm * spe, warm * spe + 1,
                    10_000, 43_000, 60_001, s1.steps - 2, s1.steps - 1])
  ref = mae_adjust_learning_rate(steps / spe, lr=peak, min_lr=0.0, warmup_epochs=warm,
                                 epochs=2000)
  # optax evaluates in float32 (the warm-up as peak * (1 - (1 - t/W))): within a
  # float32 step of the peak lr, 1.2e-7 * peak
  tol = dict(rtol=2e-6, atol=1.2e-7 * peak)
  np.testing.assert_allclose(_at(s1.schedule, steps), ref, **tol)
  # the PLPM discriminator's optimiser follows the same schedule (peak = stage-1 lr)
  np.testing.assert_allclose(_at(m.disc_schedule(s1), steps), ref, **tol)
  # stage 2: fixed lr (paper), 1e-3 * 32 / 256
  np.testing.assert_allclose(_at(s2.schedule, steps), 1e-3 * 32 / 256, rtol=1e-6)
  # the legacy switch does not match MAE (the comparison can fail)
  _, (legacy, _) = _stages(_full(schedule="constant"))
  assert not np.allclose(_at(legacy.schedule, steps), ref, rtol=1e-3)
  np.testing.assert_allclose(_at(legacy.schedule, steps), peak, rtol=1e-6)


def test_stage1_schedule_of_fixed_steps_and_config_errors():
  c = _full()
  c.train.steps = 1000
  _, (s1, _) = _stages(c)
  assert durations.optimizer_config(s1, c).warmup_steps == 50
  steps = np.array([0, 1, 25, 49, 50, 51, 500, 999])
  # fixed steps: one "epoch" per step, warm-up = warmup_fraction of the steps
  ref = mae_adjust_learning_rate(steps, lr=1e-3 * 128 / 256, min_lr=0.0, warmup_epochs=50,
                                 epochs=1000)
  np.testing.assert_allclose(_at(s1.schedule, steps), ref, rtol=2e-6, atol=1.2e-7 * 5e-4)
  with pytest.raises(ConfigError, match=r"method\.stage1\.schedule='cosine'"):
    _stages(_full(schedule="cosine"))
  with pytest.raises(ConfigError, match=r"method\.stage1\.warmup_fraction"):
    _stages(_full(warmup_fraction=1.5))
  demo = mala_config.get_config("demo")
  assert demo.method.stage1.schedule == "constant" and demo.optim.schedule == "constant"


# ----------------------------------------------------------------------------- row 2
def _torch_adamw_decayed(torch, ref, lr, wd):
  """The change torch.optim.AdamW makes to each trained tensor of `ref`
  (float64, every value 1) in one step from zero gradients, with MAE's
  parameter groups (main_pretrain.py: timm 0.3.2 add_weight_decay without a
  skip list: no decay for 1-D tensors and names ending in ".bias"; frozen
  tensors are not optimised): -lr * wd where decayed, 0 where not."""
  ref.double()
  with torch.no_grad():
    for p in ref.parameters():
      p.fill_(1.0)
  decay, no_decay = [], []
  for name, p in ref.named_parameters():
    if not p.requires_grad:
      continue
    (no_decay if p.ndim == 1 or name.endswith(".bias") else decay).append(p)
  opt = torch.optim.AdamW([{"params": no_decay, "weight_decay": 0.0},
                           {"params": decay, "weight_decay": wd}], lr=lr, betas=(0.9, 0.95))
  before = {n: p.detach().clone() for n, p in ref.named_parameters() if p.requires_grad}
  for p in ref.parameters():
    p.grad = torch.zeros_like(p) if p.requires_grad else None
  opt.step()
  out = {}
  for n, p in ref.named_parameters():
    if n in before:
      out[n] = float(np.mean((p.detach() - before[n]).numpy()))
  return out


def _ones_like_tree(abstract):
  return jax.tree.map(lambda x: jnp.ones(x.shape, jnp.float32), abstract)


def _dotted_updates(tx, params):
  updates = jax.jit(lambda p: tx.update(jax.tree.map(jnp.zeros_like, p), tx.init(p), p)[0])(
      params)
  return {mala._dotted(p): np.asarray(v) for p, v in
          jax.tree_util.tree_flatten_with_path(updates)[0]}


def test_weight_decay_reaches_exactly_the_tensors_mae_decays():
  torch = pytest.importorskip("torch")
  import torch_reference as tr
  from maskjax.weights import convert

  c = mala_config.get_config("reduced")
  assert (c.optim.decay_mask, tuple(c.optim.no_decay_names)) == ("no_bias_norm", ())
  m = stage_helpers.build(c)
  s1, s2 = stage_helpers.stages(m)
  lr = float(s1.schedule(0))          # reduced: 2 fixed steps, no warm-up step
  wd = float(c.optim.weight_decay)
  assert lr > 0 and wd == 0.05
  enc, size = c.model.encoder_overrides, int(c.input.image_size)
  torch.manual_seed(0)
  ref = tr.MaskedAutoencoder(patch=16, dim=enc.dim, depth=enc.depth, heads=enc.heads,
                             img_size=size, decoder_dim=c.model.decoder_dim,
                             decoder_depth=c.model.decoder_depth,
                             decoder_heads=c.model.decoder_heads)
  torch_rel = _torch_adamw_decayed(torch, ref, lr, wd)
  sd = {k: v.detach().float().numpy() for k, v in tr.MaskedAutoencoder(
      patch=16, dim=enc.dim, depth=enc.depth, heads=enc.heads, img_size=size,
      decoder_dim=c.model.decoder_dim, decoder_depth=c.model.decoder_depth,
      decoder_heads=c.model.decoder_heads).state_dict().items()}
  _, source = convert.torch_to_flat(sd, "mae", dict(patch=16, img_size=size, dim=enc.dim,
                                                    decoder_dim=c.model.decoder_dim,
                                                    pos_embed="sincos"))
  # stage 1: the MAE's own optimiser, one step from zero gradients on params of 1
  ours = _dotted_updates(train_state.build(s1, c)[2], _ones_like_tree(m.f_mae.params))
  assert set(ours) == set(source)                       # every trained tensor has a twin
  ours_rel = {source[k]: float(np.mean(v)) for k, v in ours.items()}
  assert set(ours_rel) == set(torch_rel)
  for n, r in torch_rel.items():   # exact zeros where not decayed, -lr * wd elsewhere
    assert (ours_rel[n] == 0.0) == (r == 0.0), n
    np.testing.assert_allclose(ours_rel[n], r, rtol=1e-6, atol=0, err_msg=n)
  no_decay = sorted(n for n, r in torch_rel.items() if r == 0.0)
  assert all(n.endswith((".bias", "norm1.weight", "norm2.weight", "norm.weight"))
             for n in no_decay)
  assert torch_rel["cls_token"] != 0.0 and torch_rel["mask_token"] != 0.0   # decayed in MAE
  # the legacy switch decays biases and norms too (the comparison can fail)
  legacy = mala_config.get_config("reduced")
  legacy.optim.decay_mask = "all"
  ls1, _ = stage_helpers.stages(stage_helpers.build(legacy))
  legacy_rel = _dotted_updates(train_state.build(ls1, legacy)[2],
                               _ones_like_tree(m.f_mae.params))
  assert any(abs(float(np.mean(legacy_rel[k])) - torch_rel[source[k]]) > 1e-7 for k in source)

  # PLPM and stage 2 (decoder + TBM): the same rule (no rank <= 1 tensor decayed)
  def rule(tree_updates, tree_abstract):
    shapes = {mala._dotted(p): x.shape for p, x in
              jax.tree_util.tree_flatten_with_path(tree_abstract)[0]}
    for k, v in tree_updates.items():
      expect = 0.0 if (len(shapes[k]) <= 1 or k.endswith(".bias")) else -lr_s * wd
      np.testing.assert_allclose(np.mean(v), expect, rtol=1e-6, atol=0, err_msg=k)

  lr_s = float(m.disc_schedule(s1)(0))
  rule(_dotted_updates(m._disc_tx(s1), _ones_like_tree(m.f_disc.params)), m.f_disc.params)
  _, dec = m.split_mae(m.f_mae.params)
  p2 = {"decoder": dec, "tbm": m.f_tbm.params}
  lr_s = float(s2.schedule(0))
  rule(_dotted_updates(train_state.build(s2, c)[2], _ones_like_tree(p2)), p2)
  # the demo keeps decay on every tensor
  assert mala_config.get_config("demo").optim.decay_mask == "all"


# ----------------------------------------------------------------------------- row 3
def test_full_variant_refuses_builtin_textures_unless_asked(tmp_path):
  c = mala_config.get_config()
  assert c.method.builtin_textures is False and not c.input.texture_dir
  with pytest.raises(ConfigError) as e:
    _stages(c)
  msg = str(e.value)
  assert "\n" not in msg
  for s in ("config.input.texture_dir", "config.method.builtin_textures=True",
            "https://www.robots.ox.ac.uk/~vgg/data/dtd/"):
    assert s in msg, msg
  # asked for explicitly: built-in textures, and the run's description says so
  m, _ = _stages(_full())
  assert m.describe()["anomaly_source"].startswith("built-in procedural textures")
  assert "builtin_textures=True" in m.describe()["anomaly_source"]
  # a texture folder (DTD's layout): used, named in the description
  from PIL import Image
  d = tmp_path / "dtd" / "images" / "banded"
  d.mkdir(parents=True)
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / "banded_0001.jpg")
  c = mala_config.get_config()
  c.input.texture_dir = str(tmp_path / "dtd" / "images")
  m, _ = _stages(c)
  assert m.describe()["anomaly_source"] == f"1 texture images from {c.input.texture_dir}"
  # no stage 2 (reconstruction scoring): no textures needed
  _stages(mala_config.get_config("recon_score"))
  for v in ("demo", "demo_multi", "reduced"):
    assert mala_config.get_config(v).method.builtin_textures is True, v


def test_the_loop_refuses_before_training(tmp_path):
  from maskjax import runner
  from maskjax.data import demo
  data = str(tmp_path / "data")
  demo.generate_multi(data, seed=0, image_size=64, num_train=4, num_test_good=1,
                      num_test_defect=1)
  c = mala_config.get_config("reduced")
  c.method.builtin_textures = False
  c.model.allow_random_init = True    # only the texture check is under test here
  c.input.data_dir = data
  c.train.progress_bar = False
  workdir = tmp_path / "run"
  with pytest.raises(ConfigError, match="input.texture_dir"):
    runner.run(c, str(workdir), evaluate_after_train=False)
  assert not (workdir / "checkpoints").exists()
