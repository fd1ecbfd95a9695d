"""`config.input.source_size`: the pipeline also delivers `image_source`, the
photo decoded once and resized to that side (PIL bilinear, like `image`),
in training and evaluation batches (padding rows included); 0 = no such key
and the batches of before."""
from __future__ import annotations

import os as _os
import sys as _sys

_sys.path.insert(0, _os.path.join(_os.path.dirname(__file__), ".."))
import stage_helpers  # noqa: E402

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from maskjax.data import images, pipeline, sources  # noqa: E402
from maskjax.errors import ConfigError  # noqa: E402

from conftest import cfg  # noqa: E402

PHOTO = 96   # side of the files on disk
SIZE = 32    # input.image_size
SOURCE = 64  # input.source_size


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> str:
  """MVTec layout, 96 px noise photos (detail that a 32 px image loses):
  5 training normals, one good and one defective test image."""
  return stage_helpers.write_counts_dataset(tmp_path_factory.mktemp("photos"), {"a": 5},
                                            size=PHOTO)


def _pil(path: str, size: int) -> np.ndarray:
  """Independent reference: PIL's bilinear resize of the file, / 255."""
  with Image.open(path) as img:
    arr = np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR), np.float64)
  return arr / 255.0


def _splits(root, **kw):
  return sources.load_splits(cfg(data_dir=root, val_fraction=0.0, **kw), 0)


def test_train_batches_carry_the_photo_at_source_size(photos):
  splits = _splits(photos)
  recs = splits.train
  refs = {r.path: (_pil(r.path, SIZE), _pil(r.path, SOURCE)) for r in recs}
  ds = pipeline.train_dataset(cfg(source_size=SOURCE), recs, global_batch_size=len(recs), seed=0)
  b = next(iter(ds))
  assert b["image_source"].shape == (len(recs), SOURCE, SOURCE, 3)
  assert b["image_source"].dtype == np.float32 and b["image"].shape == (len(recs), SIZE, SIZE, 3)
  seen = []
  for img, src in zip(b["image"], b["image_source"]):
    # which file this row is: its 32 px image equals one file's PIL resize
    path = min(refs, key=lambda p: np.abs(img - refs[p][0]).max())
    assert np.abs(img - refs[path][0]).max() < 1e-6
    np.testing.assert_allclose(src, refs[path][1], rtol=0, atol=1e-6)
    seen.append(path)
  assert sorted(seen) == sorted(refs)            # one epoch: every record once
  # the source is the photo resized, not the 32 px image upsampled
  up = np.asarray(Image.fromarray((refs[seen[0]][0] * 255).round().astype(np.uint8))
                  .resize((SOURCE, SOURCE), Image.BILINEAR), np.float64) / 255
  assert np.abs(b["image_source"][0] - up).mean() > 0.05


def test_eval_batches_carry_it_with_zero_padding_rows(photos):
  splits = _splits(photos)
  recs = splits.test                              # 2 records
  batches = list(pipeline.eval_batches(cfg(source_size=SOURCE), recs, global_batch_size=3))
  assert len(batches) == 1
  b = batches[0]
  assert b["image_source"].shape == (3, SOURCE, SOURCE, 3)
  assert list(b["valid"]) == [True, True, False] and list(b["index"]) == [0, 1, -1]
  for i, r in enumerate(recs):
    np.testing.assert_allclose(b["image_source"][i], _pil(r.path, SOURCE), rtol=0, atol=1e-6)
    np.testing.assert_allclose(b["image"][i], _pil(r.path, SIZE), rtol=0, atol=1e-6)
  assert not b["image_source"][2].any() and b["image_source"].dtype == np.float32
  assert b["mask"][1].any()                       # the defective one keeps its mask at 32 px
  # grain stacks the padding row and the real ones into one array of one shape
  assert b["image"].shape == (3, SIZE, SIZE, 3)


def test_off_by_default_and_the_same_batches_as_before(photos):
  splits = _splits(photos)
  assert cfg().source_size == 0
  off = next(iter(pipeline.eval_batches(cfg(), splits.test, global_batch_size=3)))
  on = next(iter(pipeline.eval_batches(cfg(source_size=SOURCE), splits.test,
                                       global_batch_size=3)))
  assert "image_source" not in off
  assert sorted(on) == sorted(list(off) + ["image_source"])
  for k in off:                                   # the other keys do not change
    np.testing.assert_array_equal(off[k], on[k])
  t_off = next(iter(pipeline.train_dataset(cfg(), splits.train, global_batch_size=5, seed=3)))
  t_on = next(iter(pipeline.train_dataset(cfg(source_size=SOURCE), splits.train,
                                          global_batch_size=5, seed=3)))
  assert "image_source" not in t_off
  for k in t_off:                                 # same order, same images
    np.testing.assert_array_equal(t_off[k], t_on[k])


def test_load_image_sizes_is_load_image_at_each_size(photos, tmp_path):
  path = _splits(photos).train[0].path
  a, b = images.load_image_sizes(path, (SIZE, SOURCE))
  np.testing.assert_array_equal(a, images.load_image(path, SIZE))
  np.testing.assert_array_equal(b, images.load_image(path, SOURCE))
  # 16-bit files take the float path
  p16 = str(tmp_path / "sixteen.png")
  Image.fromarray((np.arange(40 * 40).reshape(40, 40) * 40).astype(np.uint16)).save(p16)
  a, b = images.load_image_sizes(p16, (SIZE, 20), convert_unusual=True)
  np.testing.assert_array_equal(a, images.load_image(p16, SIZE, convert_unusual=True))
  np.testing.assert_array_equal(b, images.load_image(p16, 20, convert_unusual=True))


@pytest.mark.parametrize("value", [-1, 1.5, True, "512"])
def test_bad_values_name_the_key(value):
  with pytest.raises(ConfigError, match="config.input.source_size"):
    pipeline.source_size(ml_collections.ConfigDict({"source_size": value}))
  assert pipeline.source_size(cfg(source_size=7)) == 7
