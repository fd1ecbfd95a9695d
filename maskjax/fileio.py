"""Atomic file writes and the writability probe every output directory gets.

A reader (a report viewer, a resumed run, a second process) never sees half a
file: content goes to a temporary file in the same directory, is flushed to
disk and renamed over the target (`os.replace` is atomic on POSIX). Errors are
`WorkdirError`s naming the file and the cause (disk full, read-only, ...).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from typing import Any, Iterator

from maskjax.errors import WorkdirError


def describe_os_error(e: OSError) -> str:
  """'No space left on device (errno 28)' style text of an OSError."""
  text = e.strerror or str(e)
  return f"{text} (errno {e.errno})" if e.errno else text


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", **kwargs) -> Iterator[Any]:
  """`with atomic_open(p) as f: f.write(...)`: `p` appears complete or not at all."""
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  try:
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
  except OSError as e:
    raise WorkdirError(f"cannot write {path}: {describe_os_error(e)}") from e
  if "b" not in mode:
    kwargs.setdefault("encoding", "utf-8")
  try:
    with os.fdopen(fd, mode, **kwargs) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; reports are meant to be shared
    os.replace(tmp, path)
  except OSError as e:
    _remove(tmp)
    raise WorkdirError(f"cannot write {path}: {describe_os_error(e)}") from e
  except BaseException:
    _remove(tmp)
    raise


def write_text(path: str, text: str) -> None:
  with atomic_open(path) as f:
    f.write(text)


def write_json(path: str, obj: Any, indent: int = 2) -> None:
  write_text(path, json.dumps(obj, indent=indent) + "\n")


def _remove(path: str) -> None:
  try:
    os.remove(path)
  except OSError:
    pass


def ensure_writable_dir(path: str, what: str) -> None:
  """Create `path` if needed and prove that a file can be written there.

  A real probe (create + delete a file), not `os.access`: permission bits say
  nothing for root, read-only mounts and full disks. `what` names the option
  that chose the directory (e.g. "--workdir").
  """
  path = os.path.abspath(path)
  if os.path.exists(path) and not os.path.isdir(path):
    raise WorkdirError(f"{what}={path} is a file, not a directory")
  try:
    os.makedirs(path, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=path)
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    hint = (" (read-only file system or no permission; choose another directory)"
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else "")
    raise WorkdirError(f"{what}={path} is not writable: {describe_os_error(e)}{hint}") from e
