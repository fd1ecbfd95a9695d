"""Each planted fault gives a DataError naming the file, or is skipped and counted."""
from __future__ import annotations

import logging
import os

import numpy as np
import pytest
from PIL import Image

from maskjax.data import check, images, sources
from maskjax.errors import ConfigError, DataError

from conftest import cfg

RGB = np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)


def _plant(root: str, fault: str) -> tuple[str, str]:
  """Plant one fault into the pill copy; returns (file at fault, expected words)."""
  c = os.path.join(root, "pill")
  good = os.path.join(c, "train", "good")
  if fault == "corrupt":
    p = os.path.join(good, "900.png")
    data = open(os.path.join(good, "000.png"), "rb").read()
    open(p, "wb").write(data[:16] + b"\x00" * 40 + data[56:])  # broken IHDR
    return p, "image"
  if fault == "truncated":
    p = os.path.join(good, "001.png")
    data = open(p, "rb").read()
    open(p, "wb").write(data[: len(data) // 2])
    return p, "truncated"
  if fault == "missing_mask":
    os.remove(os.path.join(c, "ground_truth", "stain", "000_mask.png"))
    return os.path.join(c, "test", "stain", "000.png"), "without a mask"
  if fault == "extra_mask":
    p = os.path.join(c, "ground_truth", "stain", "077_mask.png")
    Image.new("L", (32, 32)).save(p)
    return p, "mask without a test image"
  if fault == "mask_size":
    p = os.path.join(c, "ground_truth", "scratch", "000_mask.png")
    Image.new("L", (31, 32)).save(p)
    return p, "must have the same size"
  if fault == "16bit":
    p = os.path.join(good, "901.png")
    Image.fromarray(np.full((32, 32), 40000, np.uint16)).save(p)
    return p, "16-bit"
  if fault == "rgba":
    p = os.path.join(good, "902.png")
    Image.fromarray(np.dstack([RGB, np.full((16, 16), 128, np.uint8)]), "RGBA").save(p)
    return p, "alpha"
  if fault == "palette":
    p = os.path.join(good, "903.png")
    Image.fromarray(RGB).convert("P", palette=Image.ADAPTIVE, colors=8).save(p)
    return p, "palette"
  if fault == "non_image":
    p = os.path.join(good, "notes.txt")
    open(p, "w").write("hello")
    return p, "not an image"
  if fault == "text_as_png":
    p = os.path.join(good, "904.png")
    open(p, "w").write("hello")
    return p, "not a readable image"
  raise ValueError(fault)


FAULTS = ["corrupt", "truncated", "missing_mask", "extra_mask", "mask_size", "16bit", "rgba",
          "palette", "non_image", "text_as_png"]


@pytest.mark.parametrize("fault", FAULTS)
def test_fault_raises_naming_file(pill_copy, fault):
  path, words = _plant(pill_copy, fault)
  with pytest.raises(DataError) as e:
    sources.load_splits(cfg(data_dir=pill_copy), 0)
  assert path in str(e.value) and words in str(e.value)


@pytest.mark.parametrize("fault", FAULTS)
def test_fault_skipped_and_counted(pill_copy, fault, caplog):
  clean = sources.load_splits(cfg(data_dir=pill_copy, val_fraction=0.0), 0)
  path, _ = _plant(pill_copy, fault)
  with caplog.at_level(logging.WARNING):
    s = sources.load_splits(cfg(data_dir=pill_copy, val_fraction=0.0, skip_bad_files=True), 0)
  kind = {"corrupt": "not_an_image", "text_as_png": "not_an_image", "non_image": "not_an_image",
          "rgba": "alpha", "missing_mask": "missing_mask"}.get(fault, fault)
  assert f"{kind}=1" in caplog.text
  kept = {r.path for r in s.train + s.test}
  assert path not in kept
  lost = len(clean.train) + len(clean.test) - len(kept)
  assert lost == {"truncated": 1, "missing_mask": 1, "mask_size": 1}.get(fault, 0)


def test_unknown_category_and_empty_split(pill_copy):
  with pytest.raises(ConfigError, match="config.input.categories"):
    sources.load_splits(cfg(data_dir=pill_copy, categories=("pil?", "capsule")), 0)
  test_dir = os.path.join(pill_copy, "pill", "test")
  for d in os.listdir(test_dir):
    for f in os.listdir(os.path.join(test_dir, d)):
      os.remove(os.path.join(test_dir, d, f))
  for d in os.listdir(os.path.join(pill_copy, "pill", "ground_truth")):
    for f in os.listdir(os.path.join(pill_copy, "pill", "ground_truth", d)):
      os.remove(os.path.join(pill_copy, "pill", "ground_truth", d, f))
  with pytest.raises(DataError, match="'pill' has an empty test split"):
    sources.load_splits(cfg(data_dir=pill_copy, skip_bad_files=True), 0)


def test_convert_unusual_images_values(pill_copy):
  """Converted values against independent numpy computations."""
  p16, _ = _plant(pill_copy, "16bit")
  v = np.random.default_rng(0).integers(0, 65536, (32, 32)).astype(np.uint16)
  Image.fromarray(v).save(p16)
  with pytest.raises(DataError, match="16-bit"):
    images.load_image(p16, 32)
  np.testing.assert_allclose(images.load_image(p16, 32, convert_unusual=True),
                             np.repeat((v / 65535.0)[..., None], 3, -1), atol=1e-6)
  prgba, _ = _plant(pill_copy, "rgba")
  np.testing.assert_allclose(images.load_image(prgba, 16, convert_unusual=True), RGB / 255.0,
                             atol=1e-6)
  ppal, _ = _plant(pill_copy, "palette")
  pal_img = Image.open(ppal)
  lut = np.asarray(pal_img.getpalette(), np.float64).reshape(-1, 3)
  expect = lut[np.asarray(pal_img)] / 255.0
  np.testing.assert_allclose(images.load_image(ppal, 16, convert_unusual=True), expect, atol=1e-6)
  s = sources.load_splits(cfg(data_dir=pill_copy, convert_unusual_images=True), 0)
  assert p16 in {r.path for r in s.train + s.val}


def test_corrupt_pixel_data_fails_on_decode(pill_copy):
  """A PNG with a valid header but damaged pixel data: found by decoding."""
  p = os.path.join(pill_copy, "pill", "train", "good", "002.png")
  data = bytearray(open(p, "rb").read())
  i = data.index(b"IDAT") + 8
  data[i:i + 40] = b"\xff" * 40
  open(p, "wb").write(bytes(data))
  with pytest.raises(DataError, match="002.png"):
    images.load_image(p, 32)
  probs = check.check(cfg(data_dir=pill_copy))
  assert [q.path for q in probs] == [p] and probs[0].kind == "corrupt"


def test_check_cli_lists_every_problem(pill_copy, capsys):
  assert check.main([pill_copy]) == 0
  planted = [_plant(pill_copy, f)[0] for f in ("truncated", "extra_mask", "mask_size", "rgba",
                                               "non_image", "missing_mask")]
  assert check.main([pill_copy]) == 1
  out = capsys.readouterr().out
  for p in planted:
    assert p in out
  assert "6 problem(s)" in out
