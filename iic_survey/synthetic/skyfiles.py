"""A seeded synthetic WISE sky in the archive's own formats, so every code path runs offline.

``write_sky(root, SkyConfig(...))`` writes, under ``root``, the layout of the bucket prefix
``s3://nasa-irsa-wise/wise/allwise/``::

    catalogs/p3as_psd/healpix_k5/wise-allwise.parquet/healpix_k0=K0/healpix_k5=K5/part0.snappy.parquet
    catalogs/p3as_psd/healpix_k5/wise-allwise.parquet/_metadata, _common_metadata
    images/p3am_cdd/{cid[:2]}/{cid[:4]}/{cid}/{cid}-w{b}-int-3.fits   (tiles cropped to the fields)
    truth.parquet   sky.json

The sky is a few square fields. Each field is drawn from its own random stream, rendered into
the crops of every Atlas tile that covers it (a source in a tile overlap appears in each tile,
with independent noise, as in the real coadds), written, and dropped before the next field, so
image memory stays flat as fields are added. Catalog rows (~300 bytes each) are gathered and
written per HEALPix order-5 pixel at the end. Everything is written to a sibling directory and
moved to ``root`` when complete, so a crash never leaves a half-written sky there.

The model behind the files is in :mod:`iic_survey.synthetic.population` (what objects a field
holds, with realistic class overlap and trouble), :mod:`iic_survey.synthetic.catalog` (the
catalog rows AllWISE would list for them, and the hive-partitioned catalog files with AllWISE's
columns, units and descriptions) and :mod:`iic_survey.synthetic.rendering` (the band PSFs,
noise and saturation, and the drawing of sources into tile crops). This module is the writer:
it validates the configuration (:class:`SkyConfig`), lays the fields out, and writes the FITS
tile crops with a WCS consistent with the catalog's ``wx``/``wy``, the catalog, the truth table
and ``sky.json`` (:class:`SkyManifest`). The ``make-sky`` command line is
:mod:`iic_survey.synthetic.cli`.

Shapes are in arcsec and fluxes in DN (m = MAGZP - 2.5 log10 DN) throughout.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pathlib
import shutil
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from astropy.io import fits

from iic_survey.core.constants import CLASSES
from iic_survey.core.progress import Bar
from iic_survey.inputs import tile_header, tiles
from iic_survey.synthetic import population, rendering
from iic_survey.synthetic.catalog import field_catalog, write_catalog
from iic_survey.synthetic.rendering import ALL_BANDS

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Version of the sky.json layout."""
CATALOG_PREFIX = "catalogs/p3as_psd/healpix_k5/wise-allwise.parquet"
IMAGES_PREFIX = "images/p3am_cdd"
MAX_DENSITY_PER_DEG2 = 60_000
"""Densest sky SkyConfig accepts (AllWISE reaches ~15,000/deg^2 at mid latitudes)."""

DEFAULT_FIELDS: tuple[tuple[float, float], ...] = (
    (165.498, 18.952),  # two order-5 pixels, three to four tiles
    (226.072, -0.752),  # a tile corner: four tiles
    (316.846, -52.792),  # a corner of four order-5 pixels, two tiles
    (139.811, 56.646),  # high declination, two to four tiles
)
"""Field centres (ra, dec) at Galactic latitude 30-65 deg that straddle tile overlaps and
HEALPix order-5 pixel boundaries at field sizes 0.2-0.4 deg."""


