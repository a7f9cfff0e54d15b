"""The sky-scale rehearsal sky: all 12,288 order-5 partitions of AllWISE at a reduced density.

``write_sky_scale(root, SkyScaleConfig(scale=1e-4))`` writes, in the layout of the demo sky
(:mod:`iic_survey.synthetic.skyfiles`), a catalog with every one of the 12,288 partitions IRSA
publishes, each file with the 300 real columns (:mod:`iic_survey.synthetic.allwise_columns`),
a ``_metadata`` of the real width (one row group per file, 300 column chunks each: at any scale
about 0.6 GB, the size of IRSA's) and ``_common_metadata``. The rows number
``round(747,634,026 x scale)`` in all and follow a model of AllWISE's source density
(:func:`density_weights`), with at least one row per partition.

Images: the few fields of ``config.imaged`` (the tiny test sky by default: two 0.25 deg fields,
2,000 sources in 6 partitions) are drawn and rendered exactly as the demo sky's, at full
density, into Atlas tile crops; their rows replace that many of the model's rows, so the total
is unchanged. Every other row lies on an Atlas tile that the image archive does not hold, so
the pipeline flags it BAND_MISSING after looking for the tile, as it does for a tile the real
archive lacks. The rehearsal thus exercises, at sky scale, planning, reading, cutting up to
the tile lookup, inference, writing, commits and finalize; cutting and RGB synthesis of real
pixels only in the imaged fields.

Partitions are written in batches of pixels, each file's footer handed to a streaming
``_metadata`` writer (:class:`~iic_survey.synthetic.metadata_file.MetadataWriter`), the truth
appended batch by batch: memory stays flat however many partitions.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import pathlib
from typing import Any

import healpy as hp
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from astropy import units as u
from astropy.coordinates import SkyCoord

from iic_survey.core import healpix
from iic_survey.inputs import tiles
from iic_survey.synthetic import allwise_columns, population, skyfiles
from iic_survey.synthetic.catalog import catalog_rows, neighbours
from iic_survey.synthetic.metadata_file import MetadataWriter

log = logging.getLogger(__name__)

ALLWISE_SOURCES = 747_634_026
"""Rows of the AllWISE Source Catalog (Cutri et al. 2013)."""
ORDER = 5
_SUB_ORDER = 18
"""Model rows sit at the centres of random order-18 sub-pixels (0.8") of their partition."""
_CNTR_BASE = 10**12
"""Model rows' ``cntr`` is this + pixel * 10**7 + n; the imaged fields' are below 2 * 10**11."""
_BATCH = 256
"""Partitions drawn and written per batch."""

# Density model (relative; normalised to the total). The AllWISE source density is lowest at
# high Galactic latitude, several times higher in the confusion-limited plane and the bulge,
# raised over the Magellanic Clouds, and raised towards the ecliptic poles, where the survey's
# coverage (hundreds of exposures) is deepest: the Explanatory Supplement's source-density and
# depth-of-coverage maps (Cutri et al. 2013, Sec. II.3 and IV.2). The coefficients below
# reproduce those maps' contrasts roughly (plane/pole ~5x, bulge ~8x, LMC ~4x, ecliptic pole
# ~1.6x); they are read from the maps, not fitted.
_PLANE = (4.0, 3.0)  # amplitude, scale height in |b| (deg)
_BULGE = (6.0, 15.0, 8.0)  # amplitude, sigma in l, sigma in b (deg)
_CLOUDS = ((280.47, -32.89, 3.0, 3.0), (302.80, -44.30, 2.0, 1.5))  # l, b, amp, sigma (deg)
_POLE_DEPTH = (0.6, 12.0)  # amplitude, scale in 90 - |beta| (deg)


@dataclasses.dataclass(frozen=True)
class SkyScaleConfig:
    """What sky-scale sky to write."""

    scale: float = 1e-4
    """Fraction of AllWISE's 747,634,026 rows (1e-6 .. 1e-2)."""
    seed: int = 0
    imaged: skyfiles.SkyConfig = dataclasses.field(default_factory=skyfiles.tiny_config)
    """The fields drawn with images (their rows count towards the total)."""
    partitions: int | None = None
    """Write only the partitions ``0 .. partitions - 1`` and the imaged fields' (a quick
    rehearsal, for tests); their rows are what the whole sky gives them at ``scale``."""

    def __post_init__(self) -> None:
        if not (isinstance(self.scale, (int, float)) and 1e-6 <= float(self.scale) <= 1e-2):
            raise ValueError(f"scale must be in 1e-6 .. 1e-2, got {self.scale!r}")
        if self.partitions is not None and not 1 <= int(self.partitions) <= healpix.npix(ORDER):
            raise ValueError(
                f"partitions must be in 1 .. {healpix.npix(ORDER)}, got {self.partitions}"
            )
        if self.total < healpix.npix(ORDER) + self.imaged.n_sources:
            raise ValueError(
                f"scale {self.scale} gives {self.total} rows, fewer than one per partition "
                f"({healpix.npix(ORDER)}) plus the imaged fields' {self.imaged.n_sources}"
            )

    @property
    def total(self) -> int:
        """Rows in the whole catalog."""
        return round(ALLWISE_SOURCES * float(self.scale))


def density_weights(order: int = ORDER) -> np.ndarray:
    """Relative AllWISE source density of each NESTED pixel at ``order`` (mean 1)."""
    ra, dec = hp.pix2ang(
        healpix.nside(order), np.arange(healpix.npix(order)), nest=True, lonlat=True
    )
    c = SkyCoord(ra * u.deg, dec * u.deg)
    gal = c.galactic
    lon = (gal.l.deg + 180.0) % 360.0 - 180.0
    b = gal.b.deg
    beta = c.barycentrictrueecliptic.lat.deg
    w = 1.0 + _PLANE[0] * np.exp(-np.abs(b) / _PLANE[1])
    w += _BULGE[0] * np.exp(-0.5 * ((lon / _BULGE[1]) ** 2 + (b / _BULGE[2]) ** 2))
    for lc, bc, amp, sig in _CLOUDS:
        sep = gal.separation(SkyCoord(lc * u.deg, bc * u.deg, frame="galactic")).deg
        w += amp * np.exp(-0.5 * (sep / sig) ** 2)
    w *= 1.0 + _POLE_DEPTH[0] * np.exp(-(90.0 - np.abs(beta)) / _POLE_DEPTH[1])
    return w / w.mean()


def pixel_counts(total: int, weights: np.ndarray) -> np.ndarray:
    """Rows per pixel: one each, the rest in proportion to ``weights`` (largest remainders)."""
    n = len(weights)
    if total < n:
        raise ValueError(f"{total} rows cannot give each of {n} pixels one")
    share = (total - n) * weights / weights.sum()
    counts = np.floor(share).astype(np.int64)
    short = (total - n) - int(counts.sum())
    counts[np.argsort(-(share - counts), kind="stable")[:short]] += 1
    return counts + 1


def _model_rows(
    rng: np.random.Generator, pixels: np.ndarray, counts: np.ndarray, fractions: tuple[float, ...]
) -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame]:
    """Catalog and truth rows of the density model in partitions ``pixels`` (no images).

    Returns each row's partition, then the rows, sorted by partition and ``cntr``.
    """
    shift = 2 * (_SUB_ORDER - ORDER)
    k5 = np.repeat(pixels, counts).astype(np.int64)
    sub = np.concatenate(
        [(np.int64(p) << shift) + rng.choice(1 << shift, size=int(n), replace=False)
         for p, n in zip(pixels, counts, strict=True)]
    )  # fmt: skip
    ra, dec = hp.pix2ang(healpix.nside(_SUB_ORDER), sub, nest=True, lonlat=True)
    objs = population.draw_population(rng, len(k5), fractions)
    objs["ra"], objs["dec"] = ra, dec
    population.finish_catalogued(rng, objs, field_index=-1)
    best = tiles.best_tiles(ra, dec)
    best["src"] = np.concatenate([np.arange(1, int(n) + 1, dtype=np.int64) for n in counts])
    best["cntr"] = _CNTR_BASE + k5 * 10_000_000 + best["src"].to_numpy()
    starts = np.concatenate([[0], np.cumsum(counts)])
    nb = np.concatenate([neighbours(ra[a:b], dec[a:b], 8.0) for a, b in itertools.pairwise(starts)])
    rows, truth = catalog_rows(rng, objs, best, np.zeros(len(k5), dtype=bool), nb)
    return k5, rows, truth


