"""Method registry: `config.method.name` -> Method subclass.

One table: the built-in methods by "module:Class" (each a package
`maskjax/methods/<name>/`, imported on first use so that importing maskjax
does not build every model); `register` adds a method defined elsewhere
(e.g. a test's toy method) to the same table.
"""
from __future__ import annotations

import importlib

from maskjax.errors import ConfigError

from maskjax.methods.base import DataInfo, Duration, Method, PretrainedWeights, Stage  # noqa: F401

#: name -> "module:Class" of the built-in methods
KNOWN_METHODS = {
    "riad": "maskjax.methods.riad:Riad",
    "ssm": "maskjax.methods.ssm:Ssm",
    "ear": "maskjax.methods.ear:Ear",
    "aca": "maskjax.methods.aca:Aca",
    "mala": "maskjax.methods.mala:Mala",
}

_REGISTRY: dict[str, object] = dict(KNOWN_METHODS)   # name -> class or "module:Class"


class UnknownMethodError(ConfigError):
  pass


def register(cls):
  """Class decorator for a method defined outside maskjax: `@register class
  Toy(Method): name = "toy"`."""
  if not cls.name:
    raise ValueError(f"{cls} has no name")
  if cls.name in KNOWN_METHODS:
    raise ValueError(f"method name {cls.name!r} is a built-in method's")
  _REGISTRY[cls.name] = cls
  return cls


def get_method_class(name: str):
  entry = _REGISTRY.get(name)
  if entry is None:
    raise UnknownMethodError(
        f"unknown method {name!r} (config.method.name); known methods: "
        + ", ".join(sorted(_REGISTRY)))
  if isinstance(entry, str):
    module, cls_name = entry.split(":")
    entry = getattr(importlib.import_module(module), cls_name)
    if entry.name != name:
      raise RuntimeError(f"{module}:{cls_name}.name is {entry.name!r}, registered as {name!r}")
    _REGISTRY[name] = entry
  return entry


def init_sources(config) -> dict[str, str]:
  """{module: checkpoint path, or "random init"} for the modules the method's
  paper starts from pretrained weights (`Method.pretrained`)."""
  cls = get_method_class(config.method.name)
  out = {}
  for p in cls.pretrained_modules(config):
    section, name = p.key.split(".")
    path = str(config[section][name])
    out[p.module] = path or "random init"
  return out


def check_pretrained(config) -> None:
  """Refuse, in one line, to train from random weights where the paper starts
  from pretrained ones, unless `config.model.allow_random_init`."""
  cls = get_method_class(config.method.name)
  if bool(config.model.allow_random_init):
    return
  for p in cls.pretrained_modules(config):
    section, name = p.key.split(".")
    if not str(config[section][name]):
      raise ConfigError(
          f"{cls.name}: the {p.module} starts from pretrained weights in the paper and "
          f"config.{p.key} is empty: download {p.source}, convert it with `{p.convert}` and "
          f"pass --config.{p.key}=OUT, or set --config.model.allow_random_init=True to train "
          "from random weights")


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
  source_size = int(config.input.source_size)
  if source_size > 0 and not cls.uses_source_image:
    raise ConfigError(
        f"config.input.source_size={source_size}: method {cls.name!r} does not read the "
        "source-resolution image (it would only be decoded and ignored); set it to 0")
  return cls(config, data)
