"""TFDS builders for MVTec AD and VisA writing ArrayRecord, read without TensorFlow.

The builders take the user's download as *manual* input (nothing is
downloaded) and store each example as:
  image     the original encoded file bytes (PNG / JPEG), `Tensor((), object)`
  mask      the mask file's bytes, b"" for normals
  label     int32, 0 normal / 1 anomalous
  category  text, e.g. "bottle"
  defect    text, "good" for normals ("anomaly" for VisA)
  filename  text, the image path relative to the manual dir
Encoded bytes (not `tfds.features.Image`) keep TensorFlow out: writing with
`file_format="array_record"` and reading with `tfds.data_source` both work
without it. Splits: "train" (training normals) and "test"; the validation
split is carved from "train" by `maskjax.data.sources.load_splits`
(`config.input.format = "tfds"`, `config.input.tfds_name = "maskjax_mvtec"` or
"maskjax_visa", `config.input.data_dir` = the TFDS data dir).

Files are checked like every other source (`load_splits`' rules); a build
fails with the list of problems rather than writing a broken dataset.

    from maskjax.data import tfds_builders
    tfds_builders.build("mvtec", manual_dir="/data/mvtec_anomaly_detection",
                        data_dir="/data/tfds")
"""
from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from maskjax.errors import ConfigError

_MANUAL = """\
Download the dataset yourself and point the manual dir at the extracted
directory: for MVTec AD the folder holding bottle/, cable/, ...; for VisA the
folder holding split_csv/1cls.csv and candle/, capsules/, ...
"""


def _features():
  return tfds.features.FeaturesDict({
      "image": tfds.features.Tensor(shape=(), dtype=np.object_),
      "mask": tfds.features.Tensor(shape=(), dtype=np.object_),
      "label": tfds.features.Scalar(dtype=np.int32),
      "category": tfds.features.Text(),
      "defect": tfds.features.Text(),
      "filename": tfds.features.Text(),
  })


class _Base(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Encoded image and mask bytes; ArrayRecord."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL
  _FORMAT = ""
  # Nothing is downloaded: no URL checksum file to look up (looking it up
  # needs `importlib_resources`, which this environment need not have).
  url_infos = None

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description=f"{self._FORMAT} read from the "
                                 "user's download (manual dir).", features=_features())

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(str(dl_manager.manual_dir), "train"),
            "test": self._generate_examples(str(dl_manager.manual_dir), "test")}

  def _generate_examples(self, manual_dir: str, split: str):
    from maskjax.config_base import base_config
    from maskjax.data import sources
    cfg = base_config().input
    cfg.update({"format": self._FORMAT, "data_dir": manual_dir, "categories": ("*",),
                "val_fraction": 0.0})
    splits = sources.load_splits(cfg, 0)
    for r in (splits.train if split == "train" else splits.test):
      with open(r.path, "rb") as f:
        image = f.read()
      mask = b""
      if r.mask_path:
        with open(r.mask_path, "rb") as f:
          mask = f.read()
      rel = os.path.relpath(r.path, manual_dir)
      yield rel, {"image": image, "mask": mask, "label": r.label, "category": r.category,
                  "defect": r.defect, "filename": rel}


class MaskjaxMvtec(_Base):
  """MVTec AD (MVTec layout) -> ArrayRecord."""
  _FORMAT = "mvtec"


class MaskjaxVisa(_Base):
  """VisA (original download with split_csv/1cls.csv) -> ArrayRecord."""
  _FORMAT = "visa"


BUILDERS = {"mvtec": MaskjaxMvtec, "visa": MaskjaxVisa}


def build(fmt: str, manual_dir: str, data_dir: str) -> str:
  """Build the ArrayRecord dataset; returns the TFDS name to put in
  `config.input.tfds_name` (with `config.input.data_dir = data_dir`)."""
  if fmt not in BUILDERS:
    raise ConfigError(f"tfds builder format {fmt!r}: expected one of {sorted(BUILDERS)}")
  builder = BUILDERS[fmt](data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder.name
