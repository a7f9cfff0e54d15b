"""Classify AllWISE sources pixel by pixel into a HATS catalog (a Ray job).

    ray job submit --working-dir . -- python jobs/classify_sky.py --healpix-order 5 --all

With no ``--catalog`` the job uses the embedded synthetic sky under ``$IIC_SURVEY_HOME/sky``
(written on first use); the model defaults to ``$IIC_SURVEY_HOME/model`` (train it first with
``jobs/train.py``) and the output to ``$IIC_SURVEY_HOME/catalog``. A rerun resumes: finished
pixels are skipped; ``--overwrite`` starts again.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import ray

from iic_survey.core import paths
from iic_survey.inputs.storage import CatalogError
from iic_survey.output.staging import OutputError
from iic_survey.survey.config import PipelineConfig, PipelineError, add_arguments
from iic_survey.survey.run import run_pipeline
from iic_survey.synthetic import skyfiles

logger = logging.getLogger("classify_sky")


def build_parser() -> argparse.ArgumentParser:
    """The job's command line."""
    p = argparse.ArgumentParser(
        prog="classify_sky.py",
        description="Classify AllWISE sources (star / galaxy / quasar) into a HATS catalog.",
    )
    add_arguments(p)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _default_sky() -> str:
    """The embedded synthetic sky's root, written with the demo settings if missing."""
    root = paths.default_sky()
    try:
        skyfiles.SkyManifest.load(root)
    except FileNotFoundError:
        logger.info("writing the demo synthetic sky to %s (first use)", root)
        skyfiles.write_sky(root, skyfiles.SkyConfig())
    return root


def _catalog(spec: str | None) -> str:
    """The catalog URL: the default sky's, or a synthetic sky root's (given as its root)."""
    if spec is None:
        return skyfiles.catalog_url(_default_sky())
    if "://" not in spec and os.path.isfile(os.path.join(spec, "sky.json")):
        return skyfiles.catalog_url(spec)
    return spec


def _images(spec: str | None, catalog: str) -> str:
    """The images spec: ``local`` means the synthetic sky's archive that ``catalog`` belongs to."""
    if spec is None:
        spec = "s3" if catalog.startswith("s3://") else "local"
    if spec != "local":
        return spec
    prefix = skyfiles.CATALOG_PREFIX
    root = catalog[: -len(prefix)] if catalog.endswith(prefix) else None
    return skyfiles.images_url(root.rstrip("/") if root else _default_sky())


def _resolve(args: argparse.Namespace, model_dir: str) -> None:
    """Fill in the catalog, images, model, output and cutout mode left to defaults (in place)."""
    args.catalog = _catalog(args.catalog)
    args.images = _images(args.images, args.catalog)
    args.model = model_dir
    args.output = args.output or paths.default_catalog()
    remote = args.images == "irsa" or args.images.startswith("http")
    args.cutout_mode = args.cutout_mode or ("service" if remote else "tiles")


def main(argv: list[str] | None = None) -> int:
    """Run the job; returns the process exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    model_dir = args.model or paths.default_model()
    if not os.path.isfile(os.path.join(model_dir, "model.json")):
        print(
            f"error: no trained model at {model_dir} (model.json missing). Train one first:\n"
            f"  ray job submit --working-dir . -- python jobs/train.py\n"
            f"or pass --model DIR.",
            file=sys.stderr,
        )
        return 2
    _resolve(args, model_dir)
    try:
        config = PipelineConfig.from_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    started = not ray.is_initialized()
    if started:
        ray.init()  # under `ray job submit` this joins the job's cluster (RAY_ADDRESS)
    try:
        summary = run_pipeline(config)
    except (PipelineError, OutputError, CatalogError, OSError, ValueError) as exc:
        # Bad input (a missing column, a corrupt partition, a foreign or newer model directory,
        # weights that are not a plain state_dict) is named, not dumped as a traceback.
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        if started:
            ray.shutdown()
    print(summary.text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
