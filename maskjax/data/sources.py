"""Dataset sources -> `Splits` of `Record`s.

Formats (`config.input.format`):
  mvtec    `<root>/<cat>/train/good/*`, `<root>/<cat>/test/<defect>/*`,
           `<root>/<cat>/ground_truth/<defect>/<stem>_mask.<ext>`; masks paired by
           stem (never by sorted order); "good" is normal.
  visa     the original VisA download: `<root>/split_csv/1cls.csv` with columns
           object, split, label, image, mask (paths relative to root).
  folder   `normal_dir`, `abnormal_dir` (files, or one sub-directory per defect
           kind) and optional `mask_dir` (`<stem>.<ext>` or `<stem>_mask.<ext>`,
           flat or in the same defect sub-directory); relative to `data_dir`
           when not absolute. Normal test images come from
           `folder_normal_test_dir` when given, otherwise a seeded
           `folder_test_normal_fraction` (default 0.2) of the normals. Without
           `mask_dir`, anomalous records have `mask_path=None` (all-zero masks;
           pixel metrics are then undefined). Category name: `folder_category`,
           default the base name of `data_dir` (or "folder").
  archive  `data_dir` is a .tar/.tar.*/.zip of MVTec AD or VisA; extracted safely
           (see `maskjax.data.archives`) into `cache_dir`, then read as above.
  tfds     ArrayRecord written by `maskjax.data.tfds_builders`; `data_dir` is the
           TFDS data dir, `tfds_name` the builder ("maskjax_mvtec" default).
  multi    `data_dir` holds several datasets in sub-directories (each MVTec or
           VisA layout, detected by `split_csv/1cls.csv`); categories are named
           "<subdir>/<category>", e.g. "mvtec/bottle", "visa/candle".
`data_dir == ""` uses the demo data (`maskjax.data.demo.demo_root(cache_dir)`).

`config.input.categories` holds names or shell-style globs ("*", "mvtec/*",
"visa/c*"); a pattern matching no category is a `ConfigError` naming the key.

Bad input. Every selected file is checked when the splits are loaded (header,
mode, end marker, mask pairing, mask size; see `maskjax.data.images`):
unreadable/corrupt/truncated files, non-image files, unusual image modes
(16-bit, alpha, palette; accepted with `convert_unusual_images=True`), a
missing mask for a defective image, an extra mask without an image and a mask
whose size differs from its image's. By default all problems are collected and
raised together as one `DataError` naming every file. With
`skip_bad_files=True` the affected images are dropped and counted in the log
(one summary line with counts per problem kind). A category left with an empty
train or test split is always an error (skipping it would silently change what
is evaluated), as is an unknown category.

Validation: a seeded `val_fraction` of each category's training normals (at
least one image when the fraction is > 0 and the category has >= 2 training
images; at least one image always stays in train). `train_on_val=True` trains
on the validation normals too (the papers train on every normal). Records are
sorted, so the result depends only on the files and the seed.
"""
from __future__ import annotations

import collections
import concurrent.futures
import csv
import errno
import fnmatch
import os
import zlib
from typing import NamedTuple

import numpy as np
from absl import logging

from maskjax.data import images
from maskjax.data.records import Record, Splits
from maskjax.errors import ConfigError, DataError

FORMATS = ("mvtec", "visa", "folder", "archive", "tfds", "multi")
MISSING_MASK = "missing_mask"
DANGLING_LINK = "dangling_link"
LINK_LOOP = "link_loop"
EXTRA_MASK = "extra_mask"
MASK_SIZE = "mask_size"
BAD_CSV = "bad_csv_row"
_MAX_LISTED = 40


class Problem(NamedTuple):
  kind: str      # e.g. "truncated", "missing_mask" (see maskjax.data.images for image kinds)
  path: str      # the file at fault
  message: str   # what is wrong and what would be right

  def __str__(self) -> str:
    return f"{self.path}: {self.message}"


class _Raw(NamedTuple):
  path: str
  mask_path: str | None
  label: int
  category: str
  defect: str
  split: str   # "train" | "test"


def _is_hidden(name: str) -> bool:
  return name.startswith(".") or name in ("Thumbs.db", "desktop.ini")


