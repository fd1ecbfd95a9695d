"""Training logs: a progress bar, `metrics.jsonl`, TensorBoard events, absl lines.

Only process 0 writes files or draws the bar; other processes get a logger
that does nothing (their metrics are the same global values).

  <workdir>/metrics.jsonl   one JSON object per log step:
                            {"stage", "step", <metric>: float, ..., "images_per_s", "lr"?, "time"}
  <workdir>/tb/             TensorBoard event files, scalars tagged "<stage>/<metric>".

The event files are written by `ScalarEventWriter` below (TFRecord framing
with masked CRC-32C, `Event`/`Summary` protobufs encoded by hand: the few
fields scalars need). Neither TensorFlow nor tensorboardX is imported: the
latter pulls in PyTorch when installed, which costs seconds and hundreds of MB
per process. TensorBoard reads the files as usual (`tensorboard --logdir <workdir>/tb`).
"""
from __future__ import annotations

import json
import math
import os
import socket
import struct
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


class MetricLogger:
  """Writes one stage's log steps. Use as a context manager, or call close()."""

  def __init__(self, workdir: str, *, stage: str, total_steps: int, start_step: int = 0,
               progress_bar: bool = True, write: Optional[bool] = None):
    self.stage = stage
    self.total_steps = int(total_steps)
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
      self._tb = ScalarEventWriter(os.path.join(workdir, "tb"))
    except OSError as e:  # TensorBoard is optional
      logging.warning("TensorBoard logging disabled: %s", e)
    if progress_bar and _is_tty():
      from tqdm import tqdm
      self._bar = tqdm(total=self.total_steps, initial=int(start_step), desc=stage,
                       dynamic_ncols=True, file=sys.stderr)

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
    logging.info("[%s] step %d/%d loss %.5g  %.1f img/s  ETA %s", self.stage, step,
                 self.total_steps, loss, ips, _fmt_eta(remaining))
    return rec

  def close(self) -> None:
    if self._bar is not None:
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
def _crc32c_table() -> list[int]:
  table = []
  for i in range(256):
    c = i
    for _ in range(8):
      c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    table.append(c)
  return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli), as TFRecord uses."""
  c = 0xFFFFFFFF
  for b in data:
    c = _CRC_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
  return c ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
  c = crc32c(data)
  return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
  out = bytearray()
  while True:
    b = n & 0x7F
    n >>= 7
    if n:
      out.append(b | 0x80)
    else:
      out.append(b)
      return bytes(out)


def _field(num: int, wire: int, payload: bytes) -> bytes:
  return _varint((num << 3) | wire) + payload


def _event(wall_time: float, step: int = 0, *, file_version: str | None = None,
           scalars: dict | None = None) -> bytes:
  """Encode tensorboard's `Event` proto: wall_time=1 (double), step=2 (int64),
  file_version=3 (string), summary=5 (Summary: value=1 repeated {tag=1, simple_value=2})."""
  msg = _field(1, 1, struct.pack("<d", wall_time))
  if step:
    msg += _field(2, 0, _varint(int(step) & 0xFFFFFFFFFFFFFFFF))
  if file_version is not None:
    fv = file_version.encode()
    msg += _field(3, 2, _varint(len(fv)) + fv)
  if scalars:
    summary = b""
    for tag, v in scalars.items():
      t = tag.encode()
      value = _field(1, 2, _varint(len(t)) + t) + _field(2, 5, struct.pack("<f", float(v)))
      summary += _field(1, 2, _varint(len(value)) + value)
    msg += _field(5, 2, _varint(len(summary)) + summary)
  return msg


class ScalarEventWriter:
  """Append-only TensorBoard event file of scalar summaries."""

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
    self.path = os.path.join(logdir, name)
    self._f = open(self.path, "ab")
    self._write(_event(time.time(), file_version="brain.Event:2"))

  def _write(self, record: bytes) -> None:
    header = struct.pack("<Q", len(record))
    self._f.write(header + struct.pack("<I", _masked_crc(header)) + record
                  + struct.pack("<I", _masked_crc(record)))

  def add_scalar(self, tag: str, value: float, step: int) -> None:
    self._write(_event(time.time(), step, scalars={tag: value}))

  def flush(self) -> None:
    self._f.flush()

  def close(self) -> None:
    self._f.close()


def _fmt_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h:d}:{m:02d}:{s:02d}"


def info(msg: str, *args) -> None:
  """absl info on process 0 only."""
  if jax.process_index() == 0:
    logging.info(msg, *args)
