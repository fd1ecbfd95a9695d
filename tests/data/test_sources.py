from __future__ import annotations

import io
import os
import shutil
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from maskjax.data import demo, images, sources
from maskjax.errors import ConfigError, DataError

from conftest import SMALL, cfg


def test_mvtec_splits(small_mvtec):
  s = sources.load_splits(cfg(data_dir=small_mvtec, val_fraction=0.25), seed=0)
  assert s.categories == ["fabric", "pill"]
  c = s.counts()
  assert c["pill"] == {"train": 6, "val": 2, "test_good": 3, "test_defect": 6}
  assert {r.category_id for r in s.train if r.category == "pill"} == {1}
  assert not {r.path for r in s.train} & {r.path for r in s.val}
  assert all(r.split == "val" and r.label == 0 for r in s.val)
  assert all((r.mask_path is None) == (r.label == 0) for r in s.test)
  again = sources.load_splits(cfg(data_dir=small_mvtec, val_fraction=0.25), seed=0)
  assert again == s
  other = sources.load_splits(cfg(data_dir=small_mvtec, val_fraction=0.25), seed=1)
  assert {r.path for r in other.val} != {r.path for r in s.val}


def test_train_on_val_trains_on_every_normal(small_mvtec):
  held = sources.load_splits(cfg(data_dir=small_mvtec, val_fraction=0.25), seed=0)
  s = sources.load_splits(cfg(data_dir=small_mvtec, val_fraction=0.25, train_on_val=True), seed=0)
  assert s.counts()["pill"] == {"train": 8, "val": 2, "test_good": 3, "test_defect": 6}
  assert {r.path for r in s.train} == {r.path for r in held.train} | {r.path for r in held.val}
  assert [r.path for r in s.val] == [r.path for r in held.val]  # same threshold images
  assert all(r.split == "train" for r in s.train)