def _link_problem(path: str) -> Problem | None:
  """A Problem when `path` is a symbolic link that leads nowhere (or in a circle)."""
  if not os.path.islink(path) or os.path.exists(path):
    return None
  try:
    os.stat(path)
  except OSError as e:
    if e.errno == errno.ELOOP:
      return Problem(LINK_LOOP, path, "symbolic link loop (the link leads back to itself); "
                     "replace it with the file it should point to")
  return Problem(DANGLING_LINK, path, f"dangling symbolic link to {os.readlink(path)!r} "
                 "(the target does not exist)")


def _files(d: str, problems: list[Problem] | None = None) -> list[str]:
  """Sorted regular files of `d`. Broken links are listed too (so they count
  as files of the dataset) and reported in `problems`."""
  out = []
  for f in os.listdir(d):
    p = os.path.join(d, f)
    if _is_hidden(f):
      continue
    bad = _link_problem(p)
    if bad is not None:
      if problems is not None:
        problems.append(bad)
      out.append(p)
    elif os.path.isfile(p):
      out.append(p)
  return sorted(out)


def _stem(path: str) -> str:
  return os.path.splitext(os.path.basename(path))[0]


# ----------------------------------------------------------------------------
# category listing
# ----------------------------------------------------------------------------
class _Cat(NamedTuple):
  fmt: str      # "mvtec" | "visa" | "folder"
  root: str
  native: str   # name inside its dataset


def _mvtec_categories(root: str, prefix: str = "") -> dict[str, _Cat]:
  out = {}
  for name in sorted(os.listdir(root)):
    if not _is_hidden(name) and os.path.isdir(os.path.join(root, name, "train")):
      out[prefix + name] = _Cat("mvtec", root, name)
  return out


_VISA_CSV = os.path.join("split_csv", "1cls.csv")


def _read_visa_csv(root: str, problems: list[Problem]) -> list[dict]:
  path = os.path.join(root, _VISA_CSV)
  try:
    with open(path, newline="") as f:
      rows = list(csv.DictReader(f))
  except OSError as e:
    raise DataError(f"{path}: cannot read the VisA split file ({e.strerror or e})") from e
  need = {"object", "split", "label", "image", "mask"}
  if not rows or not need <= set(rows[0]):
    raise DataError(f"{path}: expected a header with columns {sorted(need)}, "
                    f"got {sorted(rows[0]) if rows else 'an empty file'}")
  good = []
  for i, row in enumerate(rows, start=2):
    if row["split"] not in ("train", "test") or row["label"] not in ("normal", "anomaly"):
      problems.append(Problem(BAD_CSV, path, f"line {i}: split must be train|test and label "
                              f"normal|anomaly, got {row['split']!r}, {row['label']!r}"))
      continue
    good.append(row)
  return good


def _visa_categories(root: str, prefix: str = "") -> dict[str, _Cat]:
  rows = _read_visa_csv(root, [])
  return {prefix + n: _Cat("visa", root, n) for n in sorted({r["object"] for r in rows})}


def _is_visa(root: str) -> bool:
  return os.path.isfile(os.path.join(root, _VISA_CSV))


def _detect_root(d: str) -> tuple[str, str]:
  """(format, root) of an extracted archive: the dir itself or a single child."""
  for cand in [d] + [os.path.join(d, c) for c in sorted(os.listdir(d))
                     if os.path.isdir(os.path.join(d, c)) and not _is_hidden(c)]:
    if _is_visa(cand):
      return "visa", cand
    if _mvtec_categories(cand):
      return "mvtec", cand
  raise DataError(f"{d}: the archive holds neither an MVTec AD layout "
                  "(<category>/train/good) nor a VisA download (split_csv/1cls.csv)")