def write_sky_scale(
    root: str | os.PathLike[str], config: SkyScaleConfig | None = None, overwrite: bool = False
) -> skyfiles.SkyManifest:
    """Write the sky-scale sky under ``root`` (see the module docstring); return its manifest."""
    config = config or SkyScaleConfig()
    root_p = pathlib.Path(root).absolute()
    doc = skyfiles.write_in_place(root_p, overwrite, lambda out: _write_into(out, config))
    log.info(
        "wrote %s sources in %d partitions to %s",
        f"{doc['n_sources']:,}",
        len(doc["pixels"]),
        root_p,
    )
    return skyfiles.SkyManifest.load(root_p)


def _write_into(out: pathlib.Path, config: SkyScaleConfig) -> dict[str, Any]:
    """Write the imaged fields' tiles, then every partition batch by batch; return sky.json."""
    imaged, truth_f, field_docs = skyfiles.draw_fields(out, config.imaged)
    imaged_k5 = healpix.pixel_of(imaged["ra"].to_numpy(), imaged["dec"].to_numpy(), ORDER)
    counts = pixel_counts(config.total, density_weights())
    # The imaged rows replace model rows: taken from the pixels they fall in, then evenly.
    take = np.bincount(imaged_k5, minlength=len(counts))
    counts = _remove(counts, take)
    keep = np.arange(len(counts))
    if config.partitions is not None:
        keep = np.union1d(keep[: config.partitions], np.unique(imaged_k5))
    cat_root = out / skyfiles.CATALOG_PREFIX
    cat_root.mkdir(parents=True)
    meta = MetadataWriter(cat_root / "_metadata")
    schema = allwise_columns.full_schema()
    truth_schema = pa.Schema.from_pandas(truth_f, preserve_index=False)
    truth_writer = pq.ParquetWriter(out / "truth.parquet", truth_schema)
    truth_writer.write_table(pa.Table.from_pandas(truth_f, truth_schema, preserve_index=False))
    for start in range(0, len(keep), _BATCH):
        rng = np.random.default_rng([config.seed, 1 << 20, start])
        pixels = keep[start : start + _BATCH]
        k5, rows, truth = _model_rows(rng, pixels, counts[pixels], config.imaged.class_fractions)
        in_batch = np.isin(imaged_k5, pixels)
        k5 = np.concatenate([k5, imaged_k5[in_batch]])
        rows = pd.concat([rows, imaged[in_batch]], ignore_index=True)
        order = np.lexsort((rows["cntr"].to_numpy(), k5))
        k5, table = k5[order], allwise_columns.full_table(rows.iloc[order], rng, k5[order])
        bounds = np.searchsorted(k5, np.append(pixels, pixels[-1] + 1))
        for p, a, b in zip(pixels, bounds[:-1], bounds[1:], strict=True):
            rel = f"healpix_k0={p // 1024}/healpix_k5={p}/part0.snappy.parquet"
            (cat_root / rel).parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table.slice(a, b - a), cat_root / rel, compression="snappy")
            meta.add(pq.read_metadata(cat_root / rel), rel)
        truth_writer.write_table(
            pa.Table.from_pandas(truth[truth_f.columns], truth_schema, preserve_index=False)
        )
        log.info("partitions %d of %d written", start + len(pixels), len(keep))
    truth_writer.close()
    meta.close()
    pq.write_metadata(schema, cat_root / "_common_metadata")
    doc = {
        "format_version": skyfiles.FORMAT_VERSION,
        "generator": "iic_survey.synthetic.skyscale",
        "preset": "sky-scale",
        "scale": float(config.scale),
        "partitions": config.partitions,
        "config": config.imaged.to_dict(),
        "n_sources": int(meta.rows),
        "pixels": keep.tolist(),
        "tiles": sorted(t for field_doc in field_docs for t in field_doc["tiles"]),
        "bands": list(config.imaged.bands),
        "catalog": skyfiles.CATALOG_PREFIX,
        "images": skyfiles.IMAGES_PREFIX,
        "fields": field_docs,
        "density_model": "iic_survey.synthetic.skyscale.density_weights",
    }
    (out / "sky.json").write_text(json.dumps(doc, indent=1) + "\n")
    return doc


def _remove(counts: np.ndarray, take: np.ndarray) -> np.ndarray:
    """``counts`` less ``take`` rows in all, each pixel keeping at least one."""
    out = counts.copy()
    debt = 0
    for p in np.nonzero(take)[0]:
        here = min(int(take[p]), int(out[p]) - 1)
        out[p] -= here
        debt += int(take[p]) - here
    while debt:
        spare = np.nonzero(out > 1)[0]
        step = min(debt, spare.size)
        out[spare[np.argsort(-out[spare], kind="stable")[:step]]] -= 1
        debt -= step
    return out
