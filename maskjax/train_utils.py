"""Helpers every method's stages use: optimisers from the config, NNX
split/merge to plain pytrees and mixed precision (gradient accumulation is
the loop's: `maskjax.train_state`).

Everything here is pure JAX and jit-friendly; the loop in `maskjax.train`
decides shardings and donation.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from maskjax.errors import ConfigError

PyTree = Any


# ----------------------------------------------------------------------------
# optimisers and schedules
# ----------------------------------------------------------------------------
def make_schedule(optim_cfg, total_steps: int) -> optax.Schedule:
  """Learning-rate schedule from `config.optim`.

  constant: lr. step: lr * decay_factor ** (step // decay_every) (PyTorch StepLR).
  warmup_cosine: linear warmup_init_lr -> lr over warmup_steps, then cosine to end_lr.
  warmup: linear warmup_init_lr -> lr over warmup_steps, then constant (Goyal et al.).
  sgdr: cosine annealing with warm restarts (Loshchilov & Hutter, T_mult 1):
    lr_t = end_lr + (lr - end_lr) (1 + cos(pi (t mod P) / P)) / 2, P = sgdr_period.
  """
  lr = float(optim_cfg.lr)
  name = optim_cfg.schedule
  if name == "constant":
    return optax.constant_schedule(lr)
  if name == "step":
    every = int(optim_cfg.decay_every)
    if every <= 0:
      raise ConfigError(f"config.optim.decay_every must be > 0 for schedule 'step' (got {every})")
    return optax.exponential_decay(lr, transition_steps=every,
                                   decay_rate=float(optim_cfg.decay_factor),
                                   staircase=True)
  if name == "warmup_cosine":
    warmup = int(optim_cfg.warmup_steps)
    return optax.warmup_cosine_decay_schedule(
        init_value=float(optim_cfg.warmup_init_lr), peak_value=lr,
        warmup_steps=warmup, decay_steps=max(total_steps, warmup + 1),
        end_value=float(optim_cfg.end_lr))
  if name == "warmup":
    warm = int(optim_cfg.warmup_steps)
    init = float(optim_cfg.warmup_init_lr)
    return optax.join_schedules(
        [optax.linear_schedule(init, lr, max(warm, 1)), optax.constant_schedule(lr)], [warm])
  if name == "sgdr":
    period = int(optim_cfg.sgdr_period)
    if period <= 0:
      raise ConfigError(f"config.optim.sgdr_period must be > 0 for schedule 'sgdr' (got {period})")
    end = float(optim_cfg.end_lr)
    return lambda t: end + (lr - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.mod(t, period) / period))
  raise ConfigError(f"unknown config.optim.schedule {name!r}; known: constant, step, "
                    "warmup_cosine, warmup, sgdr")


DECAY_MASKS = ("all", "no_bias_norm")


def decay_mask_fn(optim_cfg) -> Optional[Callable[[PyTree], PyTree]]:
  """Which parameters weight decay reaches. "all": every tensor (PyTorch's
  default for one parameter group). "no_bias_norm": the MAE / DINO parameter
  groups: tensors of rank <= 1 (biases, norm scales and offsets) are not
  decayed, nor any tensor whose path contains one of `optim.no_decay_names`
  (e.g. "pos_embed", "cls_token", "prototypes"). None = optax's "all"."""
  kind = str(optim_cfg.decay_mask)
  if kind not in DECAY_MASKS:
    raise ConfigError(f"config.optim.decay_mask={kind!r}; known: {', '.join(DECAY_MASKS)}")
  names = tuple(str(n) for n in optim_cfg.no_decay_names)
  if kind == "all" and not names:
    return None

  def mask(params):
    def decays(path, leaf):
      key = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
      if any(n in key for n in names):
        return False
      return kind == "all" or jnp.ndim(leaf) >= 2
    return jax.tree_util.tree_map_with_path(decays, params)
  return mask


def make_optimizer(optim_cfg, total_steps: int,
                   trainable_mask: Optional[PyTree] = None) -> optax.GradientTransformation:
  """Optimiser from `config.optim`.

  adam: PyTorch `torch.optim.Adam(weight_decay=wd)` semantics (wd * param added
  to the gradient before the moments). adamw: decoupled weight decay
  (`torch.optim.AdamW`). `optim.decay_mask` chooses which tensors weight decay
  reaches (`decay_mask_fn`). `trainable_mask`: a pytree of bools with the params'
  structure; False sub-trees get no updates and no optimizer state
  (`optax.multi_transform` with `set_to_zero`).
  """
  sched = make_schedule(optim_cfg, total_steps)
  name = optim_cfg.name
  wd = float(optim_cfg.weight_decay)
  b1, b2, eps = float(optim_cfg.b1), float(optim_cfg.b2), float(
      optim_cfg.eps)
  parts = []
  clip = float(optim_cfg.grad_clip)
  if clip > 0:
    parts.append(optax.clip_by_global_norm(clip))
  if name == "adam":
    if wd:
      parts.append(optax.add_decayed_weights(wd, mask=decay_mask_fn(optim_cfg)))
    parts.append(optax.scale_by_adam(b1=b1, b2=b2, eps=eps))
    parts.append(optax.scale_by_learning_rate(sched))
  elif name == "adamw":
    parts.append(optax.adamw(sched, b1=b1, b2=b2, eps=eps, weight_decay=wd,
                             mask=decay_mask_fn(optim_cfg)))
  elif name == "sgd":
    parts.append(optax.sgd(sched, momentum=float(optim_cfg.momentum)))
  else:
    raise ConfigError(f"unknown config.optim.name {name!r}; known: adam, adamw, sgd")
  tx = optax.chain(*parts)
  if trainable_mask is not None:
    labels = jax.tree.map(lambda t: "train" if t else "frozen", trainable_mask)
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
  return tx


# ----------------------------------------------------------------------------
# NNX <-> plain pytrees
# ----------------------------------------------------------------------------
def split_pure(module: nnx.Module):
  """-> (graphdef, params pure dict, rest pure dict) where rest holds batch
  statistics and any other non-Param variables (RNG state excluded)."""
  graphdef, params, rest = nnx.split(module, nnx.Param, ...)
  return graphdef, params.to_pure_dict(), rest.to_pure_dict()


class Functional:
  """Run an NNX module as pure functions of plain-dict pytrees.

    f = Functional(module)               # captures graphdef + a state template
    params, rest = f.params, f.rest      # initial plain dicts
    out, new_rest = f.apply(params, rest, *args, **kwargs)

  `apply` merges, calls the module, and returns the updated non-Param state
  (e.g. BatchNorm running statistics) as a plain dict. Safe inside jit.
  """

  def __init__(self, module: nnx.Module, method: Optional[str] = None):
    self.graphdef, p_state, r_state = nnx.split(module, nnx.Param, ...)
    self._p_template = p_state
    self._r_template = r_state
    self.params = p_state.to_pure_dict()
    self.rest = r_state.to_pure_dict()
    self.method = method

  def module(self, params: PyTree, rest: PyTree) -> nnx.Module:
    p_state = jax.tree.map(lambda x: x, self._p_template)
    r_state = jax.tree.map(lambda x: x, self._r_template)
    nnx.replace_by_pure_dict(p_state, params)
    if rest:
      nnx.replace_by_pure_dict(r_state, rest)
    return nnx.merge(self.graphdef, p_state, r_state)

  def apply(self, params: PyTree, rest: PyTree, *args, method: Optional[str] = None,
            **kwargs):
    m = self.module(params, rest)
    fn = getattr(m, method or self.method) if (method or self.method) else m
    out = fn(*args, **kwargs)
    _, _, new_r = nnx.split(m, nnx.Param, ...)
    return out, new_r.to_pure_dict()


def abstract_functional(factory) -> Functional:
  """`Functional` over an abstract (shape-only) instance of `factory(rngs)`:
  no parameters allocated."""
  return Functional(nnx.eval_shape(lambda: factory(nnx.Rngs(0))))


def init_pure(factory, rng: jax.Array) -> tuple[dict, dict]:
  """Fresh (params, rest) plain dicts of `factory(rngs)` (jit-safe)."""
  _, params, rest = split_pure(factory(nnx.Rngs(params=rng)))
  return params, rest


def set_mode(module: nnx.Module, train: bool) -> None:
  """BatchNorm/Dropout train/eval switch on a merged module."""
  if train:
    module.train()
  else:
    module.eval()


# ----------------------------------------------------------------------------
# gradients
# ----------------------------------------------------------------------------
def apply_updates(tx: optax.GradientTransformation, params: PyTree, opt_state: PyTree,
                  grads: PyTree):
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def compute_dtype(train_cfg) -> jnp.dtype:
  name = train_cfg.compute_dtype
  if name not in ("float32", "bfloat16"):
    raise ConfigError(f"config.train.compute_dtype must be 'float32' or 'bfloat16' (got {name!r})")
  return jnp.bfloat16 if name == "bfloat16" else jnp.float32


def cast_floating(tree: PyTree, dtype) -> PyTree:
  """Cast floating leaves (e.g. float32 master params -> bf16 compute copy)."""
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                      tree)


def global_norm(tree: PyTree) -> jax.Array:
  return optax.global_norm(tree)