def _resolve_root(input_cfg) -> tuple[str, str]:
  fmt = input_cfg.format
  if fmt not in FORMATS:
    raise ConfigError(f"config.input.format={fmt!r} is not one of {FORMATS}")
  data_dir = input_cfg.data_dir
  if not data_dir:
    if fmt not in ("mvtec", "multi"):
      raise ConfigError(f"config.input.data_dir is empty (the demo data) but "
                        f"config.input.format={fmt!r}; the demo data is in MVTec layout")
    from maskjax.data import demo
    return "mvtec", demo.demo_root(input_cfg.cache_dir, input_cfg.demo_source)
  data_dir = os.path.expanduser(data_dir)
  if fmt == "archive":
    from maskjax.data import archives
    if not archives.is_archive(data_dir):
      raise DataError(f"{data_dir}: config.input.format='archive' needs a file ending in "
                      f"{', '.join(archives.ARCHIVE_SUFFIXES)}")
    return _detect_root(archives.extract(data_dir, input_cfg.cache_dir))
  if fmt != "folder" and not os.path.isdir(data_dir):
    raise DataError(f"{data_dir}: config.input.data_dir does not exist or is not a directory")
  return fmt, data_dir


def list_categories(input_cfg) -> dict[str, _Cat]:
  """All categories the configured dataset offers (before globbing)."""
  fmt, root = _resolve_root(input_cfg)
  if fmt == "mvtec":
    return _mvtec_categories(root)
  if fmt == "visa":
    return _visa_categories(root)
  if fmt == "folder":
    name = input_cfg.folder_category or (
        os.path.basename(os.path.normpath(root)) if root else "folder")
    return {name: _Cat("folder", root, name)}
  if fmt == "multi":
    out = {}
    for sub in sorted(os.listdir(root)):
      d = os.path.join(root, sub)
      if _is_hidden(sub) or not os.path.isdir(d):
        continue
      out.update(_visa_categories(d, sub + "/") if _is_visa(d) else _mvtec_categories(d, sub + "/"))
    return out
  raise ConfigError(f"config.input.format={fmt!r} has no category listing")  # pragma: no cover


def select_categories(patterns, available: list[str], where: str) -> list[str]:
  """Sorted names matching any pattern; ConfigError for a pattern matching none."""
  if isinstance(patterns, str):
    patterns = (patterns,)
  chosen = set()
  for p in patterns:
    hits = [n for n in available if fnmatch.fnmatchcase(n, p)]
    if not hits:
      raise ConfigError(f"config.input.categories: {p!r} matches no category in {where} "
                        f"(available: {', '.join(available) or 'none'})")
    chosen.update(hits)
  return sorted(chosen)


# ----------------------------------------------------------------------------
# scanning one category
# ----------------------------------------------------------------------------
def _scan_mvtec(cat: _Cat, name: str, problems: list[Problem]) -> list[_Raw]:
  cdir = os.path.join(cat.root, cat.native)
  out = []
  train_dir = os.path.join(cdir, "train", "good")
  if os.path.isdir(train_dir):
    out += [_Raw(p, None, 0, name, "good", "train") for p in _files(train_dir, problems)]
  test_dir, gt_dir = os.path.join(cdir, "test"), os.path.join(cdir, "ground_truth")
  masks: dict[tuple[str, str], str] = {}
  if os.path.isdir(gt_dir):
    for defect in sorted(os.listdir(gt_dir)):
      d = os.path.join(gt_dir, defect)
      if os.path.isdir(d) and not _is_hidden(defect):
        for p in _files(d, problems):
          s = _stem(p)
          masks[(defect, s[:-5] if s.endswith("_mask") else s)] = p
  used = set()
  if os.path.isdir(test_dir):
    for defect in sorted(os.listdir(test_dir)):
      d = os.path.join(test_dir, defect)
      if not os.path.isdir(d) or _is_hidden(defect):
        continue
      for p in _files(d, problems):
        if defect == "good":
          out.append(_Raw(p, None, 0, name, "good", "test"))
          continue
        key = (defect, _stem(p))
        m = masks.get(key)
        if m is None:
          problems.append(Problem(MISSING_MASK, p, "defective test image without a mask; expected "
                                  f"{os.path.join(gt_dir, defect, _stem(p) + '_mask.png')}"))
        used.add(key)
        out.append(_Raw(p, m, 1, name, defect, "test"))
  for key, m in sorted(masks.items()):
    if key not in used:
      problems.append(Problem(EXTRA_MASK, m, "mask without a test image; expected "
                              f"{os.path.join(test_dir, key[0], key[1])}.<png|jpg>"))
  return out


