"""Image and mask decoding (PIL) with errors that name the file.

Conventions:
  * `load_image` returns float32 [size, size, 3] in [0, 1]. Images are resized
    straight to a square (aspect ratio not kept, as the MVTec AD / VisA
    reference pipelines do) with PIL's bilinear filter, which antialiases when
    downscaling. Grayscale ("L") images are repeated to 3 channels.
    `load_image_sizes` decodes once and resizes the decoded photo to several
    sides (the pipeline's `image` and `image_source`, `config.input.source_size`).
  * `load_mask` returns float32 [size, size] in {0, 1}: any non-zero pixel (in
    any channel, alpha ignored) is a defect; resized with nearest neighbour.
    Masks with more than one non-zero value are reported when the dataset is
    loaded unless `config.input.mask_values='labels'` says they are label maps.

Image modes. 8-bit "L" and "RGB" are the normal case. 16-bit grayscale, images
with an alpha channel (RGBA / LA), palette ("P") images and other modes are
*unusual*: by default they are an error (`DataError` naming the file and its
mode), because silently converting them usually hides a data-preparation
mistake. With `convert_unusual=True` (config key
`config.input.convert_unusual_images`) they are converted instead:
  16-bit -> divided by 65535 (the full 16-bit range, never clipped to 8 bits),
  RGBA/LA -> the alpha channel is dropped (colours kept as stored, not
  composited), P -> the palette's RGB colours, other modes -> PIL's RGB
  conversion.
Masks of any mode are accepted (binarised as above).

Cheap checks (`inspect_file(full=False)`) read only the header and the file's
end marker (PNG IEND / JPEG EOI), so truncated files are found without decoding;
`full=True` decodes the whole image (used by `python -m maskjax.data.check`).
"""
from __future__ import annotations

import io
import os
import threading
from typing import NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from maskjax.errors import DataError

#: the one list of image files maskjax reads (datasets, predict inputs, textures)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_NORMAL_MODES = ("L", "RGB")
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")

# Problem kinds reported by `inspect_file` (also used as counters in logs).
NOT_AN_IMAGE = "not_an_image"
CORRUPT = "corrupt"
TRUNCATED = "truncated"
SIXTEEN_BIT = "16bit"
ALPHA = "alpha"
PALETTE = "palette"
UNSUPPORTED_MODE = "unsupported_mode"
NON_BINARY_MASK = "non_binary_mask"
UNUSUAL_KINDS = (SIXTEEN_BIT, ALPHA, PALETTE, UNSUPPORTED_MODE)


class ImageInfo(NamedTuple):
  width: int
  height: int
  mode: str


# ----------------------------------------------------------------------------
# reading bytes (files and tfds:// keys)
# ----------------------------------------------------------------------------
_TFDS_SOURCES: dict = {}
_TFDS_LOCK = threading.Lock()


def tfds_key(data_dir: str, name: str, split: str, index: int, field: str) -> str:
  """The `Record.path` of one field of one example written by our TFDS builders."""
  return f"tfds://{data_dir}::{name}::{split}::{index}::{field}"


def _tfds_source(data_dir: str, name: str, split: str):
  key = (data_dir, name, split)
  with _TFDS_LOCK:
    if key not in _TFDS_SOURCES:
      import tensorflow_datasets as tfds
      from maskjax.data import tfds_builders  # noqa: F401  (registers the builders)
      _TFDS_SOURCES[key] = tfds.data_source(name, data_dir=data_dir, split=split)
    return _TFDS_SOURCES[key]


def read_bytes(path: str) -> bytes:
  """Raw bytes of a file or of a `tfds://` field. Errors name the path."""
  if path.startswith("tfds://"):
    try:
      data_dir, name, split, index, field = path[len("tfds://"):].split("::")
      value = _tfds_source(data_dir, name, split)[int(index)][field]
    except Exception as e:  # noqa: BLE001
      raise DataError(f"{path}: cannot read the TFDS/ArrayRecord example ({e})") from e
    return bytes(value)
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError as e:
    raise DataError(f"{path}: cannot read file ({e.strerror or e})") from e


