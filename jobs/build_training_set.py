"""Build a labelled cutout set (Parquet) for training.

    python jobs/build_training_set.py                      # the synthetic sky's truth (offline)
    python jobs/build_training_set.py --source sdss --paper-counts --out s3://bucket/trainset

The synthetic default writes the demo sky under $IIC_SURVEY_HOME first if it is not there yet.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from iic_survey.core import paths
from iic_survey.synthetic import skyfiles
from iic_survey.training import labels


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="build_training_set",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--source",
        choices=("synthetic", "sdss"),
        default="synthetic",
        help="labels: the synthetic sky's truth table, or SDSS DR17 spectra x AllWISE",
    )
    p.add_argument(
        "--out",
        default=paths.default_training_set(),
        help="training set root, local or s3:// (default: %(default)s)",
    )
    p.add_argument(
        "--sky",
        default=paths.default_sky(),
        help="synthetic sky root (default: %(default)s; written if missing)",
    )
    p.add_argument("--catalog", default="", help="AllWISE catalog URL (default: per source)")
    p.add_argument(
        "--images",
        default="",
        help="image archive: irsa, s3, s3://bucket/prefix, https://..., or a local path",
    )
    count = p.add_mutually_exclusive_group()
    count.add_argument(
        "--per-class",
        type=int,
        default=None,
        help="sources per class (default: as many as the rarest class has)",
    )
    count.add_argument(
        "--paper-counts",
        action="store_true",
        help="the paper's Table 1 counts: 7,298 galaxies, 7,215 quasars, 7,223 stars",
    )
    p.add_argument("--match-radius", type=float, default=2.5, help="SDSS x AllWISE radius, arcsec")
    p.add_argument(
        "--split-block-order",
        type=int,
        default=None,
        help="deal whole HEALPix pixels of this order into splits (e.g. 8)",
    )
    p.add_argument(
        "--sdss-ra",
        type=float,
        nargs=2,
        default=(0.0, 360.0),
        metavar=("LO", "HI"),
        help="RA range of spectra to fetch, degrees",
    )
    p.add_argument("--sdss-stripe-deg", type=float, default=10.0, help="RA width of one query")
    p.add_argument("--chunk-rows", type=int, default=2048, help="rows per stamp batch / part file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing training set")
    return p


def _sky_ready(root: str) -> bool:
    """Whether the synthetic sky at ``root`` is there, writing the default sky if it is missing."""
    try:
        skyfiles.SkyManifest.load(root)
    except FileNotFoundError:
        if root != paths.default_sky():
            print(f"no synthetic sky at {root}", file=sys.stderr)
            return False
        logging.getLogger(__name__).info("writing the default synthetic sky to %s", root)
        skyfiles.write_sky(root, skyfiles.SkyConfig())
    return True


def main(argv: list[str] | None = None) -> int:
    """Build the training set; print its counts. Exit status 0 on success."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = labels.TrainingSetConfig.from_args(args)
    if config.source == "synthetic" and not _sky_ready(config.sky):
        return 2
    manifest = labels.build_training_set(config, args.out, overwrite=args.overwrite)
    summary = {
        "training_set": args.out,
        "counts": manifest["counts"],
        "dropped": manifest["dropped"],
    }
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