@dataclasses.dataclass(frozen=True)
class SkyConfig:
    """What synthetic sky to write.

    The default is the demo sky: four 0.4 deg fields, 10,000 sources (~15,600 per deg^2).
    """

    seed: int = 0
    """Random seed (0 .. 2**32 - 1); the same seed and config give identical files."""
    n_sources: int = 10_000
    """Catalog rows in all fields together (split evenly between fields)."""
    fields: tuple[tuple[float, float], ...] = DEFAULT_FIELDS
    """Field centres (ra, dec) in degrees; fields may not share an Atlas tile."""
    field_size_deg: float = 0.4
    """Side of each square field (0.05 .. 1.5 deg)."""
    bands: tuple[int, ...] = (1, 2, 3)
    """Bands to write images for: 1, 2, 3 and optionally 4 (the catalog always has W1-W4)."""
    class_fractions: tuple[float, float, float] = (0.40, 0.25, 0.35)
    """Fractions of galaxies, quasars and stars (the order of CLASSES); they must sum to 1."""
    artefacts: bool = True
    """Add saturated bright stars, NaN patches and halo detections."""

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if not 0 <= int(self.seed) < 2**32:
            raise ValueError(f"seed must be in 0 .. 2**32 - 1, got {self.seed}")
        if isinstance(self.n_sources, bool) or int(self.n_sources) != self.n_sources:
            raise ValueError(f"n_sources must be an integer, got {self.n_sources!r}")
        if not 10 <= int(self.n_sources) <= 2_000_000:
            raise ValueError(f"n_sources must be in 10 .. 2,000,000, got {self.n_sources}")
        if not 0.05 <= float(self.field_size_deg) <= 1.5:
            raise ValueError(f"field_size_deg must be in 0.05 .. 1.5, got {self.field_size_deg}")
        fields = tuple((float(f[0]), float(f[1])) for f in self.fields)
        if not fields:
            raise ValueError("fields must hold at least one (ra, dec) centre")
        for ra, dec in fields:
            if not (math.isfinite(ra) and math.isfinite(dec) and 0 <= ra < 360 and abs(dec) <= 80):
                raise ValueError(
                    f"field centre ({ra}, {dec}) must have 0 <= ra < 360 and |dec| <= 80"
                )
        bands = tuple(sorted(int(b) for b in self.bands))
        unknown = sorted(set(bands) - set(ALL_BANDS))
        if unknown:
            raise ValueError(f"unknown WISE band(s) {unknown}: choose from {ALL_BANDS}")
        if len(set(bands)) != len(bands) or not {1, 2, 3} <= set(bands):
            raise ValueError(
                f"bands must be (1, 2, 3) or (1, 2, 3, 4) without repeats, got {bands}"
            )
        frac = tuple(float(f) for f in self.class_fractions)
        if len(frac) != len(CLASSES) or min(frac) < 0 or abs(sum(frac) - 1) > 1e-6:
            raise ValueError(
                f"class_fractions must be {len(CLASSES)} non-negative numbers for {CLASSES} "
                f"summing to 1, got {self.class_fractions}"
            )
        per_field = int(self.n_sources) / len(fields)
        density = per_field / float(self.field_size_deg) ** 2
        if density > MAX_DENSITY_PER_DEG2:
            raise ValueError(
                f"{density:.0f} sources per deg^2 is denser than any WISE sky "
                f"(limit {MAX_DENSITY_PER_DEG2}); use more or larger fields"
            )
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "n_sources", int(self.n_sources))
        object.__setattr__(self, "field_size_deg", float(self.field_size_deg))
        object.__setattr__(self, "fields", fields)
        object.__setattr__(self, "bands", bands)
        object.__setattr__(self, "class_fractions", frac)
        object.__setattr__(self, "artefacts", bool(self.artefacts))
        rendering.check_fields_apart(fields, self.field_size_deg)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (lists for tuples)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SkyConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        extra = sorted(set(d) - names)
        if extra:
            raise ValueError(f"unknown SkyConfig field(s) {extra}; known: {sorted(names)}")
        return cls(**d)


def tiny_config(seed: int = 0) -> SkyConfig:
    """The test sky: 2,000 sources in two 0.25 deg fields (6 order-5 pixels, 5 tiles)."""
    return SkyConfig(
        seed=seed,
        n_sources=2000,
        fields=(DEFAULT_FIELDS[0], DEFAULT_FIELDS[2]),
        field_size_deg=0.25,
    )


@dataclasses.dataclass(frozen=True)
class SkyManifest:
    """What :func:`write_sky` wrote (also stored as ``sky.json``)."""

    root: str
    catalog_url: str
    images_url: str
    pixels: tuple[int, ...]
    """HEALPix order-5 (NESTED) pixels holding catalog rows."""
    n_sources: int
    tiles: tuple[str, ...]
    """Atlas ids (``_ac51``) of the tiles written."""
    config: SkyConfig

    @classmethod
    def load(cls, root: str | os.PathLike[str]) -> SkyManifest:
        """Read the manifest of the sky at ``root``; raises if ``root`` holds no sky."""
        path = pathlib.Path(root) / "sky.json"
        if not path.is_file():
            raise FileNotFoundError(f"{root} holds no synthetic sky (no sky.json)")
        doc = json.loads(path.read_text())
        if doc.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(
                f"sky.json format {doc['format_version']} is newer than this code "
                f"({FORMAT_VERSION}); upgrade iic_survey"
            )
        root_s = str(pathlib.Path(root))
        return cls(
            root=root_s,
            catalog_url=catalog_url(root_s),
            images_url=images_url(root_s),
            pixels=tuple(int(p) for p in doc["pixels"]),
            n_sources=int(doc["n_sources"]),
            tiles=tuple(doc["tiles"]),
            config=SkyConfig.from_dict(doc["config"]),
        )


