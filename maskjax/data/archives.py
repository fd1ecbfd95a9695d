"""Safe extraction of dataset archives (.tar, .tar.gz, .tar.xz, .tar.bz2, .zip).

Every member is checked before anything is written: absolute paths, `..`
components, links (symbolic or hard) whose target leaves the extraction
directory, members whose path passes through an earlier link member (a chain
`a/l -> ..`, `a/l/l2 -> ..`, `a/l/l2/x` looks safe member by member), and
device/FIFO members are rejected with a `DataError` naming the archive and the
member. Tar members are then extracted with `tarfile`'s "data" filter, which
checks again; an interpreter without that filter (Python < 3.11.4) is refused
rather than trusted. The declared size of all members must fit into the free
space of the cache. A truncated or corrupt archive (bad CRC, cut stream), or a
member that cannot be written (a file where a directory must be), is a
`DataError` naming the archive and the member. Extraction goes to a temporary
directory that is renamed into place, keyed by the archive's path, size and
modification time, so a second run reuses it.
"""
from __future__ import annotations

import hashlib
import lzma
import os
import posixpath
import shutil
import sys
import tarfile
import tempfile
import zipfile
import zlib

from maskjax.errors import DataError

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".zip")
#: free space kept beside an extraction (the run still writes checkpoints)
FREE_SPACE_MARGIN = 256 * 2 ** 20
# What reading a damaged archive raises, by compression format.
# (bz2 reports bad data as OSError or ValueError.)
_READ_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError,
                OSError, ValueError)


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


def _through_link(archive: str, name: str, links: set[str]) -> None:
  """Refuse a member whose parent path is an earlier link member."""
  parts = name.split("/")
  for i in range(1, len(parts)):
    if "/".join(parts[:i]) in links:
      raise DataError(f"{archive}: member {name!r} lies under the link member "
                      f"{'/'.join(parts[:i])!r}; refusing to extract")


def _check_space(archive: str, total: int, dest: str) -> None:
  free = shutil.disk_usage(dest).free
  if total + FREE_SPACE_MARGIN > free:
    raise DataError(f"{archive}: extracting needs {total / 2 ** 30:.2f} GiB but the cache "
                    f"{dest} has {free / 2 ** 30:.2f} GiB free (keeping "
                    f"{FREE_SPACE_MARGIN // 2 ** 20} MiB); set config.input.cache_dir to a "
                    "larger disk or extract the archive yourself")


def _cause(e: BaseException) -> str:
  text = str(e) or type(e).__name__
  if isinstance(e, EOFError) or "unexpected end" in text.lower():
    return f"the archive is truncated ({text})"
  return f"{type(e).__name__}: {text}"


def _extract_tar(archive: str, dest: str) -> None:
  if not hasattr(tarfile, "data_filter"):
    raise DataError(f"{archive}: this Python ({sys.version.split()[0]}) has no tarfile "
                    "'data' extraction filter (added in 3.11.4); refusing to extract a tar "
                    "archive without it. Upgrade Python or extract the archive yourself")
  try:
    tf = tarfile.open(archive)
  except _READ_ERRORS as e:
    raise DataError(f"{archive}: not a readable tar archive ({_cause(e)})") from e
  with tf:
    try:
      members = tf.getmembers()
    except _READ_ERRORS as e:
      raise DataError(f"{archive}: cannot list the members: {_cause(e)}") from e
    links: set[str] = set()
    for m in members:
      name = _check_name(archive, m.name)
      _through_link(archive, name, links)
      if m.issym() or m.islnk():
        _check_link(archive, name, m.linkname, m.islnk())
        links.add(name)
      elif not (m.isfile() or m.isdir()):
        raise DataError(f"{archive}: member {m.name!r} is a device/FIFO; refusing to extract")
    _check_space(archive, sum(m.size for m in members if m.isfile()), dest)
    # Everything was checked; the 'data' filter checks again, member by member
    # so that an error names the member.
    for m in members:
      try:
        tf.extract(m, dest, filter="data", set_attrs=not m.isdir())
      except _READ_ERRORS as e:
        raise DataError(f"{archive}: cannot extract member {m.name!r}: {_cause(e)}") from e


def _extract_zip(archive: str, dest: str) -> None:
  try:
    zf = zipfile.ZipFile(archive)
  except _READ_ERRORS as e:
    raise DataError(f"{archive}: not a readable zip archive ({_cause(e)})") from e
  with zf:
    infos = zf.infolist()
    for info in infos:
      _check_name(archive, info.filename)
      if (info.external_attr >> 16) & 0o170000 == 0o120000:
        raise DataError(f"{archive}: member {info.filename!r} is a symbolic link; refusing to extract")
    # zipfile never writes more than a member's declared size: the sum bounds the output.
    _check_space(archive, sum(i.file_size for i in infos if not i.is_dir()), dest)
    for info in infos:
      name = _check_name(archive, info.filename)
      if not name:
        continue
      out = os.path.join(dest, *name.split("/"))
      try:
        if info.is_dir():
          os.makedirs(out, exist_ok=True)
          continue
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with zf.open(info) as src, open(out, "wb") as dst:
          shutil.copyfileobj(src, dst)
      except _READ_ERRORS as e:
        raise DataError(f"{archive}: cannot extract member {info.filename!r}: {_cause(e)}") from e


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
  try:
    os.makedirs(cache, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".extract-", dir=cache)
  except OSError as e:
    raise DataError(f"{archive}: cannot create the extraction cache {cache} "
                    f"({e.strerror or e}); set config.input.cache_dir to a writable "
                    "directory") from e
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