def _scan_visa(cat: _Cat, name: str, problems: list[Problem], cache: dict) -> list[_Raw]:
  if cat.root not in cache:
    cache[cat.root] = _read_visa_csv(cat.root, problems)
  out, used_masks = [], set()
  for row in cache[cat.root]:
    if row["object"] != cat.native:
      continue
    img = os.path.join(cat.root, row["image"])
    label = int(row["label"] == "anomaly")
    mask = None
    if label:
      mrel = (row["mask"] or "").strip()
      mask = os.path.join(cat.root, mrel) if mrel else None
      if mask is None or not os.path.isfile(mask):
        problems.append(Problem(MISSING_MASK, img, "anomalous image without a mask; "
                                f"1cls.csv names {mrel or 'no mask'!r}"))
        mask = None
      else:
        used_masks.add(os.path.normpath(mask))
    if not os.path.isfile(img):
      problems.append(_link_problem(img) or
                      Problem(images.CORRUPT, img, "listed in split_csv/1cls.csv but missing"))
    out.append(_Raw(img, mask, label, name, "anomaly" if label else "good", row["split"]))
  mdir = os.path.join(cat.root, cat.native, "Data", "Masks", "Anomaly")
  if os.path.isdir(mdir):
    for m in _files(mdir):
      if os.path.normpath(m) not in used_masks:
        problems.append(Problem(EXTRA_MASK, m, "mask not referenced by any anomalous image "
                                "in split_csv/1cls.csv"))
  return out


def _scan_folder(input_cfg, cat: _Cat, name: str, seed: int, problems: list[Problem]) -> list[_Raw]:
  def rel(key):
    v = getattr(input_cfg, key)
    if v and not os.path.isabs(v) and cat.root:
      v = os.path.join(cat.root, v)
    return os.path.expanduser(v) if v else ""
  normal_dir, abnormal_dir, mask_dir = rel("normal_dir"), rel("abnormal_dir"), rel("mask_dir")
  test_normal_dir = rel("folder_normal_test_dir")
  for key, d in (("normal_dir", normal_dir), ("abnormal_dir", abnormal_dir)):
    if not d or not os.path.isdir(d):
      raise ConfigError(f"config.input.{key}={d!r}: the folder format needs an existing directory")
  normals = _files(normal_dir, problems)
  out = []
  if test_normal_dir:
    out += [_Raw(p, None, 0, name, "good", "train") for p in normals]
    out += [_Raw(p, None, 0, name, "good", "test") for p in _files(test_normal_dir, problems)]
  else:
    frac = float(input_cfg.folder_test_normal_fraction)
    rng = np.random.default_rng([seed, zlib.crc32(name.encode()), 1])
    n_test = int(round(frac * len(normals)))
    test_idx = set(rng.permutation(len(normals))[:n_test].tolist())
    out += [_Raw(p, None, 0, name, "good", "test" if i in test_idx else "train")
            for i, p in enumerate(normals)]
  masks: dict[tuple[str, str], str] = {}
  if mask_dir:
    if not os.path.isdir(mask_dir):
      raise ConfigError(f"config.input.mask_dir={mask_dir!r} is not a directory")
    for dirpath, _, fnames in sorted(os.walk(mask_dir)):
      sub = os.path.relpath(dirpath, mask_dir)
      for f in sorted(fnames):
        bad = _link_problem(os.path.join(dirpath, f))
        if bad is not None:
          problems.append(bad)
        elif not _is_hidden(f):
          s = _stem(f)
          masks[("" if sub == "." else sub, s[:-5] if s.endswith("_mask") else s)] = os.path.join(dirpath, f)
  abn = [("", p) for p in _files(abnormal_dir, problems)]
  for sub in sorted(os.listdir(abnormal_dir)):
    if os.path.isdir(os.path.join(abnormal_dir, sub)) and not _is_hidden(sub):
      abn += [(sub, p) for p in _files(os.path.join(abnormal_dir, sub), problems)]
  used = set()
  for sub, p in abn:
    m = None
    if mask_dir:
      for key in ((sub, _stem(p)), ("", _stem(p))):
        if key in masks:
          m = masks[key]
          used.add(key)
          break
      else:
        problems.append(Problem(MISSING_MASK, p, f"anomalous image without a mask in {mask_dir} "
                                f"(expected {_stem(p)}.png or {_stem(p)}_mask.png)"))
    out.append(_Raw(p, m, 1, name, sub or "anomaly", "test"))
  for key, m in sorted(masks.items()):
    if key not in used:
      problems.append(Problem(EXTRA_MASK, m, f"mask without an anomalous image in {abnormal_dir}"))
  return out