def _png(path, arr, mode=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(arr, mode=mode).save(path)


def test_masks_paired_by_stem_not_order(tmp_path):
  root = str(tmp_path)
  _png(f"{root}/obj/train/good/0.png", np.zeros((16, 16, 3), np.uint8))
  # names whose sorted orders disagree between images and masks
  for k, (img_name, mask_name) in enumerate([("b", "b_mask"), ("a10", "a10_mask"), ("a9", "a9_mask")]):
    m = np.zeros((16, 16), np.uint8)
    m[: k + 1] = 255  # k+1 rows identify the pair
    _png(f"{root}/obj/test/cut/{img_name}.png", np.full((16, 16, 3), k, np.uint8))
    _png(f"{root}/obj/ground_truth/cut/{mask_name}.png", m)
  s = sources.load_splits(cfg(data_dir=root, val_fraction=0.0), 0)
  for r in s.test:
    k = int(np.asarray(Image.open(r.path))[0, 0, 0])
    assert images.load_mask(r.mask_path, 16).sum() == 16 * (k + 1)
    assert os.path.basename(r.mask_path) == os.path.basename(r.path)[:-4] + "_mask.png"


def test_visa_csv_and_binarised_masks(small_multi):
  root = os.path.join(small_multi, "visa")
  s = sources.load_splits(cfg(data_dir=root, format="visa", val_fraction=0.0), 0)
  assert s.categories == ["tiles", "washer"]
  assert s.counts()["washer"] == {"train": 8, "val": 0, "test_good": 3, "test_defect": 6}
  r = next(r for r in s.test if r.label == 1)
  raw = np.asarray(Image.open(r.mask_path))
  assert raw.max() < 10 and raw.max() > 0  # stored as small non-zero values
  m = images.load_mask(r.mask_path, raw.shape[0])
  np.testing.assert_array_equal(m, (raw != 0).astype(np.float32))


def test_multi_dataset_globs(small_multi):
  s = sources.load_splits(cfg(data_dir=small_multi, format="multi",
                              categories=("mvtec/*", "visa/w*")), 0)
  assert s.categories == ["mvtec/fabric", "mvtec/pill", "visa/washer"]
  ids = {(r.category, r.category_id) for r in s.train + s.test}
  assert ids == {("mvtec/fabric", 0), ("mvtec/pill", 1), ("visa/washer", 2)}


def test_unknown_category_names_the_key(small_mvtec):
  with pytest.raises(ConfigError, match=r"config.input.categories: 'bottle'.*fabric, pill"):
    sources.load_splits(cfg(data_dir=small_mvtec, categories=("pill", "bottle")), 0)


def test_folder_format(small_mvtec):
  p = os.path.join(small_mvtec, "pill")
  # normal / abnormal (one sub-directory per defect kind) / mask directories
  s_dir = os.path.join(os.path.dirname(small_mvtec), "folder_pill")
  if not os.path.isdir(s_dir):
    shutil.copytree(os.path.join(p, "train", "good"), os.path.join(s_dir, "ok"))
    for d in ("scratch", "stain", "missing"):
      shutil.copytree(os.path.join(p, "test", d), os.path.join(s_dir, "bad", d))
      shutil.copytree(os.path.join(p, "ground_truth", d), os.path.join(s_dir, "gt", d))
  c = cfg(format="folder", data_dir=s_dir, normal_dir="ok", abnormal_dir="bad", mask_dir="gt",
          val_fraction=0.0, folder_category="pill")
  s = sources.load_splits(c, 0)
  assert s.categories == ["pill"]
  assert s.counts()["pill"] == {"train": 6, "val": 0, "test_good": 2, "test_defect": 6}
  assert all(r.mask_path and os.path.basename(r.mask_path).startswith(
      os.path.basename(r.path)[:-4]) for r in s.test if r.label)


def test_archive_tar_and_zip(small_mvtec, tmp_path):
  tar = str(tmp_path / "mvtec.tar.gz")
  with tarfile.open(tar, "w:gz") as tf:
    tf.add(os.path.join(small_mvtec, "pill"), arcname="mvtec_ad/pill")
  s = sources.load_splits(cfg(format="archive", data_dir=tar, cache_dir=str(tmp_path / "c")), 0)
  assert s.categories == ["pill"] and len(s.test) == 9
  zp = str(tmp_path / "mvtec.zip")
  with zipfile.ZipFile(zp, "w") as zf:
    for d, _, fs in os.walk(os.path.join(small_mvtec, "fabric")):
      for f in fs:
        full = os.path.join(d, f)
        zf.write(full, os.path.relpath(full, small_mvtec))
  s = sources.load_splits(cfg(format="archive", data_dir=zp, cache_dir=str(tmp_path / "c")), 0)
  assert s.categories == ["fabric"]


def _tar_with(path, member: tarfile.TarInfo, data=b"x"):
  with tarfile.open(path, "w") as tf:
    if member.isfile():
      member.size = len(data)
      tf.addfile(member, io.BytesIO(data))
    else:
      tf.addfile(member)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink", "zip"])
def test_archive_path_traversal_rejected(tmp_path, kind):
  arc = str(tmp_path / ("evil.zip" if kind == "zip" else "evil.tar"))
  if kind == "zip":
    with zipfile.ZipFile(arc, "w") as zf:
      zf.writestr("../../evil.txt", b"x")
  elif kind in ("dotdot", "absolute"):
    _tar_with(arc, tarfile.TarInfo("a/../../evil.txt" if kind == "dotdot" else "/tmp/evil.txt"))
  else:
    ti = tarfile.TarInfo("a/link")
    ti.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
    ti.linkname = "../../../etc/passwd" if kind == "symlink" else "/etc/passwd"
    _tar_with(arc, ti)
  with pytest.raises(DataError, match="evil|link"):
    sources.load_splits(cfg(format="archive", data_dir=arc, cache_dir=str(tmp_path / "c")), 0)
  assert not os.path.exists(str(tmp_path / "evil.txt"))
  assert not os.path.exists(os.path.join(str(tmp_path / "c"), "evil.txt"))