# ----------------------------------------------------------------------------
# checks
# ----------------------------------------------------------------------------
def _truncated(data: bytes) -> str | None:
  """A message when the bytes of a PNG/JPEG stop before the format's end marker."""
  if data[:8] == b"\x89PNG\r\n\x1a\n":
    # IEND chunk: length 0, type IEND, CRC -> the last 12 bytes.
    if b"IEND" not in data[-12:]:
      return "PNG file is truncated (no IEND chunk at the end)"
  elif data[:2] == b"\xff\xd8":
    if b"\xff\xd9" not in data[-16:]:
      return "JPEG file is truncated (no end-of-image marker)"
  return None


def mode_problem(mode: str) -> tuple[str, str] | None:
  """(kind, description) when an image mode is not 8-bit L/RGB, else None."""
  if mode in _NORMAL_MODES:
    return None
  if mode in _SIXTEEN_BIT:
    return SIXTEEN_BIT, f"16-bit image (mode {mode})"
  if mode in ("RGBA", "LA", "RGBa", "La", "PA"):
    return ALPHA, f"image with an alpha channel (mode {mode})"
  if mode == "P":
    return PALETTE, "palette image (mode P)"
  return UNSUPPORTED_MODE, f"unsupported image mode {mode}"


def inspect_file(path: str, *, full: bool = False, is_mask: bool = False,
                 binary_mask: bool = True) -> tuple[ImageInfo | None, list[tuple[str, str]]]:
  """Check one image/mask file without raising.

  Returns (info or None, [(kind, message), ...]). `full` decodes every pixel;
  otherwise only the header and the end marker are read. Unusual modes are
  reported for images only (`is_mask=False`). Masks are always decoded (they
  are small): with `binary_mask`, a mask holding values other than 0 and one
  defect value is reported (a gradient or compression noise would otherwise
  turn most pixels into "defect").
  """
  problems: list[tuple[str, str]] = []
  ext = os.path.splitext(path)[1].lower()
  if not path.startswith("tfds://") and ext not in IMAGE_EXTENSIONS:
    return None, [(NOT_AN_IMAGE, f"not an image file (extension {ext or 'none'!r}; "
                   f"expected one of {', '.join(IMAGE_EXTENSIONS)})")]
  try:
    data = read_bytes(path)
  except DataError as e:
    return None, [(CORRUPT, str(e).split(": ", 1)[-1])]
  if not data:
    return None, [(CORRUPT, "empty file (0 bytes)")]
  try:
    img = Image.open(io.BytesIO(data))
  except UnidentifiedImageError:
    return None, [(NOT_AN_IMAGE, "not a readable image (PIL cannot identify the format)")]
  except Exception as e:  # noqa: BLE001
    return None, [(CORRUPT, f"corrupt image header ({e})")]
  info = ImageInfo(img.width, img.height, img.mode)
  trunc = _truncated(data)
  if trunc:
    problems.append((TRUNCATED, trunc))
  elif full:
    try:
      img.load()
    except Exception as e:  # noqa: BLE001
      problems.append((CORRUPT, f"cannot decode image data ({e})"))
  if not is_mask:
    mp = mode_problem(img.mode)
    if mp:
      problems.append(mp)
  elif binary_mask and not trunc:
    try:
      values = np.unique(_mask_values(img))
    except Exception as e:  # noqa: BLE001
      problems.append((CORRUPT, f"cannot decode mask data ({e})"))
    else:
      if values.size > 2 or (values.size == 2 and values[0] != 0):
        shown = ", ".join(str(v) for v in values[:6]) + (", ..." if values.size > 6 else "")
        problems.append((NON_BINARY_MASK,
                         f"not a binary mask: {values.size} distinct values ({shown}), expected "
                         "0 and one defect value (MVTec AD: 0 and 255). Binarise the file, or "
                         "set config.input.mask_values='labels' if every non-zero value marks "
                         "a defect"))
  return info, problems


# ----------------------------------------------------------------------------
# decoding
# ----------------------------------------------------------------------------
def _open_decoded(path: str) -> Image.Image:
  data = read_bytes(path)
  trunc = _truncated(data)
  if trunc:
    raise DataError(f"{path}: {trunc}")
  try:
    img = Image.open(io.BytesIO(data))
    img.load()
  except UnidentifiedImageError as e:
    raise DataError(f"{path}: not a readable image (PIL cannot identify the format)") from e
  except Exception as e:  # noqa: BLE001
    raise DataError(f"{path}: corrupt image ({e})") from e
  return img


