"""The ``make-sky`` command line, and the options that build a synthetic sky's configuration.

:func:`add_sky_arguments` and :func:`config_from_args` are shared by ``python -m iic_survey
make-sky`` (:func:`cli`) and ``jobs/make_sky.py``, so both take the same options and refuse the
same bad ones; the sky itself is written by :func:`iic_survey.synthetic.skyfiles.write_sky`.
"""

from __future__ import annotations

import argparse
import logging

from iic_survey.synthetic import skyfiles, skyscale

log = logging.getLogger(__name__)


def add_sky_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options that build a :class:`~iic_survey.synthetic.skyfiles.SkyConfig`."""
    d = skyfiles.SkyConfig.__dataclass_fields__
    parser.add_argument("root", help="directory to write the sky into (new or empty)")
    parser.add_argument("--tiny", action="store_true", help="the 2,000-source test sky")
    parser.add_argument("--seed", type=int, default=d["seed"].default)
    parser.add_argument("--n-sources", type=int, default=d["n_sources"].default)
    parser.add_argument(
        "--field-size",
        type=float,
        default=d["field_size_deg"].default,
        help="side of each field in degrees",
    )
    parser.add_argument("--fields", help="field centres 'ra,dec;ra,dec;...' (default: 4 fields)")
    parser.add_argument("--bands", default="1,2,3", help="image bands, e.g. 1,2,3,4")
    parser.add_argument(
        "--no-artefacts",
        action="store_true",
        help="no saturated stars, NaN patches or halo detections",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a sky at ROOT")
    parser.add_argument(
        "--preset",
        choices=("demo", "sky-scale"),
        default="demo",
        help="demo: the fields above; sky-scale: all 12,288 AllWISE partitions at --scale of "
        "its density, the fields above (default: the tiny sky's) drawn with images",
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=skyscale.SkyScaleConfig.__dataclass_fields__["scale"].default,
        help="sky-scale: fraction of AllWISE's 747,634,026 rows (default 1e-4)",
    )


def write_from_args(args: argparse.Namespace) -> skyfiles.SkyManifest:
    """Write the sky that parsed :func:`add_sky_arguments` options describe."""
    if args.preset == "sky-scale":
        explicit = args.fields or args.n_sources != skyfiles.SkyConfig().n_sources
        imaged = config_from_args(args) if explicit else skyfiles.tiny_config(args.seed)
        config = skyscale.SkyScaleConfig(scale=args.scale, seed=args.seed, imaged=imaged)
        return skyscale.write_sky_scale(args.root, config, overwrite=args.overwrite)
    return skyfiles.write_sky(args.root, config_from_args(args), overwrite=args.overwrite)


def config_from_args(args: argparse.Namespace) -> skyfiles.SkyConfig:
    """The sky configuration that parsed :func:`add_sky_arguments` options describe."""
    if args.tiny:
        return skyfiles.tiny_config(args.seed)
    try:
        fields = (
            tuple(tuple(float(v) for v in f.split(",")) for f in args.fields.split(";") if f)
            if args.fields
            else skyfiles.DEFAULT_FIELDS
        )
        bands = tuple(int(b) for b in args.bands.split(",") if b)
    except ValueError as exc:
        raise ValueError(f"cannot parse --fields/--bands: {exc}") from exc
    if any(len(f) != 2 for f in fields):
        raise ValueError(f"--fields needs 'ra,dec' pairs separated by ';', got {args.fields!r}")
    return skyfiles.SkyConfig(
        seed=args.seed,
        n_sources=args.n_sources,
        fields=fields,  # type: ignore[arg-type]
        field_size_deg=args.field_size,
        bands=bands,
        artefacts=not args.no_artefacts,
    )


def cli(argv: list[str] | None = None) -> int:
    """``python -m iic_survey make-sky ROOT [--tiny] [--seed N] [--n-sources N] ...``."""
    # The help text is the summary of what make-sky writes, as it was before the CLI moved here.
    description = (skyfiles.__doc__ or "").split("\n")[0]
    parser = argparse.ArgumentParser(prog="iic_survey make-sky", description=description)
    add_sky_arguments(parser)
    args = parser.parse_args(argv)
    try:
        manifest = write_from_args(args)
    except (ValueError, FileExistsError) as exc:
        parser.error(str(exc))
    log.info(
        "sky %s: %d sources, %d order-5 pixels, %d tiles",
        manifest.root,
        manifest.n_sources,
        len(manifest.pixels),
        len(manifest.tiles),
    )
    return 0
