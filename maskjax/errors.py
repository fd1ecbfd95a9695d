"""Errors that are the user's to fix.

`maskjax.main` prints any `UserError` as one line (no traceback) and exits
with status 2. Raise them with a message that names the file, key or value at
fault and what would be right.
"""
from __future__ import annotations


class UserError(Exception):
  """Base class: bad input, bad config, bad workdir."""


class ConfigError(UserError):
  """A config key or value is wrong (message names the key)."""


class DataError(UserError):
  """A dataset file or directory is wrong (message names the file)."""


class WorkdirError(UserError):
  """The workdir holds something incompatible (another config's run, ...)."""


class CheckpointError(UserError):
  """A checkpoint cannot be read or does not match the architecture."""


class NonFiniteLossError(UserError):
  """Training produced NaN/Inf; message names the step and the loss term."""