def _readable(path: str) -> bool:
  return path.startswith("tfds://") or os.path.isfile(path)


def _check_files(raws: list[_Raw], full: bool, problems_by_path: dict[str, list[Problem]],
                 binary_masks: dict[str, bool]) -> None:
  """Inspect every image and mask (threads: PIL and file reads release the GIL).
  `binary_masks[category]`: masks must hold only 0 and one defect value."""
  def one(r: _Raw) -> list[Problem]:
    probs = []
    info, ps = images.inspect_file(r.path, full=full)
    probs += [Problem(k, r.path, m) for k, m in ps]
    if r.mask_path and _readable(r.mask_path):
      minfo, mps = images.inspect_file(r.mask_path, full=full, is_mask=True,
                                       binary_mask=binary_masks.get(r.category, True))
      probs += [Problem(k, r.mask_path, "mask: " + m) for k, m in mps]
      if info and minfo and (info.width, info.height) != (minfo.width, minfo.height):
        probs.append(Problem(MASK_SIZE, r.mask_path,
                             f"mask is {minfo.width}x{minfo.height} but its image {r.path} is "
                             f"{info.width}x{info.height}; they must have the same size"))
    return probs
  with concurrent.futures.ThreadPoolExecutor(8) as ex:
    for r, probs in zip(raws, ex.map(one, raws)):
      for p in probs:
        problems_by_path.setdefault(r.path, []).append(p)


def _scan_tfds(input_cfg, patterns) -> tuple[list[str], list[_Raw]]:
  import tensorflow_datasets as tfds
  from maskjax.data import tfds_builders  # noqa: F401
  data_dir = os.path.expanduser(input_cfg.data_dir)
  name = input_cfg.tfds_name
  raws = []
  for split in ("train", "test"):
    try:
      src = tfds.data_source(name, data_dir=data_dir, split=split)
    except Exception as e:  # noqa: BLE001
      raise DataError(f"{data_dir}: cannot open TFDS dataset {name!r} split {split!r} ({e}); "
                      "build it with maskjax.data.tfds_builders.build(...)") from e
    for i in range(len(src)):
      ex = src[i]
      cat = ex["category"].decode() if isinstance(ex["category"], bytes) else str(ex["category"])
      defect = ex["defect"].decode() if isinstance(ex["defect"], bytes) else str(ex["defect"])
      label = int(ex["label"])
      raws.append(_Raw(images.tfds_key(data_dir, name, split, i, "image"),
                       images.tfds_key(data_dir, name, split, i, "mask") if label else None,
                       label, cat, defect, split))
  available = sorted({r.category for r in raws})
  cats = select_categories(patterns, available, f"TFDS dataset {name} in {data_dir}")
  return cats, [r for r in raws if r.category in cats]


# ----------------------------------------------------------------------------
# public
# ----------------------------------------------------------------------------
def scan(input_cfg, seed: int = 0, *, full: bool = False, check_files: bool = True
         ) -> tuple[list[str], list[_Raw], list[Problem]]:
  """Selected categories, their raw train/test entries and every problem found.

  Does not raise for file problems (the caller decides); raises ConfigError /
  DataError for a wrong config or an unreadable dataset root.
  """
  patterns = input_cfg.categories
  problems: list[Problem] = []
  avail: dict[str, _Cat] = {}
  if input_cfg.format == "tfds":
    cats, raws = _scan_tfds(input_cfg, patterns)
  else:
    avail = list_categories(input_cfg)
    where = input_cfg.data_dir or "the demo data"
    cats = select_categories(patterns, sorted(avail), where)
    raws, visa_cache = [], {}
    for name in cats:
      cat = avail[name]
      if cat.fmt == "mvtec":
        raws += _scan_mvtec(cat, name, problems)
      elif cat.fmt == "visa":
        raws += _scan_visa(cat, name, problems, visa_cache)
      else:
        raws += _scan_folder(input_cfg, cat, name, seed, problems)
  if check_files:
    by_path: dict[str, list[Problem]] = {}
    _check_files([r for r in raws if _readable(r.path)], full, by_path,
                 _binary_masks(input_cfg, cats, avail))
    for r in raws:
      problems += by_path.get(r.path, [])
  return cats, raws, problems


