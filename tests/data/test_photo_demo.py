"""The realistic (photo) demo data: deterministic, exact masks, varied defects."""
from __future__ import annotations

import filecmp
import os

import numpy as np
from PIL import Image

from maskjax.data import demo, photo_demo


def _files(root):
  return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
  kw = dict(image_size=48, num_train=2, num_test_good=1, num_test_defect=4)
  a, b, c = (str(tmp_path / n) for n in "abc")
  photo_demo.generate(a, seed=5, **kw)
  photo_demo.generate(b, seed=5, **kw)
  photo_demo.generate(c, seed=6, **kw)
  files = _files(a)
  assert files == _files(b) == _files(c) and len(files) == 4 * (2 + 1 + 4 + 4)
  _, mismatch, errors = filecmp.cmpfiles(a, b, files, shallow=False)
  assert not mismatch and not errors
  _, mismatch, _ = filecmp.cmpfiles(a, c, files, shallow=False)
  assert len(mismatch) > len(files) // 2


def test_masks_are_exact_every_kind():
  """Outside the mask the defective image equals its normal byte for byte; inside,
  the defect changed the pixels clearly; masks are never empty and sizes vary."""
  sizes = []
  for cat in photo_demo.CATEGORIES:
    for kind in photo_demo.DEFECTS[cat]:
      for i in range(3):
        normal, img, mask = photo_demo.render_pair(cat, 0, "test", i, kind)
        assert mask.any()
        np.testing.assert_array_equal(img[~mask], normal[~mask])
        diff = np.abs(img.astype(int) - normal.astype(int)).max(-1)
        assert (diff[mask] > 0).mean() > 0.6, (cat, kind, i)
        sizes.append(int(mask.sum()))
        m8 = photo_demo.render(cat, 0, "test", i, kind)[1]
        np.testing.assert_array_equal(m8 > 0, mask)
        assert set(np.unique(m8)) <= {0, 255}
  assert min(sizes) >= 12 and max(sizes) > 10 * min(sizes)


def test_kinds_normals_vary_and_sources_are_installed_photos():
  kinds = {k for v in photo_demo.DEFECTS.values() for k in v}
  assert kinds >= {"scratch", "crack", "contamination", "hole", "missing", "extra", "colour"}
  assert set(photo_demo.TEXTURES) < set(photo_demo.CATEGORIES)
  for name in ("china", "flower"):
    p = photo_demo.photo_path(name)
    assert os.path.isfile(p) and "skimage" not in p
  for cat in photo_demo.CATEGORIES:
    a, _ = photo_demo.render(cat, 0, "train", 0)
    b, _ = photo_demo.render(cat, 0, "train", 1)
    assert a.shape == (128, 128, 3) and a.dtype == np.uint8
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 3  # pose / light / focus vary
    assert a.std() > 10  # a real photograph, not a flat field


def test_demo_source_selects_the_generator(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(photo_demo, "generate", lambda root, seed: calls.append("photos"))
  monkeypatch.setattr(demo, "generate", lambda root, seed: calls.append("synthetic"))
  r1 = demo.demo_root(str(tmp_path))
  r2 = demo.demo_root(str(tmp_path), "synthetic")
  assert calls == ["photos", "synthetic"]
  assert os.path.basename(r1) == f"demo-photos-{photo_demo.VERSION}-seed0"
  assert os.path.basename(r2) == "demo-v1-seed0" and r1 != r2
  import pytest
  from maskjax.errors import DataError
  with pytest.raises(DataError, match="demo_source"):
    demo.demo_root(str(tmp_path), "nope")


def test_written_layout(tmp_path):
  root = photo_demo.generate(str(tmp_path), categories=("pagoda",), num_train=1, num_test_good=1,
                             num_test_defect=4)
  for kind in photo_demo.DEFECTS["pagoda"]:
    img = Image.open(os.path.join(root, "pagoda", "test", kind, "000.png"))
    m = Image.open(os.path.join(root, "pagoda", "ground_truth", kind, "000_mask.png"))
    assert img.size == m.size == (128, 128)
