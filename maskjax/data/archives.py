"""Safe extraction of dataset archives (.tar, .tar.gz, .tar.xz, .tar.bz2, .zip).

Every member is checked before anything is written: absolute paths, `..`
components, links (symbolic or hard) whose target leaves the extraction
directory, and device/FIFO members are rejected with a `DataError` naming the
archive and the member. Extraction goes to a temporary directory that is
renamed into place, keyed by the archive's path, size and modification time,
so a second run reuses it.
"""
from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import tarfile
import tempfile
import zipfile

from maskjax.errors import DataError

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".zip")


def is_archive(path: str) -> bool:
  return os.path.isfile(path) and path.lower().endswith(ARCHIVE_SUFFIXES)


def _check_name(archive: str, name: str) -> str:
  norm = name.replace("\\", "/")
  if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
    raise DataError(f"{archive}: member {name!r} has an absolute path; refusing to extract")
  parts = [p for p in norm.split("/") if p not in ("", ".")]
  if ".." in parts:
    raise DataError(f"{archive}: member {name!r} points outside the extraction directory "
                    "('..' in its path); refusing to extract")
  return "/".join(parts)


def _check_link(archive: str, name: str, target: str, hard: bool) -> None:
  target = target.replace("\\", "/")
  if target.startswith("/"):
    raise DataError(f"{archive}: link member {name!r} points to the absolute path {target!r}; "
                    "refusing to extract")
  base = "" if hard else posixpath.dirname(name)
  resolved = posixpath.normpath(posixpath.join(base, target))
  if resolved == ".." or resolved.startswith("../"):
    raise DataError(f"{archive}: link member {name!r} -> {target!r} points outside the "
                    "extraction directory; refusing to extract")


def _extract_tar(archive: str, dest: str) -> None:
  try:
    tf = tarfile.open(archive)
  except (tarfile.TarError, OSError) as e:
    raise DataError(f"{archive}: not a readable tar archive ({e})") from e
  with tf:
    members = tf.getmembers()
    for m in members:
      name = _check_name(archive, m.name)
      if m.issym() or m.islnk():
        _check_link(archive, name, m.linkname, m.islnk())
      elif not (m.isfile() or m.isdir()):
        raise DataError(f"{archive}: member {m.name!r} is a device/FIFO; refusing to extract")
    # Everything was checked; the 'data' filter (Python >= 3.11.4) checks again.
    try:
      tf.extractall(dest, members=members, filter="data")
    except TypeError:  # pragma: no cover - very old Python without filters
      tf.extractall(dest, members=members)
    except tarfile.TarError as e:
      raise DataError(f"{archive}: unsafe or unreadable member ({e})") from e


def _extract_zip(archive: str, dest: str) -> None:
  try:
    zf = zipfile.ZipFile(archive)
  except (zipfile.BadZipFile, OSError) as e:
    raise DataError(f"{archive}: not a readable zip archive ({e})") from e
  with zf:
    for info in zf.infolist():
      name = _check_name(archive, info.filename)
      if (info.external_attr >> 16) & 0o170000 == 0o120000:
        raise DataError(f"{archive}: member {info.filename!r} is a symbolic link; refusing to extract")
      if not name:
        continue
      out = os.path.join(dest, *name.split("/"))
      if info.is_dir():
        os.makedirs(out, exist_ok=True)
        continue
      os.makedirs(os.path.dirname(out), exist_ok=True)
      with zf.open(info) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)


def extract(archive: str, cache_dir: str = "") -> str:
  """Extract `archive` safely into `<cache_dir>/archives/<name>-<key>`; returns that dir."""
  if not os.path.isfile(archive):
    raise DataError(f"{archive}: archive not found")
  st = os.stat(archive)
  key = hashlib.sha1(f"{os.path.abspath(archive)}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
  cache = os.path.join(os.path.expanduser(cache_dir or os.path.join("~", ".cache", "maskjax")),
                       "archives")
  final = os.path.join(cache, f"{os.path.basename(archive)}-{key}")
  if os.path.isdir(final):
    return final
  os.makedirs(cache, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".extract-", dir=cache)
  try:
    if archive.lower().endswith(".zip"):
      _extract_zip(archive, tmp)
    else:
      _extract_tar(archive, tmp)
    try:
      os.rename(tmp, final)
    except OSError:
      if not os.path.isdir(final):
        raise
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
  return final
