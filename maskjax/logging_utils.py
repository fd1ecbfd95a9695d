"""Training logs: a progress bar, `metrics.jsonl`, TensorBoard events, absl lines.

Only process 0 writes files or draws the bar; other processes get a logger
that does nothing (their metrics are the same global values).

  <workdir>/metrics.jsonl   one JSON object per log step:
                            {"stage", "step", <metric>: float, ..., "images_per_s", "lr"?, "time"}
  <workdir>/tb/             TensorBoard event files, scalars tagged "<stage>/<metric>".

The event files are written by tensorboardX (`tensorboard_writer`): training
scalars (losses, learning rate, gradient norm, images/s) per log step, and
evaluation metrics and overlays (`log_evaluation`). `tensorboard --logdir <workdir>/tb`.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Optional

import jax
from absl import logging


def _is_tty() -> bool:
  try:
    return sys.stderr.isatty()
  except (AttributeError, ValueError):
    return False


def _drop_records_after(path: str, stage: str, step: int) -> None:
  """Remove `stage`'s records after `step`: a killed run logged steps past its
  last checkpoint, and the resumed run logs them again."""
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    lines = f.readlines()
  keep = []
  for line in lines:
    try:
      rec = json.loads(line)
    except ValueError:  # a line cut by the kill
      continue
    if not (rec.get("stage") == stage and int(rec.get("step", 0)) > step):
      keep.append(line if line.endswith("\n") else line + "\n")
  if len(keep) != len(lines):
    from maskjax import fileio
    fileio.write_text(path, "".join(keep))


class _AboveBar:
  """A stream that prints log lines above an active tqdm bar (`tqdm.write`),
  so the bar and absl's lines do not overwrite each other."""

  def __init__(self, stream):
    self._stream = stream

  def write(self, text: str) -> int:
    from tqdm import tqdm
    if text.strip():
      tqdm.write(text.rstrip("\n"), file=self._stream)
    return len(text)

  def flush(self) -> None:
    self._stream.flush()

  def __getattr__(self, name):
    return getattr(self._stream, name)


def _log_lines_above_bar():
  """Route absl's stderr handler through `_AboveBar`; returns the undo."""
  handler = getattr(logging.get_absl_handler(), "python_handler", None)
  stream = getattr(handler, "stream", None)
  if handler is None or stream is None or isinstance(stream, _AboveBar):
    return lambda: None
  handler.stream = _AboveBar(stream)

  def undo():
    handler.stream = stream
  return undo


