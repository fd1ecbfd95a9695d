from __future__ import annotations

import filecmp
import os

import numpy as np
from PIL import Image

from maskjax.data import demo


def _all_files(root):
  return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
  kw = dict(image_size=32, categories=("tiles", "washer"), num_train=3, num_test_good=2,
            num_test_defect=3)
  a, b, c = (str(tmp_path / n) for n in "abc")
  demo.generate(a, seed=3, **kw)
  demo.generate(b, seed=3, **kw)
  demo.generate(c, seed=4, **kw)
  files = _all_files(a)
  assert files == _all_files(b) == _all_files(c)
  _, mismatch, errors = filecmp.cmpfiles(a, b, files, shallow=False)
  assert not mismatch and not errors
  _, mismatch, _ = filecmp.cmpfiles(a, c, files, shallow=False)
  assert len(mismatch) > len(files) // 2


def test_default_counts_kinds_and_masks(tmp_path):
  assert len(demo.DEMO_CATEGORIES) >= 4
  kinds = set()
  for cat in ("fabric", "washer"):  # one texture, one object at full default size
    root = demo.generate(str(tmp_path), categories=(cat,))
    cdir = os.path.join(root, cat)
    assert len(os.listdir(os.path.join(cdir, "train", "good"))) >= 64
    assert len(os.listdir(os.path.join(cdir, "test", "good"))) >= 20
    defects = [d for d in os.listdir(os.path.join(cdir, "test")) if d != "good"]
    kinds.update(defects)
    n_def = 0
    sizes = []
    for d in defects:
      for f in os.listdir(os.path.join(cdir, "test", d)):
        n_def += 1
        img = Image.open(os.path.join(cdir, "test", d, f))
        assert img.size == (128, 128) and img.mode == "RGB"
        m = np.asarray(Image.open(os.path.join(cdir, "ground_truth", d, f[:-4] + "_mask.png")))
        assert set(np.unique(m)) <= {0, 255}
        sizes.append(int((m > 0).sum()))
    assert n_def >= 20
    assert min(sizes) > 0 and max(sizes) > 4 * min(sizes)  # varied size, never empty
  assert len(kinds) >= 3


def test_defects_visible_and_normals_vary():
  good0, _ = demo.render("pill", 0, "test", 0)
  good1, _ = demo.render("pill", 0, "test", 1)
  bad, mask = demo.render("pill", 0, "test", 0, "stain")
  m = mask > 0
  assert np.abs(good0.astype(int) - good1.astype(int)).mean() > 1  # natural variation
  # inside the defect the colour departs clearly from a normal's
  diff = np.abs(bad.astype(float) - good0.astype(float)).mean(-1)
  assert diff[m].mean() > 3 * diff[~m].mean()


def test_demo_root_is_generated_once(tmp_path):
  r1 = demo.demo_root(str(tmp_path))
  assert os.path.isfile(os.path.join(r1, "COMPLETE"))
  stamp = os.path.getmtime(os.path.join(r1, "COMPLETE"))
  r2 = demo.demo_root(str(tmp_path))
  assert r1 == r2 and os.path.getmtime(os.path.join(r2, "COMPLETE")) == stamp
  assert sorted(d for d in os.listdir(r1) if d != "COMPLETE") == sorted(demo.DEMO_CATEGORIES)
  assert not [d for d in os.listdir(str(tmp_path)) if d.startswith(".demo")]  # no temp left
