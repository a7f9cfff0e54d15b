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
import pickle
import sys

from iic_survey.core import paths

logger = logging.getLogger("classify_sky")

_SYNTHETIC_SUFFIX = "catalogs/p3as_psd/healpix_k5/wise-allwise.parquet"


def _cone(text: str) -> tuple[float, float, float]:
    try:
        ra, dec, r = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--cone wants RA,DEC,RADIUS in degrees, got {text!r}"
        ) from None
    return ra, dec, r


def build_parser() -> argparse.ArgumentParser:
    """The job's command line."""
    p = argparse.ArgumentParser(
        prog="classify_sky.py",
        description="Classify AllWISE sources (star / galaxy / quasar) into a HATS catalog.",
    )
    p.add_argument("--healpix-order", type=int, default=5, help="order of work/output pixels (0-8)")
    p.add_argument(
        "--catalog",
        help="AllWISE catalog root, or a synthetic sky's root (default: the embedded sky)",
    )
    p.add_argument(
        "--images",
        help="Atlas images: local (the synthetic sky's), s3, irsa, s3://..., https://... or a "
        "directory (default: local, or s3 for an s3:// catalog)",
    )
    p.add_argument("--model", help=f"model directory (default {paths.default_model()})")
    p.add_argument("--output", help=f"output catalog (default {paths.default_catalog()})")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--pixels", type=int, nargs="+", help="pixels at --healpix-order")
    sel.add_argument("--cone", type=_cone, help="RA,DEC,RADIUS in degrees: the pixels it overlaps")
    sel.add_argument("--all", action="store_true", help="every pixel of the catalog (the default)")
    p.add_argument("--limit", type=int, help="classify at most N pixels this run")
    p.add_argument("--overwrite", action="store_true", help="delete a previous output first")
    p.add_argument("--chunk-size", type=int, help="rows per chunk (default: fit the object store)")
    p.add_argument(
        "--model-batch-size",
        type=int,
        help="images per forward pass (default: 16 on CPU, 256 on GPU)",
    )
    p.add_argument("--inference-actors", type=int, help="inference actors (default: one per GPU)")
    p.add_argument("--num-gpus-per-actor", type=float, help="GPUs per actor (default 1 if any)")
    p.add_argument(
        "--cutout-mode",
        choices=("tiles", "service"),
        help="read whole tiles (default) or ask IBE per source (default for --images irsa)",
    )
    p.add_argument(
        "--service-timeout",
        type=float,
        default=30.0,
        help="seconds to wait for one IBE cutout (service mode) before retrying (default 30)",
    )
    p.add_argument("--confidence-threshold", type=float, help="outlier below this confidence")
    p.add_argument("--endpoint-url", help="S3 endpoint for s3:// URLs (a local S3 server)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _default_sky() -> str:
    """The embedded synthetic sky's root, written with the demo settings if missing."""
    from iic_survey.synthetic import sky as synthetic

    root = paths.default_sky()
    try:
        synthetic.SkyManifest.load(root)
    except FileNotFoundError:
        logger.info("writing the demo synthetic sky to %s (first use)", root)
        synthetic.write_sky(root, synthetic.SkyConfig())
    return root


def _catalog(spec: str | None) -> str:
    """The catalog URL: the default sky's, or a synthetic sky root's (given as its root)."""
    from iic_survey.synthetic import sky as synthetic

    if spec is None:
        return synthetic.catalog_url(_default_sky())
    if "://" not in spec and os.path.isfile(os.path.join(spec, "sky.json")):
        return synthetic.catalog_url(spec)
    return spec


def _images(spec: str | None, catalog: str) -> str:
    from iic_survey.synthetic import sky as synthetic

    if spec is None:
        spec = "s3" if catalog.startswith("s3://") else "local"
    if spec != "local":
        return spec
    root = catalog[: -len(_SYNTHETIC_SUFFIX)] if catalog.endswith(_SYNTHETIC_SUFFIX) else None
    return synthetic.images_url(root.rstrip("/") if root else _default_sky())


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

    import ray

    from iic_survey.inputs.storage import CatalogError
    from iic_survey.output.writer import OutputError
    from iic_survey.survey.config import PipelineConfig, PipelineError
    from iic_survey.survey.run import run_pipeline

    catalog = _catalog(args.catalog)
    images = _images(args.images, catalog)
    mode = args.cutout_mode or (
        "service" if images == "irsa" or images.startswith("http") else "tiles"
    )
    try:
        config = PipelineConfig(
            catalog=catalog,
            images=images,
            model_dir=model_dir,
            output=args.output or paths.default_catalog(),
            healpix_order=args.healpix_order,
            pixels=tuple(args.pixels) if args.pixels else None,
            cone=args.cone,
            limit=args.limit,
            overwrite=args.overwrite,
            chunk_size=args.chunk_size,
            model_batch_size=args.model_batch_size,
            inference_actors=args.inference_actors,
            num_gpus_per_actor=args.num_gpus_per_actor,
            cutout_mode=mode,
            service_timeout_s=args.service_timeout,
            confidence_threshold=args.confidence_threshold,
            endpoint_url=args.endpoint_url,
        )
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
    except pickle.UnpicklingError as exc:
        print(
            f"error: the model weights are not a plain state_dict and were refused "
            f"(torch.load weights_only=True): {exc}",
            file=sys.stderr,
        )
        return 1
    finally:
        if started:
            ray.shutdown()
    print(summary.text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
