"""Check a dataset directory and list every problem at once.

    python -m maskjax.data.check <root> [--format mvtec|visa|folder|archive|multi]
        [--categories 'glob,...'] [--normal_dir D --abnormal_dir D --mask_dir D]

Decodes every image and mask fully (unlike training, which reads headers and
end markers only) and reports corrupt, truncated and non-image files, unusual
modes (16-bit, alpha, palette), missing and extra masks, masks of another size,
non-binary masks, dangling symbolic links and link loops, and empty splits.
Exit status: 0 clean, 1 problems found, 2 could not check (unusable arguments,
dataset root or archive; the reason in one line).
"""
from __future__ import annotations

import argparse
import collections
import sys

from maskjax.data import sources
from maskjax.errors import UserError


def check(input_cfg) -> list[sources.Problem]:
  """Every problem of the dataset `input_cfg` describes (full decode)."""
  cats, raws, problems = sources.scan(input_cfg, 0, full=True)
  for c in cats:
    for split in ("train", "test"):
      if not any(r.category == c and r.split == split for r in raws):
        problems.append(sources.Problem("empty_split", c, f"category {c!r} has no {split} images"))
  return problems


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m maskjax.data.check", description=__doc__.split("\n")[0])
  p.add_argument("root")
  p.add_argument("--format", default="", help="mvtec | visa | folder | archive | multi "
                 "(default: visa when split_csv/1cls.csv exists, archive for archive files, else mvtec)")
  p.add_argument("--categories", default="*", help="comma-separated names or globs")
  p.add_argument("--normal_dir", default="")
  p.add_argument("--abnormal_dir", default="")
  p.add_argument("--mask_dir", default="")
  p.add_argument("--mask_values", default="auto", choices=("auto", "binary", "labels"),
                 help="binary: masks hold 0 and one defect value; labels: any non-zero value "
                 "is a defect; auto: labels for VisA, binary otherwise")
  args = p.parse_args(argv)
  fmt = args.format
  if not fmt:
    from maskjax.data import archives
    fmt = ("archive" if archives.is_archive(args.root) else
           "visa" if sources._is_visa(args.root) else "mvtec")
  from maskjax.config_base import base_config
  cfg = base_config().input  # every input key, the training defaults where no flag sets one
  cfg.update({"format": fmt, "data_dir": args.root, "categories": tuple(args.categories.split(",")),
              "normal_dir": args.normal_dir, "abnormal_dir": args.abnormal_dir,
              "mask_dir": args.mask_dir, "mask_values": args.mask_values})
  try:
    problems = check(cfg)
  except UserError as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2
  except Exception as e:  # noqa: BLE001 - exit 1 means "problems found", never "crashed"
    print(f"error: could not check {args.root}: {type(e).__name__}: {e}", file=sys.stderr)
    return 2
  for prob in problems:
    print(f"{prob.kind:16s} {prob}")
  if problems:
    counts = collections.Counter(q.kind for q in problems)
    print(f"{len(problems)} problem(s): " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    return 1
  print(f"{args.root}: no problems found")
  return 0


if __name__ == "__main__":
  sys.exit(main())
