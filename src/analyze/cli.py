"""`python -m src.analyze SWEEP [SWEEP ...]`: answers from sweep folders, needing only their CSV and YAML files."""
from __future__ import annotations

import argparse
import sys

from .record import read_all
from .tables import summary
from ..errors import UserError, exit_with


def positive(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number >= 1")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.analyze", description=__doc__.split("\n")[0])
    parser.add_argument("sweeps", nargs="+", help="sweep folders (holding trials.csv) or trials.csv files")
    parser.add_argument("--top", type=positive, default=5, help="leaderboard size (default 5)")
    parser.add_argument("--by", help="group every table by this parameter, e.g. model.activation")
    parser.add_argument("--format", choices=("text", "markdown", "csv"), default="text")
    parser.add_argument("--plots", action="store_true", help="write the PNG plots into each sweep folder")
    parser.add_argument("--report", action="store_true", help="write plots, report.html and report.md")
    args = parser.parse_args(argv)
    try:
        records = read_all(args.sweeps)
        if args.by and any(args.by not in r.trials for r in records):
            params = sorted({p for r in records for p in r.params})
            raise UserError(f"--by {args.by}: no such column; parameters: {', '.join(params)}")
        print(summary(records, args.top, args.by, args.format))
        if args.plots or args.report:
            from . import plots, report

            for record in records:
                written = plots.write_all(record)
                if args.report:
                    written += report.write(record, written)
                print(f"wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    except UserError as e:
        exit_with(e)
    return 0