class MetricLogger:
  """Writes one stage's log steps. Use as a context manager, or call close()."""

  def __init__(self, workdir: str, *, stage: str, total_steps: int, start_step: int = 0,
               progress_bar: bool = True, write: Optional[bool] = None, later_steps: int = 0,
               then: str = ""):
    self.stage = stage
    self.total_steps = int(total_steps)
    # steps of the stages still to train after this one: the run's ETA counts
    # them at this stage's speed (an estimate: stages differ in cost)
    self.later_steps = int(later_steps)
    # what follows the training (evaluation): named in the ETA line, not timed
    # (its speed is unknown until it runs; it reports its own progress and ETA)
    self.then = then
    self.write = (jax.process_index() == 0) if write is None else write
    self._jsonl = None
    self._tb = None
    self._bar = None
    self._last_time = time.perf_counter()
    self._last_step = int(start_step)
    if not self.write:
      return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "metrics.jsonl")
    _drop_records_after(path, stage, int(start_step))
    self._jsonl = open(path, "a", encoding="utf-8")
    try:
      self._tb = tensorboard_writer(os.path.join(workdir, "tb"))
    except OSError as e:  # TensorBoard is optional
      logging.warning("TensorBoard logging disabled: %s", e)
    if progress_bar and _is_tty():
      from tqdm import tqdm
      self._bar = tqdm(total=self.total_steps, initial=int(start_step), desc=stage,
                       dynamic_ncols=True, file=sys.stderr)
      self._restore_log_stream = _log_lines_above_bar()

  def reset_clock(self, step: int) -> None:
    """Restart the images/s clock (e.g. after compilation)."""
    self._last_time = time.perf_counter()
    self._last_step = int(step)

  def log(self, step: int, metrics: dict, *, batch_size: int, lr: Optional[float] = None) -> dict:
    """Log host floats `metrics` at `step`; returns the record written."""
    now = time.perf_counter()
    dt = max(now - self._last_time, 1e-9)
    steps = max(step - self._last_step, 0)
    ips = steps * batch_size / dt
    rec = {"stage": self.stage, "step": int(step)}
    rec.update({k: float(v) for k, v in metrics.items()})
    rec["images_per_s"] = ips
    rec["steps_per_s"] = steps / dt
    if lr is not None:
      rec["lr"] = float(lr)
    rec["time"] = time.time()
    self._last_time, self._last_step = now, int(step)
    if not self.write:
      return rec
    self._jsonl.write(json.dumps(rec) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in rec.items():
        if k not in ("stage", "step", "time") and math.isfinite(v):
          self._tb.add_scalar(f"{self.stage}/{k}", v, int(step))
      self._tb.flush()
    loss = rec.get("loss", float("nan"))
    remaining = (self.total_steps - step) / rec["steps_per_s"] if rec["steps_per_s"] else 0.0
    if self._bar is not None:
      self._bar.update(int(step) - self._bar.n)
      self._bar.set_postfix(loss=f"{loss:.4g}", img_s=f"{ips:.1f}")
    run_eta = ""
    if self.later_steps and rec["steps_per_s"]:
      run_eta = "  training ETA ~" + _fmt_eta(remaining + self.later_steps / rec["steps_per_s"])
    if self.then:
      run_eta += f" ({self.then})"
    logging.info("[%s] step %d/%d loss %.5g  %.1f img/s  ETA %s%s", self.stage, step,
                 self.total_steps, loss, ips, _fmt_eta(remaining), run_eta)
    return rec

  def close(self) -> None:
    if self._bar is not None:
      self._restore_log_stream()
      self._bar.close()
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()
    self._bar = self._jsonl = self._tb = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


# ----------------------------------------------------------------------------
# TensorBoard event files
# ----------------------------------------------------------------------------
def tensorboard_writer(logdir: str):
  """A `tensorboardX.SummaryWriter` for `logdir`.

  tensorboardX imports PyTorch at import time when it is installed only to
  accept torch tensors (seconds and hundreds of MB per process); maskjax
  passes floats and numpy arrays, so torch is hidden from that one import
  (unless something already imported it)."""
  hide = "torch" not in sys.modules
  if hide:
    sys.modules["torch"] = None  # `import torch` raises ImportError, as if absent
  try:
    from tensorboardX import SummaryWriter
  finally:
    if hide:
      del sys.modules["torch"]
  return SummaryWriter(logdir=logdir, flush_secs=30)


class Progress:
  """Progress of a finite job in log lines (process 0): "<what>: 12/40 batches,
  3.1 batches/s, ETA 9s", about every tenth of the job and at most every 10 s;
  the first item (compilation) is reported on its own."""

  def __init__(self, what: str, *, total: int, unit: str = "items", compiles: bool = True):
    self.what, self.total, self.unit = what, max(int(total), 0), unit
    self.n = 0
    self._t0 = self._last = time.perf_counter()
    self._t1 = None  # end of the first item
    self._active = jax.process_index() == 0 and self.total > 0
    if self._active:
      info("%s: %d %s%s", what, self.total, unit, " (the first one compiles)" if compiles else "")

  def update(self, k: int = 1) -> None:
    self.n += k
    if not self._active:
      return
    now = time.perf_counter()
    if self._t1 is None:
      self._t1 = now
      info("%s: first of %d %s done in %.1f s", self.what, self.total, self.unit, now - self._t0)
      self._last = now
      return
    step = max(self.total // 10, 1)
    if self.n < self.total and (self.n % step == 0 or now - self._last > 10):
      rate = (self.n - 1) / max(now - self._t1, 1e-9)
      info("%s: %d/%d %s, %.1f %s/s, ETA %s", self.what, self.n, self.total, self.unit, rate,
           self.unit, _fmt_eta((self.total - self.n) / max(rate, 1e-9)))
      self._last = now

  def done(self) -> None:
    if self._active:
      info("%s: %d %s in %.1f s", self.what, self.n, self.unit, time.perf_counter() - self._t0)


def _fmt_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h:d}:{m:02d}:{s:02d}"


def info(msg: str, *args) -> None:
  """absl info on process 0 only."""
  if jax.process_index() == 0:
    logging.info(msg, *args)


def log_evaluation(workdir: str, mean: dict, per_category: dict, *, step: int,
                   images: list[str] = ()) -> None:
  """Evaluation metrics (mean and per category) and a few report figures
  (PNG paths) to `<workdir>/tb`, at the run's last training step (process 0)."""
  if jax.process_index() != 0:
    return
  import numpy as np
  from PIL import Image
  try:
    tb = tensorboard_writer(os.path.join(workdir, "tb"))
  except OSError as e:
    logging.warning("TensorBoard logging disabled: %s", e)
    return
  try:
    for k, v in mean.items():
      if isinstance(v, (int, float)) and math.isfinite(v):
        tb.add_scalar(f"eval/{k}", float(v), step)
    for cat, m in per_category.items():
      for k, v in m.items():
        if isinstance(v, (int, float)) and math.isfinite(v):
          tb.add_scalar(f"eval_{cat}/{k}", float(v), step)
    for p in images:
      with Image.open(p) as img:
        tb.add_image(f"eval/{os.path.splitext(os.path.basename(p))[0]}",
                     np.asarray(img.convert("RGB")), step, dataformats="HWC")
  finally:
    tb.close()