def catalog_url(root: str | os.PathLike[str]) -> str:
    """Root of the hive-partitioned catalog of a sky (holds ``_metadata``)."""
    return f"{pathlib.Path(root)}/{CATALOG_PREFIX}"


def images_url(root: str | os.PathLike[str]) -> str:
    """Root of the Atlas images of a sky (``.../images/p3am_cdd``)."""
    return f"{pathlib.Path(root)}/{IMAGES_PREFIX}"


def tile_relpath(coadd_id: str, band: int) -> str:
    """Archive path of an Atlas intensity image below ``p3am_cdd/``."""
    cid = tiles.atlas_id(coadd_id)
    return f"{cid[:2]}/{cid[:4]}/{cid}/{cid}-w{int(band)}-int-3.fits"


def read_truth(root: str | os.PathLike[str]) -> pd.DataFrame:
    """The truth table of a sky: ``cntr``, ``class`` and the generator's diagnostics."""
    return pd.read_parquet(pathlib.Path(root) / "truth.parquet")


# --------------------------------------------------------------------------------------------
# Writing a sky


def prepare_root(root: pathlib.Path, overwrite: bool) -> None:
    """Refuse to write over anything but an empty directory or, with overwrite, a sky."""
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"{root} exists and is not a directory")
    if root.is_dir() and any(root.iterdir()):
        if not (root / "sky.json").is_file():
            raise FileExistsError(
                f"{root} is not empty and holds no synthetic sky (no sky.json); choose a new "
                f"or empty directory (overwrite=True only replaces an existing sky)"
            )
        if not overwrite:
            raise FileExistsError(
                f"{root} already holds a synthetic sky; pass overwrite=True (--overwrite)"
            )


