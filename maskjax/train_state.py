"""One train state layout for every method and the step every stage runs.

State (a plain dict pytree, checkpointed by Orbax as is):

  params       the trainable parameters (the optimiser's target)
  model_state  other model state: BatchNorm statistics, frozen parts
  opt_state    the optimiser state of `params`
  step         int32 scalar: optimisation steps taken in this stage
  extras       named extras of the method (EMA teacher, discriminator, ...)

`build(stage, accum_steps)` turns a method's `Stage` (resolved by
`maskjax.durations`) into the pure `init(rng, previous)` and
`train_step(state, batch, rng) -> (state, metrics)` the loop jits. The train
step runs the stage's `prepare` on the whole batch, the loss and its gradient
over `accum_steps` equal micro-batches (a `lax.scan`, so memory is one
micro-batch), one optimiser update, then the stage's `after_update`; it adds
the learning rate ("lr") and the global gradient norm ("grad_norm") to the
metrics of every method.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from maskjax import durations, train_utils
from maskjax.errors import ConfigError

PyTree = Any
KEYS = ("params", "model_state", "opt_state", "step", "extras")


def make_state(params, model_state, opt_state, step, extras) -> dict:
  return {"params": params, "model_state": model_state, "opt_state": opt_state,
          "step": step, "extras": extras}


def build(stage, config) -> tuple[Callable, Callable, optax.GradientTransformation,
                                  optax.Schedule]:
  """-> (init, train_step, tx, schedule) of a resolved stage."""
  o = durations.optimizer_config(stage, config)
  schedule = train_utils.make_schedule(o, stage.steps)
  tx = train_utils.make_optimizer(o, stage.steps, trainable_mask=stage.trainable)
  accum = int(config.optim.accum_steps)

  def init(rng, previous):
    params, model_state, extras = stage.init_model(rng, previous)
    return make_state(params, model_state, tx.init(params), jnp.zeros((), jnp.int32),
                      extras if extras is not None else {})

  def train_step(state, batch, rng):
    step = state["step"]
    if stage.prepare is not None:
      per_example, shared = stage.prepare(state, batch, rng, step)
    else:
      per_example, shared = dict(batch), {}

    def loss_fn(params, mb, r):
      return stage.loss_fn(params, state, {**mb, **shared}, r, step)

    (loss, aux), grads = accumulate(loss_fn, state["params"], per_example, rng, accum)
    model_state = aux.pop("model_state", state["model_state"])
    outputs = aux.pop("outputs", {})
    params, opt_state = train_utils.apply_updates(tx, state["params"], state["opt_state"],
                                                  grads)
    new = make_state(params, model_state, opt_state, step + 1, state["extras"])
    metrics = dict(aux, loss=loss)
    if stage.after_update is not None:
      new, more = stage.after_update(new, state, batch, outputs, rng, step)
      metrics.update(more)
    metrics["grad_norm"] = train_utils.global_norm(grads)
    metrics["lr"] = jnp.asarray(schedule(step), jnp.float32)
    return new, metrics

  return init, train_step, tx, schedule


def accumulate(loss_fn: Callable, params: PyTree, batch: dict, rng: jax.Array,
               accum_steps: int = 1):
  """`jax.value_and_grad(loss_fn, has_aux=True)(params, batch, rng)` over
  `accum_steps` equal micro-batches (leading dimension split), as a
  `lax.scan`. Loss, gradients and scalar aux are averaged; aux "model_state"
  is taken from the last micro-batch; aux "outputs" (per-example arrays) are
  concatenated in batch order."""
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if accum_steps <= 1:
    return grad_fn(params, batch, rng)

  def split(x):
    if x.shape[0] % accum_steps:
      raise ValueError(f"batch dimension {x.shape[0]} is not divisible by "
                       f"config.optim.accum_steps={accum_steps}")
    return x.reshape((accum_steps, x.shape[0] // accum_steps) + x.shape[1:])

  micro = jax.tree.map(split, batch)
  rngs = jax.random.split(rng, accum_steps)

  def body(carry, inp):
    g_acc, l_acc = carry
    mb, r = inp
    (l, aux), g = grad_fn(params, mb, r)
    return (jax.tree.map(jnp.add, g_acc, g), l_acc + l), aux

  zeros = jax.tree.map(jnp.zeros_like, params)
  (g, l), auxs = jax.lax.scan(body, (zeros, jnp.zeros((), jnp.float32)), (micro, rngs))
  g = jax.tree.map(lambda x: x / accum_steps, g)
  aux = {}
  for k, v in auxs.items():
    if k == "model_state":
      aux[k] = jax.tree.map(lambda a: a[-1], v)
    elif k == "outputs":
      aux[k] = jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), v)
    else:
      aux[k] = jnp.mean(v, axis=0)
  return (l / accum_steps, aux), g


def resolve_stages(method, config) -> list:
  """`method.stages()` with durations resolved against `method.data` and the
  stage functions built: what the loop, eval and export run (built once per
  method object)."""
  cached = getattr(method, "_resolved_stages", None)
  if cached is not None:
    return cached
  stages = method.stages()
  accum = int(config.optim.accum_steps)
  for s in stages:
    if s.batch_size % accum:
      raise ConfigError(
          f"config.optim.accum_steps={accum} does not divide the global batch "
          f"{s.batch_size} of stage {s.name!r} (config.{s.batch_key}, {method.name}); pick "
          "a divisor")
    durations.resolve(s, method.data, config)
    s.init, s.train_step, _, s.schedule = build(s, config)
  method._resolved_stages = stages
  return stages