def _to_float_rgb(img: Image.Image, path: str, convert_unusual: bool) -> np.ndarray | Image.Image:
  """An 8-bit L/RGB PIL image, or a float32 [H,W,C] array for 16-bit data."""
  mp = mode_problem(img.mode)
  if mp is None:
    return img
  if not convert_unusual:
    raise DataError(f"{path}: {mp[1]}; expected 8-bit grayscale (L) or RGB. Convert the "
                    "file, or set config.input.convert_unusual_images=True to convert on "
                    "load, or config.input.skip_bad_files=True to skip it")
  kind = mp[0]
  if kind == SIXTEEN_BIT:
    arr = np.asarray(img, dtype=np.float32)
    arr = np.clip(arr / 65535.0, 0.0, 1.0)
    return arr[..., None]
  if img.mode in ("LA", "La"):
    return img.convert("L")
  return img.convert("RGB")  # RGBA: alpha dropped; P: palette colours; others


def resize_float(arr: np.ndarray, size: int) -> np.ndarray:
  """Float [H, W, C] -> [size, size, C], PIL bilinear per channel (no 8-bit rounding)."""
  chans = [np.asarray(Image.fromarray(arr[..., c], mode="F").resize((size, size), Image.BILINEAR))
           for c in range(arr.shape[-1])]
  return np.stack(chans, axis=-1).astype(np.float32)


def load_image(path: str, size: int, *, convert_unusual: bool = False) -> np.ndarray:
  """Decode and resize an image to float32 [size, size, 3] in [0, 1].

  Raises DataError naming the file for unreadable, truncated or corrupt files,
  and for unusual modes unless `convert_unusual` (see the module docstring).
  """
  return _resized(_to_float_rgb(_open_decoded(path), path, convert_unusual), size)


def load_image_sizes(path: str, sizes, *, convert_unusual: bool = False) -> list[np.ndarray]:
  """The image decoded once, then resized to each side in `sizes` as
  `load_image` resizes it (each from the decoded photo, never from another
  size): [float32 [s, s, 3] in [0, 1] for s in sizes]."""
  img = _to_float_rgb(_open_decoded(path), path, convert_unusual)
  return [_resized(img, int(s)) for s in sizes]


def _resized(img: np.ndarray | Image.Image, size: int) -> np.ndarray:
  """A decoded image (`_to_float_rgb`) -> float32 [size, size, 3] in [0, 1]
  (PIL bilinear, antialiased when shrinking)."""
  if isinstance(img, np.ndarray):
    out = resize_float(img, size)
  else:
    if img.size != (size, size):
      img = img.resize((size, size), Image.BILINEAR)
    out = np.asarray(img, dtype=np.float32) * (1.0 / 255.0)
    if out.ndim == 2:
      out = out[..., None]
  if out.shape[-1] == 1:
    out = np.repeat(out, 3, axis=-1)
  return np.ascontiguousarray(out, dtype=np.float32)


def _mask_values(img: Image.Image) -> np.ndarray:
  """[H, W] values of a mask: palette colours resolved, alpha dropped, the
  maximum over colour channels."""
  if img.mode == "P":
    img = img.convert("RGB")
  arr = np.asarray(img)
  if arr.ndim == 3:
    if img.mode in ("RGBA", "LA", "PA"):
      arr = arr[..., :-1]
    arr = arr.max(axis=-1)
  return arr


def load_mask(path: str, size: int) -> np.ndarray:
  """Decode a mask to float32 [size, size] in {0, 1} (non-zero = defect),
  resized with nearest neighbour. Whether a mask may hold several non-zero
  values is checked when the splits are loaded (`inspect_file`)."""
  arr = _mask_values(_open_decoded(path))
  binary = Image.fromarray(((arr != 0) * 255).astype(np.uint8), mode="L")
  if binary.size != (size, size):
    binary = binary.resize((size, size), Image.NEAREST)
  return (np.asarray(binary) > 127).astype(np.float32)
