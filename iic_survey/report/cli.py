"""``python -m iic_survey report``: the catalog report from the command line.

:func:`cli` parses the arguments, picks where the example cutouts come from (by default the
image archive recorded in the catalog's ``_run.json``) and calls
:func:`iic_survey.report.sections.write_report`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

from iic_survey.output.staging import run_args
from iic_survey.report.config import ReportConfig, StampSource
from iic_survey.report.examples import archive_stamps
from iic_survey.report.sections import write_report

logger = logging.getLogger(__name__)
_DESCRIPTION = (
    "A look at a classification catalog: sky maps, confidence, example cutouts, and truth metrics."
)


def cli(argv: Sequence[str] | None = None, stamps: StampSource | None = None) -> int:
    """``python -m iic_survey report CATALOG [--out-dir DIR] [--truth PATH] [--images SPEC] ...``.

    The example cutouts are cut from ``--images``, by default the image archive the catalog was
    classified from (recorded in its ``_run.json``); ``--no-cutouts`` skips them. An archive
    that cannot be reached costs the grids, never the rest of the report.
    """
    parser = argparse.ArgumentParser(prog="iic_survey report", description=_DESCRIPTION)
    parser.add_argument("catalog", help="catalog path or URL")
    parser.add_argument("--out-dir", help="where to write (default: CATALOG/report if local)")
    parser.add_argument("--truth", help="Parquet or CSV with cntr and class (e.g. truth.parquet)")
    parser.add_argument("--map-order", type=int, default=ReportConfig.map_order)
    parser.add_argument("--examples", type=int, default=ReportConfig.n_examples)
    parser.add_argument("--dpi", type=int, default=ReportConfig.dpi)
    cut = parser.add_argument_group("example cutouts")
    cut.add_argument(
        "--images",
        help="image archive: irsa, s3, s3://..., https://... or a local directory "
        "(default: the one the catalog was classified from)",
    )
    cut.add_argument("--model-dir", help="take the RGB settings from this model directory")
    cut.add_argument("--endpoint-url", help="S3 endpoint for an s3:// image archive")
    cut.add_argument("--no-cutouts", action="store_true", help="skip the example cutout grids")
    args = parser.parse_args(argv)
    out_dir = args.out_dir
    if out_dir is None:
        if "://" in args.catalog and not args.catalog.startswith("file://"):
            parser.error("--out-dir is required for a remote catalog")
        out_dir = str(Path(args.catalog.removeprefix("file://")) / "report")
    config = ReportConfig(map_order=args.map_order, n_examples=args.examples, dpi=args.dpi)
    stamps, reason = _example_stamps(args, stamps)
    config = dataclasses.replace(config, no_stamps_reason=reason)
    path = write_report(args.catalog, out_dir, args.truth, stamps=stamps, config=config)
    logger.info("report: %s", path)
    return 0


def _example_stamps(
    args: argparse.Namespace, stamps: StampSource | None
) -> tuple[StampSource | None, str]:
    """The stamp source for the example grids, and what the report says if there is none."""
    reason = "No image source was given"
    if stamps is None and args.no_cutouts:
        reason = "--no-cutouts was given"
    elif stamps is None:
        spec = args.images or run_args(args.catalog).get("images")
        if not spec:
            reason = "The catalog records no image archive and --images was not given"
        else:
            try:
                stamps = archive_stamps(
                    spec, model_dir=args.model_dir, endpoint_url=args.endpoint_url
                )
            except (OSError, ValueError) as err:
                logger.warning("no example cutouts: %s", err)
                reason = f"The image archive could not be used (`{err}`)"
    return stamps, reason
