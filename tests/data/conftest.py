"""Small demo datasets shared by the data tests (32 px, few images)."""
from __future__ import annotations

import os
import shutil

import pytest

from maskjax.data import demo

SMALL = dict(image_size=32, num_train=8, num_test_good=3, num_test_defect=6)


@pytest.fixture(scope="session")
def small_mvtec(tmp_path_factory) -> str:
  root = str(tmp_path_factory.mktemp("mvtec"))
  demo.generate(root, seed=0, categories=("fabric", "pill"), **SMALL)
  return root


@pytest.fixture(scope="session")
def small_multi(tmp_path_factory) -> str:
  root = str(tmp_path_factory.mktemp("multi"))
  demo.generate_multi(root, seed=0, **SMALL)
  return root


@pytest.fixture
def pill_copy(small_mvtec, tmp_path) -> str:
  """A writable copy of the small 'pill' category in MVTec layout."""
  root = str(tmp_path / "ds")
  shutil.copytree(os.path.join(small_mvtec, "pill"), os.path.join(root, "pill"))
  return root


def cfg(**kw):
  from maskjax.config_base import base_config
  c = base_config().input
  c.image_size = 32
  for k, v in kw.items():
    c[k] = v
  return c
