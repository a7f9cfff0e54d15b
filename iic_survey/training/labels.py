"""Labelled cutout sets for training: which sources, which class, which split, which image.

Two label sources feed the same path:

* ``"synthetic"`` (the default, offline): the synthetic sky's truth table (``cntr -> class``)
  joined to its catalog;
* ``"sdss"``: SDSS DR17 spectroscopic classes (``SpecObj``, ``zWarning = 0``), fetched from
  SkyServer in RA stripes (a query is capped at 500,000 rows, so a stripe that comes back full is
  split in two and asked again), then crossmatched by position with the AllWISE catalog.

The crossmatch is HEALPix-partitioned: a coarse step decides which order-5 catalog pixels each
spectrum needs (its own, plus any neighbour its match circle reaches), a fine step reads each of
those pixels once and runs ``astropy.coordinates.match_coordinates_sky`` on it. So it scales
with the number of pixels the labels touch, never with the size of the catalog.

Classes are balanced by keeping, per class, the rows with the smallest keyed hash of ``cntr``;
the 8:1:1 split is another keyed hash of ``cntr`` (or of a HEALPix pixel, so that neighbours
never straddle splits); see :mod:`iic_survey.training.splits`. Both are pure functions of the
ids (:func:`iic_survey.core.hashing.hash_unit`): stable across runs, machines, row order and
Python versions (``hash()`` is salted per process; splitmix64 is not).

Images are made by :class:`iic_survey.stamps.maker.StampMaker`, exactly as the sky pipeline
makes them, so training and inference cannot drift apart.
:class:`~iic_survey.training.trainingset.TrainingSetWriter` stores the set as Parquet, one
folder per split (``<root>/split=train/part-*.parquet``, a hive partition, so
``pandas.read_parquet(root)`` sees a ``split`` column), with the 3x80x80 image and the catalog
features as ``arrow.fixed_shape_tensor`` columns, and a ``_manifest.json`` beside them (feature
names, RGB parameters, the split hash, counts) that the training job reads.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from iic_survey.core import flags as flags_module
from iic_survey.core import healpix
from iic_survey.core.config import did_you_mean
from iic_survey.core.progress import Bar
from iic_survey.inputs import catalog as catalog_module
from iic_survey.inputs.allwise_schema import PIPELINE_COLUMNS
from iic_survey.stamps import features
from iic_survey.stamps.maker import StampMaker
from iic_survey.synthetic import skyfiles
from iic_survey.training.crossmatch import crossmatch
from iic_survey.training.sdss import SDSSConfig, fetch_sdss
from iic_survey.training.splits import SplitConfig, assign_split, balance, class_index
from iic_survey.training.trainingset import Manifest, TrainingSetWriter, read_manifest

logger = logging.getLogger(__name__)

PAPER_COUNTS: dict[str, int] = {"galaxy": 7298, "quasar": 7215, "star": 7223}
"""Sources per class in Zhao et al. (2023), Table 1."""


# ---------------------------------------------------------------------------------------------
# Building a training set


@dataclasses.dataclass(frozen=True)
class TrainingSetConfig:
    """What :func:`build_training_set` labels and how."""

    source: str = "synthetic"
    """``synthetic`` (a synthetic sky's truth table) or ``sdss`` (spectra x AllWISE)."""
    catalog: str = ""
    """AllWISE catalog URL; empty: the synthetic sky's (``synthetic``) or IRSA's (``sdss``)."""
    images: str = ""
    """Image archive spec for :class:`~iic_survey.stamps.maker.StampMaker`; empty: the sky's or
    ``s3``."""
    sky: str = ""
    """Synthetic sky root (``synthetic`` source): holds ``truth.parquet`` and defaults the rest."""
    per_class: int | None = None
    """Sources kept per class; None balances to the rarest class (see ``paper_counts``)."""
    paper_counts: bool = False
    """Keep the paper's Table 1 counts per class (:data:`PAPER_COUNTS`) instead of ``per_class``."""
    match_radius_arcsec: float = 2.5
    """SDSS x AllWISE match radius."""
    split: SplitConfig = dataclasses.field(default_factory=SplitConfig)
    """How sources are dealt into train / val / test."""
    sdss: SDSSConfig = dataclasses.field(default_factory=SDSSConfig)
    """How spectra are fetched (``sdss`` source)."""
    chunk_rows: int = 2048
    """Rows per stamp batch and part file (bounds memory: ~77 kB of image per row)."""
    keep_unclassifiable: bool = False
    """Keep rows whose flags forbid classification (failed fetch, missing band ...)."""

    def __post_init__(self) -> None:
        if self.source not in ("synthetic", "sdss"):
            raise ValueError(
                f"unknown label source {self.source!r}"
                f"{did_you_mean(self.source, ('synthetic', 'sdss'))}"
            )
        if self.source == "synthetic" and not self.sky:
            raise ValueError("the synthetic label source needs TrainingSetConfig(sky=<sky root>)")
        if self.per_class is not None and self.per_class < 1:
            raise ValueError(f"per_class must be >= 1 or None, got {self.per_class}")
        if self.chunk_rows < 1 or self.match_radius_arcsec <= 0:
            raise ValueError("chunk_rows and match_radius_arcsec must be positive")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainingSetConfig:
        """The config that ``jobs/build_training_set.py``'s options describe."""
        return cls(
            source=args.source,
            catalog=args.catalog,
            images=args.images,
            sky=args.sky if args.source == "synthetic" else "",
            per_class=args.per_class,
            paper_counts=args.paper_counts,
            match_radius_arcsec=args.match_radius,
            split=SplitConfig(block_order=args.split_block_order),
            sdss=SDSSConfig(ra_range=tuple(args.sdss_ra), stripe_deg=args.sdss_stripe_deg),
            chunk_rows=args.chunk_rows,
        )

    def targets(self) -> int | Mapping[str, int] | None:
        """The per-class counts :func:`balance` is given."""
        return PAPER_COUNTS if self.paper_counts else self.per_class


def _catalog(config: TrainingSetConfig) -> Any:

    if config.catalog:
        return catalog_module.open_catalog(config.catalog)
    if config.source == "synthetic":
        return catalog_module.open_catalog(skyfiles.catalog_url(config.sky))
    return catalog_module.open_catalog(catalog_module.IRSA_ALLWISE_URL, anon=True)


def labelled_sources(config: TrainingSetConfig) -> pd.DataFrame:
    """Catalog rows (the pipeline's columns) with a ``class``, before balancing."""

    cat = _catalog(config)
    columns = [c for c in PIPELINE_COLUMNS if c in cat.schema.names]
    if config.source == "sdss":
        spectra = fetch_sdss(config.sdss)
        return crossmatch(spectra, cat, config.match_radius_arcsec, columns=columns)

    truth = skyfiles.read_truth(config.sky)[["cntr", "class"]]
    rows = cat.read_pixels(cat.pixels(5), 5, columns=columns)
    out = rows.merge(truth, on="cntr", how="inner", validate="one_to_one")
    logger.info("synthetic truth: %d of %d catalog sources labelled", len(out), len(rows))
    return out


def build_training_set(config: TrainingSetConfig, out: str, overwrite: bool = False) -> Manifest:
    """Label, balance, split and cut a training set; write it to ``out``; return its manifest.

    Rows go through :class:`~iic_survey.stamps.maker.StampMaker` in ``coadd_id`` order, in
    chunks of ``chunk_rows``, so each tile is opened about once and memory stays bounded.
    """

    rows = labelled_sources(config)
    rows = rows.drop_duplicates("cntr").reset_index(drop=True)
    rows = balance(rows, config.targets())
    rows["label"] = class_index(rows["class"])
    rows["healpix_k5"] = healpix.pixel_of(rows["ra"], rows["dec"], 5)
    rows["split"] = assign_split(rows["cntr"], rows["ra"], rows["dec"], config.split)
    rows = rows.sort_values(["coadd_id", "cntr"], kind="stable").reset_index(drop=True)
    images = config.images or (config.sky if config.source == "synthetic" else "s3")
    maker = StampMaker.from_spec(images)
    writer = TrainingSetWriter(out, overwrite=overwrite)
    dropped = 0
    bar = Bar(len(rows), "training set stamps", "rows")  # drawn on a terminal only
    for start in range(0, len(rows), config.chunk_rows):
        batch = maker(rows.iloc[start : start + config.chunk_rows])
        image, feats = batch.pop("image"), batch.pop("features")
        df = pd.DataFrame(batch)
        keep = np.ones(len(df), dtype=bool)
        if not config.keep_unclassifiable:
            keep = ~flags_module.unclassifiable(df["quality_flags"].to_numpy())
            dropped += int((~keep).sum())
        writer.write(df.loc[keep], image[keep], feats[keep])
        logger.info("stamps: %d / %d rows", min(start + config.chunk_rows, len(rows)), len(rows))
        bar.update(to=min(start + config.chunk_rows, len(rows)))
    bar.close()
    if dropped:
        logger.warning(
            "dropped %d unclassifiable rows (failed cutouts, missing bands ...)", dropped
        )
    meta: Manifest = {
        "source": config.source,
        "config": dataclasses.asdict(config),
        "feature_names": list(features.FEATURE_NAMES),
        "rgb": maker.rgb.to_dict(),
        "cutout": dataclasses.asdict(maker.cutout),
        "images": images,
        "dropped": dropped,
    }
    manifest = writer.close(meta)
    logger.info("training set %s: %s", out, manifest["counts"])
    return manifest


def ensure_synthetic_training_set(data: str, sky_root: str, **overrides: Any) -> Manifest:
    """The manifest of the training set at ``data``, building it from the synthetic sky at
    ``sky_root`` first if there is none (and writing the default sky there if there is none)."""

    try:
        return read_manifest(data)
    except FileNotFoundError:
        pass
    try:
        skyfiles.SkyManifest.load(sky_root)
    except FileNotFoundError:
        logger.info("no synthetic sky at %s: writing the default one", sky_root)
        skyfiles.write_sky(sky_root, skyfiles.SkyConfig())
    logger.info("no training set at %s: building it from the synthetic sky %s", data, sky_root)
    return build_training_set(TrainingSetConfig(sky=sky_root, **overrides), data)
