"""`--mode=plan`: the recipe a run would execute, before any compute is spent.

Builds the data description and the method exactly as training would (the
same `DataInfo`, stages and resolved durations, the same optimiser config),
trains nothing, compiles nothing, and reports per stage: steps, epochs, batch,
images per epoch per category, the learning-rate schedule at its key points,
optimiser and weight-decay mask; plus the init source of every pretrained
module, the anomaly-synthesis source, input size and normalisation, the
protocol (unified or one model per category) and the devices and mesh.
Printed as a table and written to `<workdir>/plan.json`; nothing else is
written. The data are only listed (file names), so a plan of MVTec AD takes
seconds on a CPU.
"""
from __future__ import annotations

import os
from typing import Optional

from maskjax import config_base, durations, fileio, train_utils
from maskjax import data_info as data_info_lib
from maskjax import mesh as mesh_lib
from maskjax import per_category
from maskjax.data_access import DataAPI
from maskjax.errors import UserError

PLAN_NAME = "plan.json"


def _schedule_points(o, steps: int) -> list[list]:
  """[[step, lr], ...] at the schedule's key points: start, end of warm-up,
  every step decay (the first few), middle, last step."""
  sched = train_utils.make_schedule(o, steps)
  points = {0, max(steps - 1, 0), steps // 2}
  warm = int(o.warmup_steps) if "warmup_steps" in o else 0
  if warm and str(o.schedule) in ("warmup", "warmup_cosine"):
    points.add(min(warm, steps - 1))
  if str(o.schedule) == "step" and int(o.decay_every) > 0:
    points.update(range(int(o.decay_every), steps, int(o.decay_every)))
  return [[int(t), float(sched(t))] for t in sorted(points)[:12]]


def _devices() -> str:
  d = mesh_lib.describe_devices()
  return (f"{d['num_devices']} x {d['device_kind']} ({d['platform']}), "
          f"{d['process_count']} process{'es' if d['process_count'] > 1 else ''}")


def _stage_plan(stage, info, config) -> dict:
  durations.resolve(stage, info, config)
  o = durations.optimizer_config(stage, config)
  d = stage.duration
  fixed = durations.fixed_steps(config, d) > 0
  per_cat = ({c: int(d.samples_per_category) for c in info.categories} if d.samples_per_category
             else dict(info.num_train))
  decay = "off" if not float(o.weight_decay) else (
      f"{float(o.weight_decay):g} on " + ("every tensor" if str(o.decay_mask) == "all"
                                          else "tensors of rank >= 2 (no biases / norms)")
      + (f", never on {', '.join(map(str, o.no_decay_names))}" if len(o.no_decay_names) else ""))
  return {
      "stage": stage.name, "steps": int(stage.steps),
      "epochs": (None if fixed else int(d.epochs)),
      "epochs_equivalent": round(stage.steps / max(stage.steps_per_epoch, 1), 2),
      "duration": ("train.steps" if int(config.train.steps) else d.describe()),
      "batch": int(stage.batch_size), "steps_per_epoch": int(stage.steps_per_epoch),
      "images_per_epoch_per_category": per_cat,
      "optimizer": {"name": str(o.name), "lr": float(o.lr), "b1": float(o.b1),
                    "b2": float(o.b2), "weight_decay": decay,
                    "grad_clip": float(o.grad_clip), "accum_steps": int(config.optim.accum_steps)},
      "schedule": {"name": str(o.schedule), "warmup_steps": int(o.warmup_steps),
                   "points": _schedule_points(o, int(stage.steps))},
      "trainable": "all parameters" if stage.trainable is None else "a subset (others frozen)",
  }


def _unit(config, info, name: str) -> dict:
  from maskjax.methods import build_method
  method = build_method(config, info)
  stages = [_stage_plan(s, info, config) for s in method.stages()]
  return {"unit": name, "categories": list(info.categories),
          "train_images": dict(info.num_train), "stages": stages,
          "method_facts": {k: str(v) for k, v in (method.describe() or {}).items()}}


def _filtered(splits, category: str):
  from maskjax.data.records import Splits
  keep = lambda rs: [r for r in rs if r.category == category]  # noqa: E731
  return Splits(categories=[category], train=keep(splits.train), val=keep(splits.val),
                test=keep(splits.test))


def make_plan(config, data: Optional[DataAPI] = None) -> dict:
  """The plan as a dict (what `plan.json` holds)."""
  from maskjax.methods import check_pretrained, get_method_class, init_sources
  config_base.validate(config)
  data = data or DataAPI()
  cls = get_method_class(str(config.method.name))
  splits = data.load_splits(config.input, int(config.seed))
  cats = list(splits.categories)
  split_counts = splits.counts()
  if per_category.is_per_category(config) and len(cats) > 1:
    protocol = f"per_category: {len(cats)} models, sub-runs <workdir>/<category>/"
    units = [_unit(per_category.sub_config(config, c),
                   data_info_lib.from_splits(_filtered(splits, c), config), c) for c in cats]
  else:
    protocol = (f"unified: one model over {len(cats)} categor{'y' if len(cats) == 1 else 'ies'}")
    units = [_unit(config, data_info_lib.from_splits(splits, config), "all")]
  try:
    check_pretrained(config)
    refusal = None
  except UserError as e:
    refusal = str(e)
  inits = init_sources(config)
  if inits and bool(config.model.allow_random_init):
    inits = {k: (v + " (model.allow_random_init=True)" if v == "random init" else v)
             for k, v in inits.items()}
  mesh = mesh_lib.make_mesh(config.mesh)
  texture = str(config.input.texture_dir)
  return {
      "method": cls.name, "protocol": protocol,
      "data": {"data_dir": str(config.input.data_dir) or "embedded demo data",
               "format": str(config.input.format), "categories": cats,
               "split_counts": split_counts,
               "validation": (f"{config.input.val_fraction:g} of training normals, "
                              + ("also trained on (input.train_on_val)"
                                 if config.input.train_on_val else "held out"))},
      "input": {"image_size": int(config.input.image_size),
                "normalization": cls.input_normalization,
                "batch": int(units[0]["stages"][0]["batch"]),
                "eval_batch": int(config.input.eval_batch_size)},
      "init": {"pretrained": inits or "none (the paper trains from random weights)",
               "other modules": "random init",
               "refused": refusal},
      "synthesis_textures": (
          "not used by this method" if not cls.uses_textures
          else f"texture images from {texture}" if texture
          else "built-in procedural textures (input.texture_dir is empty)"),
      "compute_dtype": str(config.train.compute_dtype),
      "devices": _devices(), "mesh": {k: int(v) for k, v in mesh.shape.items()},
      "units": units,
  }


def format_plan(plan: dict) -> str:
  """The plan as text: one line per fact, one table row per stage."""
  lines = [f"plan: {plan['method']} | {plan['protocol']}",
           f"data: {plan['data']['data_dir']} ({plan['data']['format']}), "
           f"{len(plan['data']['categories'])} categories; validation: "
           f"{plan['data']['validation']}",
           f"input: {plan['input']['image_size']} px, normalisation "
           f"{plan['input']['normalization']}, eval batch {plan['input']['eval_batch']}, "
           f"compute {plan['compute_dtype']}",
           "init: " + (", ".join(f"{k}: {v}" for k, v in plan["init"]["pretrained"].items())
                       if isinstance(plan["init"]["pretrained"], dict)
                       else plan["init"]["pretrained"]) + "; other modules random",
           f"synthesis textures: {plan['synthesis_textures']}",
           f"devices: {plan['devices']}, mesh {plan['mesh']}"]
  if plan["init"]["refused"]:
    lines.append(f"a training run would refuse: {plan['init']['refused']}")
  head = ["unit", "stage", "steps", "epochs", "batch", "steps/epoch", "images/epoch/category",
          "optimizer", "weight decay", "lr schedule (step: lr)"]
  rows = []
  for u in plan["units"]:
    for s in u["stages"]:
      per = s["images_per_epoch_per_category"]
      vals = sorted(set(per.values()))
      per_txt = (str(vals[0]) if len(vals) == 1 else f"{min(vals)}-{max(vals)}") if vals else "-"
      o = s["optimizer"]
      rows.append([u["unit"], s["stage"], str(s["steps"]),
                   str(s["epochs"]) if s["epochs"] is not None else f"({s['epochs_equivalent']})",
                   str(s["batch"]), str(s["steps_per_epoch"]), per_txt,
                   f"{o['name']} lr {o['lr']:g} b=({o['b1']:g}, {o['b2']:g})",
                   o["weight_decay"],
                   f"{s['schedule']['name']}: " + ", ".join(
                       f"{t}: {lr:.3g}" for t, lr in s["schedule"]["points"])])
  widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
  fmt = lambda r: "  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip()  # noqa: E731
  lines += ["", fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]
  facts = {}
  for u in plan["units"]:
    for k, v in u["method_facts"].items():
      facts.setdefault(k, set()).add(v)
  if facts:
    lines += [""] + [f"{k}: {'; '.join(sorted(v))}" for k, v in facts.items()]
  return "\n".join(lines)


def run_plan(config, workdir: str, data: Optional[DataAPI] = None) -> dict:
  """Make the plan, print it, write `<workdir>/plan.json`."""
  plan = make_plan(config, data)
  workdir = os.path.abspath(workdir)
  fileio.ensure_writable_dir(workdir, "--workdir")
  path = os.path.join(workdir, PLAN_NAME)
  fileio.write_json(path, plan)
  print(format_plan(plan))
  print(f"plan: {path}")
  return {"workdir": workdir, "mode": "plan", "plan": plan, "plan_json": path,
          "total_steps": sum(s["steps"] for u in plan["units"] for s in u["stages"])}