def write_in_place(
    root: pathlib.Path, overwrite: bool, write: Callable[[pathlib.Path], dict[str, Any]]
) -> dict[str, Any]:
    """``write(out)`` into an empty sibling directory of ``root``, then move it to ``root``.

    A crash never leaves a half-written sky at ``root``; an old sky there is replaced only when
    the new one is complete (``overwrite``, see :func:`prepare_root`). Returns ``write``'s
    ``sky.json`` document.
    """
    prepare_root(root, overwrite)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        doc = write(tmp)
        if root.exists():
            old = root.parent / f".{root.name}.old-{os.getpid()}"
            root.rename(old)
            tmp.rename(root)
            shutil.rmtree(old)
        else:
            tmp.rename(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return doc


def write_sky(
    root: str | os.PathLike[str], config: SkyConfig | None = None, overwrite: bool = False
) -> SkyManifest:
    """Write a synthetic WISE sky (catalog, Atlas tile crops, truth, sky.json) under ``root``.

    Parameters
    ----------
    root
        Local directory; created if missing. It must be empty or hold a sky written here
        before (replaced only when ``overwrite`` is True).
    config
        What to write; the default is the demo sky.
    overwrite
        Replace an existing sky at ``root``.

    Raises
    ------
    FileExistsError
        If ``root`` is not empty and is not a sky, or is a sky and ``overwrite`` is False.
    """
    config = config or SkyConfig()
    root_p = pathlib.Path(root).absolute()
    doc = write_in_place(root_p, overwrite, lambda out: _write_into(out, config))
    log.info("wrote %d sources on %d tiles to %s", doc["n_sources"], len(doc["tiles"]), root_p)
    return SkyManifest.load(root_p)


def draw_fields(
    out: pathlib.Path, config: SkyConfig
) -> tuple[pd.DataFrame, pd.DataFrame, list[dict[str, Any]]]:
    """Draw every field of ``config`` and write its tile crops under ``out``.

    Returns the fields' catalog rows, their truth rows (by ``cntr``) and their ``sky.json``
    entries.
    """
    n_fields = len(config.fields)
    counts = np.full(n_fields, config.n_sources // n_fields)
    counts[: config.n_sources % n_fields] += 1
    catalogs, truths, field_docs = [], [], []
    bar = Bar(config.n_sources, "synthetic sky", "sources")  # drawn on a terminal only
    for i in range(n_fields):
        catalog, truth, field_doc = _write_field(out, config, i, int(counts[i]))
        catalogs.append(catalog)
        truths.append(truth)
        field_docs.append(field_doc)
        bar.update(int(counts[i]))
    bar.close()
    catalog = pd.concat(catalogs, ignore_index=True)
    if catalog["cntr"].duplicated().any():
        raise RuntimeError("duplicate cntr values (generator bug)")
    truth = pd.concat(truths, ignore_index=True).sort_values("cntr", ignore_index=True)
    return catalog, truth, field_docs


def _write_into(out: pathlib.Path, config: SkyConfig) -> dict[str, Any]:
    """Write the sky into the empty directory ``out``, field by field; return ``sky.json``."""
    catalog, truth, field_docs = draw_fields(out, config)
    pixels = write_catalog(catalog, out / CATALOG_PREFIX)
    truth.to_parquet(out / "truth.parquet", index=False)
    doc = {
        "format_version": FORMAT_VERSION,
        "generator": "iic_survey.synthetic",
        "config": config.to_dict(),
        "n_sources": len(catalog),
        "pixels": pixels,
        "tiles": sorted(t for field_doc in field_docs for t in field_doc["tiles"]),
        "bands": list(config.bands),
        "catalog": CATALOG_PREFIX,
        "images": IMAGES_PREFIX,
        "fields": field_docs,
    }
    (out / "sky.json").write_text(json.dumps(doc, indent=1) + "\n")
    return doc


def _write_field(
    out: pathlib.Path, config: SkyConfig, index: int, n: int
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Draw field ``index`` from its own random stream and write its tile crops.

    Returns its catalog rows, its truth rows and its entry in ``sky.json``.
    """
    ra0, dec0 = config.fields[index]
    half = config.field_size_deg / 2
    field = rendering.Field(index, ra0, dec0, half, rendering.field_tiles(ra0, dec0, half))
    rng = np.random.default_rng([config.seed, index])
    objs = population.draw_field(rng, field, n, config.class_fractions, config.artefacts)
    catalog, truth = field_catalog(rng, objs, field)
    _write_tiles(out, config, field, rendering.FieldObjects.of(objs))
    log.info("field %d: %d sources, %d tiles", index, len(catalog), len(field.crops))
    field_doc = {
        "ra": ra0,
        "dec": dec0,
        "n_sources": len(catalog),
        "tiles": {tiles.atlas_id(c): list(crop) for c, crop in field.crops.items()},
    }
    return catalog, truth, field_doc


def _write_tiles(
    out: pathlib.Path, config: SkyConfig, field: rendering.Field, objects: rendering.FieldObjects
) -> None:
    """Render a field's objects into each of its tile crops; one FITS file per tile and band.

    Each tile has its own random stream (seed, field, tile), so the noise of a source in a
    tile overlap is independent in each tile; the largest crop gets the NaN patch.
    """
    grid_index = {c: k for k, c in enumerate(tiles.tile_grid()["coadd_id"])}
    nan_tile = max(field.crops, key=lambda c: field.crops[c].nx * field.crops[c].ny)
    for cid, crop in field.crops.items():
        tile_rng = np.random.default_rng([config.seed, field.index, grid_index[cid]])
        nan_patch = config.artefacts and cid == nan_tile
        images = rendering.render_tile(tile_rng, objects, cid, crop, config.bands, nan_patch)
        for b, img in images.items():
            path = out / IMAGES_PREFIX / tile_relpath(cid, b)
            path.parent.mkdir(parents=True, exist_ok=True)
            hdr = tile_header.tile_header(cid, b, crop)
            hdr["COMMENT"] = f"Synthetic sky by iic_survey.synthetic, seed {config.seed}"
            fits.PrimaryHDU(data=img, header=hdr).writeto(path)
