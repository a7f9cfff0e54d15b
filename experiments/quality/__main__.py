"""The quality study on a synthetic sky (the long run; README.md in this folder).

    .venv/bin/python -m experiments.quality                              # print the sections
    .venv/bin/python -m experiments.quality --write-results   # also experiments/RESULTS.md
    .venv/bin/python -m experiments.quality --sky-sources 8000 --archs iicnet   # the quick form

A larger synthetic sky, its training set, a colour-cut baseline and gradient-boosted trees on
the catalog, then IICnet, fusion and colour-only trained by the package's own Ray Train loop on
the same split, each calibrated and reported on the same test split; it writes two sections,
"## Quality on the synthetic sky (experiments/quality)" and "## Training quality on the
synthetic sky". Results are also kept in ``<workdir>/quality.json``.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from benchmarks.results import EXPERIMENTS, write_section
from experiments.quality import report, study
from iic_survey.core import paths


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The study's command line."""
    parser = argparse.ArgumentParser(
        prog="python -m experiments.quality", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--workdir",
        default=str(paths.home() / "experiments" / "quality"),
        help="sky, training set, models (kept between runs; default <home>/experiments/quality)",
    )
    parser.add_argument("--sky-sources", type=int, default=27_000)
    parser.add_argument("--sky-seed", type=int, default=1)
    parser.add_argument("--field-size", type=float, default=0.7)
    parser.add_argument("--archs", nargs="+", default=["iicnet", "fusion", "colour"])
    parser.add_argument("--epochs", type=int, default=3, help="epochs per model")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lr-halve-epoch", type=int, default=8)
    parser.add_argument(
        "--widths", type=int, nargs=6, default=None, help="IICnet widths (default: paper-sized)"
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep models an earlier run trained with the same settings (named in the section)",
    )
    parser.add_argument(
        "--write-results", action="store_true", help="update experiments/RESULTS.md"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the study, print its sections, optionally write them."""
    args = parse(argv)
    res = study.quality(args)
    work = pathlib.Path(args.workdir)
    text = report.quality_section(res, work)
    print(text)
    goals = report.goals_section(res, work)
    print(goals)
    if args.write_results:
        write_section(report.QUALITY_MARK, text, EXPERIMENTS)
        if goals:
            write_section(report.GOALS_SECTION, goals, EXPERIMENTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
