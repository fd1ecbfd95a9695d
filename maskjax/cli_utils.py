"""Small helpers shared by the command-line programs."""
from __future__ import annotations

import sys

HELP_FLAGS = ("--help", "-h", "--helpshort", "-?")


def maybe_print_help(doc: str, argv=None) -> None:
  """`--help` prints the program's usage and its flags and exits 0.

  absl's own --help exits with status 1, which reads as a failure to shells
  and CI; this prints the same information and exits 0.
  """
  argv = sys.argv if argv is None else argv
  if not any(a in HELP_FLAGS for a in argv[1:]):
    return
  from absl import flags
  print(doc.strip() + "\n")
  print("flags:\n")
  print(flags.FLAGS.main_module_help())
  sys.exit(0)
