"""``python -m iic_survey <command>``: small tools around the catalog and the model.

Commands
--------
summary CATALOG            rows per class, outliers and quality flags of an output catalog
report CATALOG [...]       sky maps, confidence histograms, cutout grids (PNG + Markdown)
export CATALOG DEST [...]  a selection as FITS or VOTable, units, descriptions and UCDs kept
lookup CATALOG --cntr X .. --designation J..   sources by their AllWISE ids (the id index)
cutouts CATALOG --cntr X .. | --from-file F --out DIR   their W1/W2/W3 stamps and RGB images
model-info                 IICnet's parameter count and multiply-accumulates per image
make-sky ROOT [...]        write a synthetic WISE sky in the archive's formats
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable

import pandas as pd

from iic_survey.core.config import did_you_mean
from iic_survey.output import export as output_export
from iic_survey.output import reader
from iic_survey.report import cli
from iic_survey.report import cutouts as report_cutouts
from iic_survey.synthetic import cli as synthetic_cli


def _summary(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="iic_survey summary")
    parser.add_argument("catalog", help="path or URL of an output catalog")
    args = parser.parse_args(argv)
    print(reader.summary_text(args.catalog))
    return 0


def _report(argv: list[str]) -> int:
    return cli.cli(argv)


def _export(argv: list[str]) -> int:
    return output_export.cli(argv)


def _lookup(argv: list[str]) -> int:
    """Print the rows of the given ids; exit status 1 if any id is not in the catalog."""
    parser = argparse.ArgumentParser(
        prog="iic_survey lookup",
        description="Sources by AllWISE cntr or designation, through the catalog's id index "
        "(the index file and the partitions that hold them are read, nothing else).",
    )
    parser.add_argument("catalog", help="path or URL of an output catalog")
    parser.add_argument("--cntr", nargs="+", type=int, default=[], metavar="X")
    parser.add_argument("--designation", nargs="+", default=[], metavar="J...")
    parser.add_argument("--columns", help="comma-separated columns (default: all)")
    args = parser.parse_args(argv)
    if not args.cntr and not args.designation:
        parser.error("give --cntr and / or --designation")
    columns = args.columns.split(",") if args.columns else None
    if columns is not None:
        columns += [c for c in ("cntr", "designation") if c not in columns]
    rows = reader.read(args.catalog, columns, ids=[*args.cntr, *args.designation])
    missing = [f"cntr {c}" for c in args.cntr if c not in set(rows["cntr"])]
    missing += [f"designation {d}" for d in args.designation if d not in set(rows["designation"])]
    if len(rows):
        with pd.option_context("display.max_columns", None, "display.width", 200):
            print(rows.T.to_string(header=False) if len(rows) == 1 else rows.to_string())
    for m in missing:
        print(f"no source with {m} in {args.catalog}", file=sys.stderr)
    return 1 if missing else 0


def _cutouts(argv: list[str]) -> int:
    return report_cutouts.cli(argv)


def _model_info(argv: list[str]) -> int:
    # Imported by name when asked for: it loads torch, which the catalog commands do not need.
    size = importlib.import_module("iic_survey.model.size")
    return int(size.cli(argv))


def _make_sky(argv: list[str]) -> int:
    return synthetic_cli.cli(argv)


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "summary": _summary,
    "report": _report,
    "export": _export,
    "lookup": _lookup,
    "cutouts": _cutouts,
    "model-info": _model_info,
    "make-sky": _make_sky,
}


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a command; exit status 2 on an unknown one."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        hint = did_you_mean(command, COMMANDS)
        print(
            f"unknown command {command!r}{hint}; commands: {', '.join(COMMANDS)}", file=sys.stderr
        )
        return 2
    return COMMANDS[command](rest)


if __name__ == "__main__":
    sys.exit(main())