MASK_VALUES = ("auto", "binary", "labels")


def _binary_masks(input_cfg, cats: list[str], avail: dict[str, _Cat]) -> dict[str, bool]:
  """Per category: must its masks be binary (`config.input.mask_values`)?"""
  mode = input_cfg.mask_values
  if mode not in MASK_VALUES:
    raise ConfigError(f"config.input.mask_values={mode!r} is not one of {', '.join(MASK_VALUES)}")
  if mode != "auto":
    return {c: mode == "binary" for c in cats}
  return {c: not (c in avail and avail[c].fmt == "visa") for c in cats}


def _raise_problems(problems: list[Problem], where: str) -> None:
  lines = [f"  {p}" for p in problems[:_MAX_LISTED]]
  if len(problems) > _MAX_LISTED:
    lines.append(f"  ... and {len(problems) - _MAX_LISTED} more")
  raise DataError(f"{len(problems)} problem(s) in dataset {where}:\n" + "\n".join(lines) +
                  "\nFix the files, list them all with `python -m maskjax.data.check <root>`, or set "
                  "config.input.skip_bad_files=True to skip and count them.")


def load_splits(input_cfg, seed: int) -> Splits:
  """Read the configured dataset into train / val / test `Record`s (see module doc)."""
  cats, raws, problems = scan(input_cfg, seed)
  if input_cfg.convert_unusual_images:
    problems = [p for p in problems if p.kind not in images.UNUSUAL_KINDS]
  where = input_cfg.data_dir or "(demo data)"
  if problems:
    if not input_cfg.skip_bad_files:
      _raise_problems(problems, where)
    bad = {p.path for p in problems}
    before = len(raws)
    # A record is dropped when its image or its mask is at fault.
    raws = [r for r in raws if r.path not in bad and (r.mask_path is None or r.mask_path not in bad)]
    counts = collections.Counter(p.kind for p in problems)
    for p in problems:
      logging.info("skipped bad file %s", p)
    logging.warning("data: skipped %d of %d images in %s because of %d problem(s): %s",
                    before - len(raws), before, where, len(problems),
                    ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
  cat_id = {c: i for i, c in enumerate(cats)}
  val_fraction = float(input_cfg.val_fraction)
  if not 0.0 <= val_fraction < 1.0:
    raise ConfigError(f"config.input.val_fraction={val_fraction} must be in [0, 1)")
  train, val, test = [], [], []
  for c in cats:
    tr = sorted((r for r in raws if r.category == c and r.split == "train"), key=lambda r: r.path)
    te = sorted((r for r in raws if r.category == c and r.split == "test"),
                key=lambda r: (r.defect, r.path))
    if not tr or not te:
      empty = "train" if not tr else "test"
      raise DataError(f"{where}: category {c!r} has an empty {empty} split"
                      f"{' after skipping bad files' if problems else ''}; a category needs "
                      "training normals and test images")
    if val_fraction > 0 and len(tr) < 2:
      raise DataError(f"{where}: category {c!r} has {len(tr)} training image"
                      f"{' after skipping bad files' if problems else ''}; at least 2 are "
                      "needed (one to train on, one held out to fit the decision threshold, "
                      f"config.input.val_fraction={val_fraction})")
    n_val = 0
    if val_fraction > 0 and len(tr) >= 2:
      n_val = min(max(1, int(round(val_fraction * len(tr)))), len(tr) - 1)
    rng = np.random.default_rng([seed, zlib.crc32(c.encode())])
    val_idx = set(rng.permutation(len(tr))[:n_val].tolist())
    def rec(r: _Raw, split: str) -> Record:
      return Record(r.path, r.mask_path, r.label, r.category, cat_id[c], r.defect, split)
    train += [rec(r, "train") for i, r in enumerate(tr)
              if i not in val_idx or input_cfg.train_on_val]
    val += [rec(r, "val") for i, r in enumerate(tr) if i in val_idx]
    test += [rec(r, "test") for r in te]
  return Splits(categories=list(cats), train=train, val=val, test=test)
