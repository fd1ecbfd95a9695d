"""Method registry: `config.method.name` -> Method subclass.

Methods live in their own modules and are imported lazily so that importing
maskjax does not build every model.
"""
from __future__ import annotations

import importlib

from maskjax.errors import ConfigError

from maskjax.methods.base import DataInfo, Duration, Method, Stage  # noqa: F401

#: name -> module path (imported on first use)
KNOWN_METHODS = {
    "riad": "maskjax.methods.riad",
    "ssm": "maskjax.methods.ssm",
    "ear": "maskjax.methods.ear",
    "aca": "maskjax.methods.aca",
    "mala": "maskjax.methods.mala",
}

_REGISTRY: dict[str, type] = {}


class UnknownMethodError(ConfigError):
  pass


class MethodNotImplementedError(ConfigError):
  pass


def register(cls):
  """Class decorator: `@register class Riad(Method): name = "riad"`."""
  if not cls.name:
    raise ValueError(f"{cls} has no name")
  _REGISTRY[cls.name] = cls
  return cls


def get_method_class(name: str):
  if name in _REGISTRY:
    return _REGISTRY[name]
  if name not in KNOWN_METHODS:
    raise UnknownMethodError(
        f"unknown method {name!r} (config.method.name); known methods: "
        + ", ".join(sorted(KNOWN_METHODS)))
  if name not in _REGISTRY:
    try:
      importlib.import_module(KNOWN_METHODS[name])
    except ModuleNotFoundError as e:
      if e.name == KNOWN_METHODS[name]:
        raise MethodNotImplementedError(
            f"method {name!r} is not implemented yet in this version of maskjax") from None
      raise
  return _REGISTRY[name]


def build_method(config, data: DataInfo):
  """The method of `config.method.name` for a run on `data` (its `DataInfo`)."""
  cls = get_method_class(config.method.name)
  init_from = str(config.model.init_from) if "init_from" in config.model else ""
  if init_from and not cls.uses_init_from:
    raise ConfigError(
        f"config.model.init_from={init_from!r}: method {cls.name!r} has no pretrained part "
        "that reads it (it would be ignored); leave it empty"
        + ("; EAR's saliency ViT reads config.model.saliency_init_from"
           if "saliency_init_from" in config.model else ""))
  return cls(config, data)
