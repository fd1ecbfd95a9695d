"""Every packaged config and variant builds its method, resolves its stages and
describes itself with attribute reads only: a key the method reads but the
config lacks fails here, not in a user's run."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import stage_helpers  # noqa: E402

from maskjax import configs  # noqa: E402

VARIANTS = [(n, v) for n in ("riad", "ssm", "ear", "aca", "mala")
            for v in configs.load_module(configs.resolve(n)).VARIANTS]


@pytest.mark.parametrize("name,variant", VARIANTS)
def test_config_builds_its_method(name, variant):
  c = configs.get_config(f"{name}:{variant}")
  if variant == "per_category":
    c.input.categories = ("bottle",)
  if name == "mala":  # no DTD here; the refusal without it: tests/methods/test_mala_recipe.py
    c.method.builtin_textures = True
  method = stage_helpers.build(c, num_train=12)
  stages = stage_helpers.stages(method)
  assert stages and all(s.steps > 0 for s in stages)
  assert isinstance(method.describe(), dict)


def test_source_size_is_refused_by_methods_that_ignore_it():
  """`input.source_size` > 0 only for a method that reads `image_source` (ACA);
  any other method would decode it and ignore it: one ConfigError naming the key."""
  from maskjax.errors import ConfigError
  for name in ("riad", "ssm", "ear", "mala"):
    c = configs.get_config(f"{name}:demo")
    c.input.source_size = 128
    with pytest.raises(ConfigError, match="config.input.source_size=128"):
      stage_helpers.build(c)
  c = configs.get_config("aca:demo")
  c.input.source_size = 128
  assert stage_helpers.build(c).name == "aca"
