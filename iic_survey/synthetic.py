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

What is simulated, and why (DESIGN.md section 2):

* Classes overlap the way real ones do. Stars sit at W1-W2 ~ 0, W2-W3 ~ 0 with dusty and
  late-type tails; most quasars have W1-W2 ~ 1 and W2-W3 2.2-4.2, but a fifth (high-z or low
  luminosity) fall into the galaxy and stellar loci; early-type galaxies share the stars' W1-W2
  with W2-W3 0.5-1.5, spirals have W2-W3 2-4, starbursts reach the quasar wedge. Faint sources
  have noisy colours and W3 upper limits, so no single colour cut separates the classes.
* Morphology carries extra information: bright galaxies are resolved (exponential or de
  Vaucouleurs profiles as Gaussian mixtures), some quasars show a host, stars and most quasars
  are point sources. Profiles are convolved analytically with a three-Gaussian PSF (core, wing,
  halo) of the band's FWHM and added as small stamps straight into the tile crops: no FFTs.
* Catalog photometry is what a PSF fit to the image gives: total flux for point sources, less
  for resolved ones (which also get a higher rchi2 and ext_flg), with the image's noise; SNR < 2
  gives a 95 % upper limit with null sigmpro and ph_qual 'U'.
* Realistic trouble: neighbours at AllWISE density, unlisted blended companions (nb > 1),
  off-centre catalog positions, catalog rows with nothing visible at the position (the paper's
  failure class 4; those near bright stars are halo artefacts flagged 'H' in cc_flags),
  saturated stars with flat-topped cores, and NaN patches.

Shapes are in arcsec and fluxes in DN (m = MAGZP - 2.5 log10 DN) throughout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import pathlib
import shutil
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits

from iic_survey import CLASSES, sky, tiles

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Version of the sky.json layout."""
CATALOG_PREFIX = "catalogs/p3as_psd/healpix_k5/wise-allwise.parquet"
IMAGES_PREFIX = "images/p3am_cdd"
ALL_BANDS = (1, 2, 3, 4)

FWHM_ARCSEC = {1: 6.1, 2: 6.4, 3: 6.5, 4: 12.0}
"""PSF full width at half maximum per band."""
DEPTH5_MAG = {1: 16.9, 2: 15.95, 3: 11.4, 4: 8.0}
"""Point-source 5-sigma depth per band (typical AllWISE at mid ecliptic latitude)."""
BACKGROUND_DN = {1: 40.0, 2: 80.0, 3: 900.0, 4: 250.0}
"""Mean sky level of the images per band."""
SATURATION_MAG = {1: 8.1, 2: 6.7, 3: 3.8, 4: -0.4}
"""Magnitude at which a point source's core saturates (Explanatory Supplement)."""
CROP_MARGIN_PX = 48
"""Crops reach this far beyond a field, so a 50" stamp of any field source stays on the crop."""
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
        _check_fields_apart(fields, self.field_size_deg)

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
# Field geometry


@dataclasses.dataclass(frozen=True)
class _Field:
    index: int
    ra0: float
    dec0: float
    half: float
    crops: dict[str, tiles.Crop]  # 8-char tile id -> crop of that tile

    def box(self, u_: np.ndarray, v_: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sky positions of unit-box coordinates u, v in [-1, 1]."""
        ra = (self.ra0 + u_ * self.half / math.cos(math.radians(self.dec0))) % 360.0
        return ra, self.dec0 + v_ * self.half

    def clip(self, ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Move positions outside the field onto its edge."""
        du = ((ra - self.ra0 + 180.0) % 360.0 - 180.0) * math.cos(math.radians(self.dec0))
        return self.box(
            np.clip(du / self.half, -1, 1), np.clip((dec - self.dec0) / self.half, -1, 1)
        )


def _field_grid(ra0: float, dec0: float, half: float) -> tuple[np.ndarray, np.ndarray]:
    g = np.linspace(-1.0, 1.0, 25)
    gu, gv = np.meshgrid(g, g)
    ra = (ra0 + gu.ravel() * half / math.cos(math.radians(dec0))) % 360.0
    return ra, dec0 + gv.ravel() * half


def _field_tiles(ra0: float, dec0: float, half: float) -> dict[str, tiles.Crop]:
    """Tiles covering a field, each with the crop that holds the field plus a margin."""
    ra, dec = _field_grid(ra0, dec0, half)
    # A tile joins if it holds part of the field, or a stamp near the field edge reaches it.
    cids = sorted(set(tiles.tile_candidates(ra, dec, min_distance_px=-10.0)["coadd_id"]))
    crops: dict[str, tiles.Crop] = {}
    for cid in cids:
        t_ra, t_dec = tiles.tile_center(cid)
        x, y, _ = tiles.world_to_tile_pixel(ra, dec, t_ra, t_dec)
        x0 = max(0, math.floor(x.min()) - CROP_MARGIN_PX - 1)
        y0 = max(0, math.floor(y.min()) - CROP_MARGIN_PX - 1)
        x1 = min(tiles.TILE_NPIX, math.ceil(x.max()) + CROP_MARGIN_PX)
        y1 = min(tiles.TILE_NPIX, math.ceil(y.max()) + CROP_MARGIN_PX)
        if x1 > x0 and y1 > y0:
            crops[cid] = tiles.Crop(x0, y0, x1 - x0, y1 - y0)
    return crops


def _check_fields_apart(fields: tuple[tuple[float, float], ...], size: float) -> None:
    owner: dict[str, int] = {}
    for i, (ra0, dec0) in enumerate(fields):
        for cid in _field_tiles(ra0, dec0, size / 2):
            if cid in owner:
                j = owner[cid]
                raise ValueError(
                    f"fields {j} {fields[j]} and {i} {(ra0, dec0)} share Atlas tile {cid}; "
                    f"move them at least ~3.5 deg apart"
                )
            owner[cid] = i


# --------------------------------------------------------------------------------------------
# The source population

# Sub-populations: (class, subclass, share of the class, W1 range, W1 count slope,
# (mean, sd) of W1-W2, W2-W3, W3-W4, shape). Shapes: point, exp, dev, host.
_SUBPOPS: tuple[tuple[str, str, float, tuple[float, float], float, tuple[float, ...], str], ...] = (
    ("star", "main_sequence", 0.88, (8.5, 16.2), 0.2, (0.00, 0.05, 0.05, 0.08, 0.0, 0.1), "point"),
    ("star", "late_type", 0.05, (9.0, 16.2), 0.20, (0.40, 0.25, 0.30, 0.20, 0.2, 0.20), "point"),
    ("star", "dusty", 0.07, (8.5, 16.0), 0.20, (0.15, 0.15, 1.30, 0.60, 1.0, 0.50), "point"),
    ("galaxy", "early_type", 0.40, (10.5, 15.8), 0.30, (0.05, 0.08, 1.00, 0.30, 1.0, 0.50), "dev"),
    ("galaxy", "spiral", 0.48, (10.5, 15.8), 0.30, (0.25, 0.15, 3.00, 0.45, 2.3, 0.40), "exp"),
    ("galaxy", "starburst", 0.12, (11.0, 15.8), 0.30, (0.60, 0.25, 3.70, 0.40, 2.8, 0.40), "exp"),
    ("quasar", "qso", 0.68, (12.5, 16.5), 0.35, (1.05, 0.22, 2.95, 0.45, 2.4, 0.40), "point"),
    ("quasar", "qso_host", 0.12, (12.5, 15.5), 0.35, (0.85, 0.25, 2.80, 0.45, 2.4, 0.40), "host"),
    ("quasar", "qso_blue", 0.20, (13.0, 16.5), 0.35, (0.45, 0.20, 2.60, 0.60, 2.3, 0.50), "point"),
)  # fmt: skip

# Gaussian-mixture approximations of Sersic profiles with unit half-light radius
# (amplitudes, variances), fitted for this module (cf. Hogg & Lang 2013).
_MOG = {
    "exp": (
        np.array([0.007567, 0.088448, 0.405835, 0.49815]),
        np.array([0.014003, 0.103052, 0.45345, 1.60172]),
    ),
    "dev": (
        np.array([0.000396, 0.005045, 0.029334, 0.111422, 0.300462, 0.553341]),
        np.array([6.06083e-06, 0.000193514, 0.00252152, 0.0248, 0.234301, 2.85469]),
    ),
}
_K_SHAPE = 6  # components per profile (padded with zero amplitudes)


def _powerlaw_mags(rng: np.random.Generator, n: int, lo: float, hi: float, slope: float):
    """Magnitudes with counts dN/dm ~ 10**(slope * m) between lo and hi."""
    span = 10 ** (slope * (hi - lo)) - 1.0
    return lo + np.log10(1.0 + rng.random(n) * span) / slope


def _draw_objects(rng: np.random.Generator, classes: np.ndarray) -> pd.DataFrame:
    """Subclass, true W1..W4 magnitudes and shape of one object per entry of ``classes``."""
    n = classes.size
    out = {
        "subclass": np.empty(n, dtype=object),
        "shape": np.empty(n, dtype=object),
        **{f"w{b}_true": np.zeros(n) for b in ALL_BANDS},
        "r_e_arcsec": np.zeros(n),
        "axis_ratio": np.ones(n),
        "pa_deg": rng.uniform(0, 180, n),
        "host_frac": np.zeros(n),
    }
    for cls in CLASSES:
        idx = np.nonzero(classes == cls)[0]
        subs = [s for s in _SUBPOPS if s[0] == cls]
        share = np.array([s[2] for s in subs])
        pick = rng.choice(len(subs), size=idx.size, p=share / share.sum())
        for j, (_, name, _, (lo, hi), slope, col, shape) in enumerate(subs):
            ii = idx[pick == j]
            k = ii.size
            w1 = _powerlaw_mags(rng, k, lo, hi, slope)
            c12 = rng.normal(col[0], col[1], k)
            c23 = rng.normal(col[2], col[3], k)
            c34 = rng.normal(col[4], col[5], k)
            if name == "qso":  # the Jarrett wedge holds most, not all, quasars
                c23 = np.clip(c23, 1.6, 4.6)
            out["subclass"][ii] = name
            out["shape"][ii] = shape
            out["w1_true"][ii] = w1
            out["w2_true"][ii] = w1 - c12
            out["w3_true"][ii] = w1 - c12 - c23
            out["w4_true"][ii] = w1 - c12 - c23 - c34
            if shape in ("exp", "dev"):
                # Brighter galaxies are nearer and larger; faint ones are unresolved by WISE.
                med = (4.0 if shape == "dev" else 5.0) * 10 ** (-0.2 * (w1 - 14.0))
                out["r_e_arcsec"][ii] = np.clip(med * 10 ** rng.normal(0, 0.22, k), 0.3, 40)
                qlo = 0.55 if shape == "dev" else 0.2
                out["axis_ratio"][ii] = rng.uniform(qlo, 1.0, k)
            elif shape == "host":
                out["r_e_arcsec"][ii] = rng.uniform(2.0, 4.0, k)
                out["axis_ratio"][ii] = rng.uniform(0.5, 1.0, k)
                out["host_frac"][ii] = rng.uniform(0.2, 0.5, k)
    return pd.DataFrame(out)


def _draw_field(rng: np.random.Generator, field: _Field, n: int, config: SkyConfig) -> pd.DataFrame:
    """All objects of one field: the catalogued ones plus unlisted blended companions."""
    classes = rng.choice(np.array(CLASSES, dtype=object), size=n, p=config.class_fractions)
    objs = _draw_objects(rng, classes)
    objs.insert(0, "class", classes)
    ra, dec = field.box(rng.uniform(-1, 1, n), rng.uniform(-1, 1, n))
    objs["ra"], objs["dec"] = ra, dec
    objs["catalogued"] = True
    objs["empty_centre"] = False
    objs["offset_arcsec"] = 0.0
    objs["hidden_companion"] = False
    objs["field"] = field.index
    bright = np.zeros(n, dtype=bool)
    if config.artefacts:
        # A few saturated stars per field: flat-topped cores and halos.
        stars = np.nonzero(classes == "star")[0]
        k = min(stars.size, max(1, round(n / 2500)))
        pick = rng.choice(stars, size=k, replace=False)
        objs.loc[pick, "subclass"] = "main_sequence"
        w1 = rng.uniform(5.5, 7.8, k)
        for b in ALL_BANDS:
            objs.loc[pick, f"w{b}_true"] = w1 - rng.normal(0, 0.03, k) * (b > 1)
        bright[pick] = True
    ordinary = np.nonzero(~bright)[0]
    # Failure class 4: rows with nothing visible at the position. Half sit in bright-star
    # halos (spurious detections), half are faint objects whose catalog flux is noise-boosted.
    n_empty = max(1, round(0.015 * n))
    empty = rng.choice(ordinary, size=min(n_empty, ordinary.size), replace=False)
    objs.loc[empty, "empty_centre"] = True
    near = empty[: len(empty) // 2] if bright.any() else empty[:0]
    hosts = rng.choice(np.nonzero(bright)[0], size=near.size) if near.size else near
    if near.size:
        r = rng.uniform(15, 50, near.size) / 3600.0
        t = rng.uniform(0, 2 * np.pi, near.size)
        cosd = np.cos(np.radians(objs.loc[hosts, "dec"].to_numpy()))
        ra_n = (objs.loc[hosts, "ra"].to_numpy() + r * np.sin(t) / cosd) % 360
        dec_n = objs.loc[hosts, "dec"].to_numpy() + r * np.cos(t)
        objs.loc[near, "ra"], objs.loc[near, "dec"] = field.clip(ra_n, dec_n)
    rest = np.setdiff1d(ordinary, empty)
    # Off-centre catalog positions (centroid pulled by a neighbour or a bad fit).
    off = rng.choice(rest, size=round(0.02 * n), replace=False)
    objs.loc[off, "offset_arcsec"] = rng.uniform(2.0, 5.0, off.size)
    # Unlisted companions closer than WISE resolves: the catalog row is a blend.
    prim = rng.choice(np.setdiff1d(rest, off), size=round(0.04 * n), replace=False)
    objs.loc[prim, "hidden_companion"] = True
    comp_cls = rng.choice(np.array(CLASSES, dtype=object), size=prim.size, p=config.class_fractions)
    comp = _draw_objects(rng, comp_cls)
    comp.insert(0, "class", comp_cls)
    dm = rng.uniform(0.3, 2.5, prim.size)
    shift = objs.loc[prim, "w1_true"].to_numpy() + dm - comp["w1_true"].to_numpy()
    for b in ALL_BANDS:
        comp[f"w{b}_true"] += shift
    sep = rng.uniform(1.5, 5.0, prim.size) / 3600.0
    ang = rng.uniform(0, 2 * np.pi, prim.size)
    cosd = np.cos(np.radians(objs.loc[prim, "dec"].to_numpy()))
    comp["ra"] = (objs.loc[prim, "ra"].to_numpy() + sep * np.sin(ang) / cosd) % 360
    comp["dec"] = objs.loc[prim, "dec"].to_numpy() + sep * np.cos(ang)
    comp["catalogued"] = False
    comp["empty_centre"] = False
    comp["offset_arcsec"] = 0.0
    comp["hidden_companion"] = False
    comp["field"] = field.index
    objs = pd.concat([objs, comp], ignore_index=True)
    # Rendered (true) positions; catalog positions differ only for off-centre rows.
    objs["ra_true"], objs["dec_true"] = objs["ra"].to_numpy(), objs["dec"].to_numpy()
    o = objs["offset_arcsec"].to_numpy() > 0
    t = rng.uniform(0, 2 * np.pi, int(o.sum()))
    r = objs.loc[o, "offset_arcsec"].to_numpy() / 3600.0
    cosd = np.cos(np.radians(objs.loc[o, "dec"].to_numpy()))
    objs.loc[o, "ra_true"] = (objs.loc[o, "ra"].to_numpy() + r * np.sin(t) / cosd) % 360
    objs.loc[o, "dec_true"] = objs.loc[o, "dec"].to_numpy() + r * np.cos(t)
    # Catalogued magnitudes: the rendered ones, except for empty-centre rows, which are faint
    # detections of (almost) nothing: 4 mag fainter in the image than in the catalog.
    for b in ALL_BANDS:
        objs[f"w{b}_cat"] = objs[f"w{b}_true"]
    e = objs["empty_centre"].to_numpy()
    w1 = rng.uniform(16.2, 16.9, int(e.sum()))
    for b in ALL_BANDS:
        colour = objs.loc[e, "w1_true"].to_numpy() - objs.loc[e, f"w{b}_true"].to_numpy()
        objs.loc[e, f"w{b}_cat"] = w1 - colour
        objs.loc[e, f"w{b}_true"] = w1 - colour + 4.0
    objs["bright_star"] = bright.tolist() + [False] * prim.size
    return objs


# --------------------------------------------------------------------------------------------
# PSF and noise model

_PSF_WEIGHTS = np.array([0.84, 0.15, 0.01])  # core, wing, halo
_PSF_SCALES = np.array([1.0, 2.2, 8.0])  # sigma of each component / core sigma
_PIX_ARCSEC = tiles.CDELT_DEG * 3600.0


def _mixture_fwhm(weights: np.ndarray, sigmas: np.ndarray) -> float:
    """FWHM of a concentric mixture of normalised 2-D Gaussians."""

    def prof(r: float) -> float:
        return float(np.sum(weights / sigmas**2 * np.exp(-0.5 * r**2 / sigmas**2)))

    lo, hi, half = 0.0, 10.0 * float(sigmas.max()), 0.5 * prof(0.0)
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if prof(mid) > half else (lo, mid)
    return 2.0 * lo


@dataclasses.dataclass(frozen=True)
class _BandModel:
    band: int
    sigmas_px: np.ndarray  # PSF component sigmas
    nea_px: float  # noise-equivalent area of the PSF
    peak: float  # peak pixel per unit flux of a point source
    noise_dn: float  # per-pixel noise
    sat_dn: float  # flux above the sky at which a pixel saturates

    @property
    def flux_noise(self) -> float:
        """1-sigma flux error of a PSF fit to a point source on the sky noise."""
        return self.noise_dn * math.sqrt(self.nea_px)


def _band_model(band: int) -> _BandModel:
    unit = _mixture_fwhm(_PSF_WEIGHTS, _PSF_SCALES)
    sig = _PSF_SCALES * (FWHM_ARCSEC[band] / _PIX_ARCSEC) / unit
    s2 = sig[:, None] ** 2 + sig[None, :] ** 2
    nea = 1.0 / float(np.sum(np.outer(_PSF_WEIGHTS, _PSF_WEIGHTS) / (2 * np.pi * s2)))
    peak = float(np.sum(_PSF_WEIGHTS / (2 * np.pi * sig**2)))
    f5 = _flux(DEPTH5_MAG[band], band)
    return _BandModel(
        band=band,
        sigmas_px=sig,
        nea_px=nea,
        peak=peak,
        noise_dn=f5 / 5.0 / math.sqrt(nea),
        sat_dn=_flux(SATURATION_MAG[band], band) * peak,
    )


def _flux(mag: np.ndarray | float, band: int) -> Any:
    """DN of a magnitude: 10**(-0.4 (m - MAGZP))."""
    return 10.0 ** (-0.4 * (np.asarray(mag, dtype=np.float64) - tiles.MAGZP[band]))


BAND_MODELS: dict[int, _BandModel] = {b: _band_model(b) for b in ALL_BANDS}
"""PSF, noise and saturation of each band, derived from FWHM, depth and saturation limits."""


# --------------------------------------------------------------------------------------------
# Catalog photometry


def _psf_fraction(objs: pd.DataFrame, band: int) -> np.ndarray:
    """Fraction of an object's flux a point-source profile fit recovers."""
    sig_p = FWHM_ARCSEC[band] / 2.3548
    shape = objs["shape"].to_numpy()
    # Gaussian equivalent of the profile; de Vaucouleurs light is more concentrated.
    sig_e = objs["r_e_arcsec"].to_numpy() / 1.1774 * np.where(shape == "dev", 0.6, 1.0)
    frac = 1.0 / (1.0 + sig_e**2 / (2 * sig_p**2))
    host = objs["host_frac"].to_numpy()
    return np.where(shape == "point", 1.0, np.where(shape == "host", 1 - host + host * frac, frac))


def _measure(rng: np.random.Generator, objs: pd.DataFrame) -> dict[str, np.ndarray]:
    """AllWISE-style profile-fit photometry of catalogued objects, band by band."""
    n = len(objs)
    out: dict[str, np.ndarray] = {}
    qual = np.full((n, 4), "U", dtype="<U1")
    var = np.full((n, 4), "n", dtype="<U1")
    resolved = np.zeros(n, dtype=bool)
    cls = objs["class"].to_numpy()
    for b in ALL_BANDS:
        bm = BAND_MODELS[b]
        frac = _psf_fraction(objs, b)
        f_true = _flux(objs[f"w{b}_cat"].to_numpy(), b) * frac
        sat = objs[f"w{b}_cat"].to_numpy() < SATURATION_MAG[b]
        sig = np.sqrt(bm.flux_noise**2 + (0.015 * f_true) ** 2 + (0.04 * f_true * sat) ** 2)
        f = f_true + sig * rng.standard_normal(n)
        snr = f / sig
        det = snr >= 2.0
        mag = np.where(
            det,
            tiles.MAGZP[b] - 2.5 * np.log10(np.clip(f, 1e-30, None)),
            tiles.MAGZP[b] - 2.5 * np.log10(np.clip(f, 0, None) + 2 * sig),
        )
        out[f"w{b}mpro"] = np.round(mag, 3)
        out[f"w{b}sigmpro"] = np.where(det, np.round(1.0857 / np.clip(snr, 1e-9, None), 3), np.nan)
        out[f"w{b}snr"] = np.round(snr, 1)
        mismatch = 1.0 - frac
        good = np.clip(snr, 0, None)
        rchi2 = np.exp(rng.normal(0, 0.15, n)) * (
            1 + (0.06 * good * mismatch) ** 2 + (0.004 * good) ** 2
        )
        out[f"w{b}rchi2"] = np.round(rchi2, 4)
        resolved |= (rchi2 > 3) & (snr >= 3)
        qual[:, b - 1] = np.select([snr >= 10, snr >= 3, snr >= 2], ["A", "B", "C"], "U")
        # Variability index 0-9 (n: too few good epochs); quasars vary more in W1/W2.
        level = np.where(
            (cls == "quasar") & (b <= 2),
            rng.integers(0, 10, n),
            np.minimum(rng.geometric(0.7, n) - 1, 9),
        )
        var[:, b - 1] = np.where(snr >= 3, level.astype(str), "n")
    big = (objs["r_e_arcsec"].to_numpy() > 6) & (objs["w1_cat"].to_numpy() < 13.5)
    out["ext_flg"] = (resolved.astype(np.int64) + 2 * big.astype(np.int64)).astype(np.int64)
    out["ph_qual"] = np.array(["".join(r) for r in qual], dtype=object)
    out["var_flg"] = np.array(["".join(r) for r in var], dtype=object)
    return out


def _neighbours(ra: np.ndarray, dec: np.ndarray, radius_arcsec: float) -> np.ndarray:
    """Number of other positions within ``radius_arcsec`` of each position (small fields)."""
    dec0 = float(np.mean(dec))
    x = ((ra - ra[0] + 180) % 360 - 180) * math.cos(math.radians(dec0)) * 3600
    y = (dec - dec0) * 3600
    counts = np.zeros(ra.size, dtype=np.int64)
    for s in range(0, ra.size, 512):
        d2 = (x[s : s + 512, None] - x[None, :]) ** 2 + (y[s : s + 512, None] - y[None, :]) ** 2
        counts[s : s + 512] = np.sum(d2 < radius_arcsec**2, axis=1) - 1
    return counts


# --------------------------------------------------------------------------------------------
# Rendering

_STAMP_RADII = np.array([6, 10, 16, 24, 36, 56, 96, 160])  # px; stamps are 2R+1 wide


def _shape_components(objs: pd.DataFrame) -> tuple[np.ndarray, ...]:
    """Pre-PSF profile of each object: amplitudes and covariances (px^2), shape (N, K)."""
    n = len(objs)
    amp = np.zeros((n, _K_SHAPE))
    var = np.zeros((n, _K_SHAPE))
    shape = objs["shape"].to_numpy()
    amp[shape == "point", 0] = 1.0
    for name in ("exp", "dev"):
        a, v = _MOG[name]
        sel = shape == name
        amp[sel, : a.size] = a
        var[sel, : a.size] = v
    a, v = _MOG["exp"]
    host = shape == "host"
    f = objs["host_frac"].to_numpy()[host]
    amp[host, 0] = 1 - f
    amp[host, 1 : 1 + a.size] = f[:, None] * a
    var[host, 1 : 1 + a.size] = v
    re2 = (objs["r_e_arcsec"].to_numpy() / _PIX_ARCSEC) ** 2
    major = var * re2[:, None]
    minor = major * objs["axis_ratio"].to_numpy()[:, None] ** 2
    # Position angle east of north; pixel x grows to the west, y to the north.
    pa = np.radians(objs["pa_deg"].to_numpy())[:, None]
    s, c = np.sin(pa), np.cos(pa)
    cxx = major * s**2 + minor * c**2
    cyy = major * c**2 + minor * s**2
    cxy = (minor - major) * s * c
    return amp, cxx, cyy, cxy


def _with_psf(shape_comps: tuple[np.ndarray, ...], bm: _BandModel) -> tuple[np.ndarray, ...]:
    """Convolve profiles with the band's PSF: covariances add, amplitudes multiply."""
    amp, cxx, cyy, cxy = shape_comps
    s2 = bm.sigmas_px**2
    a = (amp[:, :, None] * _PSF_WEIGHTS[None, None, :]).reshape(len(amp), -1)
    xx = (cxx[:, :, None] + s2[None, None, :]).reshape(len(amp), -1)
    yy = (cyy[:, :, None] + s2[None, None, :]).reshape(len(amp), -1)
    xy = np.repeat(cxy, s2.size, axis=1)
    return a, xx, yy, xy


def _stamp_radius(flux: np.ndarray, comps: tuple[np.ndarray, ...], thr: float) -> np.ndarray:
    """Radius (from _STAMP_RADII) beyond which every component is below ``thr`` DN."""
    a, xx, yy, xy = comps
    det = xx * yy - xy**2
    peak = flux[:, None] * a / (2 * np.pi * np.sqrt(det))
    lam = 0.5 * (xx + yy) + np.sqrt(0.25 * (xx - yy) ** 2 + xy**2)
    r = np.sqrt(2 * np.log(np.clip(peak / thr, 1.0, None)) * lam).max(axis=1)
    idx = np.minimum(np.searchsorted(_STAMP_RADII, r), _STAMP_RADII.size - 1)
    return _STAMP_RADII[idx]


def _add_stamps(
    img: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    flux: np.ndarray,
    comps: tuple[np.ndarray, ...],
    radius: int,
    thr: float,
) -> None:
    """Add Gaussian-mixture stamps of one size at 0-based array positions (cx, cy).

    Components whose peak stays below ``thr`` for every source are skipped; round components
    (all of a point source's) are evaluated as separable x and y factors.
    """
    a, xx, yy, xy = comps
    det = xx * yy - xy**2
    ixx, iyy, ixy = yy / det, xx / det, -xy / det
    norm = flux[:, None] * a / (2 * np.pi * np.sqrt(det))
    live = np.nonzero(norm.max(axis=0) >= thr)[0]
    size = 2 * radius + 1
    ix0 = np.rint(cx).astype(np.int64) - radius
    iy0 = np.rint(cy).astype(np.int64) - radius
    grid = np.arange(size)
    chunk = max(1, 1_000_000 // (size * size))
    ny, nx = img.shape
    for s in range(0, cx.size, chunk):
        sl = slice(s, s + chunk)
        dx = ix0[sl, None] + grid[None, :] - cx[sl, None]  # (n, S) along x
        dy = iy0[sl, None] + grid[None, :] - cy[sl, None]  # (n, S) along y
        stamp = np.zeros((dx.shape[0], size, size))  # (n, y, x)
        dxdy = None
        for k in live:
            if not np.any(xy[sl, k]):
                gx = np.exp(-0.5 * ixx[sl, k, None] * dx**2) * norm[sl, k, None]
                gy = np.exp(-0.5 * iyy[sl, k, None] * dy**2)
                stamp += gy[:, :, None] * gx[:, None, :]
                continue
            if dxdy is None:
                dxdy = dy[:, :, None] * dx[:, None, :]
            q = (ixx[sl, k, None, None] * dx[:, None, :] ** 2) + (
                iyy[sl, k, None, None] * dy[:, :, None] ** 2
            )
            q += (2 * ixy[sl, k, None, None]) * dxdy
            q *= -0.5
            np.exp(q, out=q)
            q *= norm[sl, k, None, None]
            stamp += q
        for j in range(stamp.shape[0]):
            x0, y0 = ix0[s + j], iy0[s + j]
            xa, ya = max(x0, 0), max(y0, 0)
            xb, yb = min(x0 + size, nx), min(y0 + size, ny)
            if xa < xb and ya < yb:
                img[ya:yb, xa:xb] += stamp[j, ya - y0 : yb - y0, xa - x0 : xb - x0]


def _render_tile(
    rng: np.random.Generator,
    objs: pd.DataFrame,
    shape_comps: tuple[np.ndarray, ...],
    cid: str,
    crop: tiles.Crop,
    bands: tuple[int, ...],
    nan_patch: bool,
) -> dict[int, np.ndarray]:
    """Images (float32, per band) of one tile crop: sky, sources, noise, saturation."""
    t_ra, t_dec = tiles.tile_center(cid)
    x, y, front = tiles.world_to_tile_pixel(objs["ra_true"], objs["dec_true"], t_ra, t_dec)
    cx = np.asarray(x) - 1.0 - crop.x0
    cy = np.asarray(y) - 1.0 - crop.y0
    yy, xx = np.mgrid[0 : crop.ny, 0 : crop.nx]
    images: dict[int, np.ndarray] = {}
    for b in bands:
        bm = BAND_MODELS[b]
        comps = _with_psf(shape_comps, bm)
        flux = _flux(objs[f"w{b}_true"].to_numpy(), b)
        thr = 0.03 * bm.noise_dn
        radius = _stamp_radius(flux, comps, thr)
        kind = objs["shape"].to_numpy()
        on = (
            front
            & (cx + radius >= 0)
            & (cx - radius <= crop.nx - 1)
            & (cy + radius >= 0)
            & (cy - radius <= crop.ny - 1)
        )
        img = np.zeros((crop.ny, crop.nx))
        for r in np.unique(radius[on]):
            for name in np.unique(kind[on & (radius == r)]):
                sel = on & (radius == r) & (kind == name)
                sub = tuple(c[sel] for c in comps)
                _add_stamps(img, cx[sel], cy[sel], flux[sel], sub, int(r), thr)
        gx, gy = rng.uniform(-1, 1, 2)
        sky_level = BACKGROUND_DN[b] * (
            1 + 0.02 * (gx * (xx + crop.x0) + gy * (yy + crop.y0)) / tiles.TILE_NPIX
        )
        img += sky_level + bm.noise_dn * rng.standard_normal(img.shape)
        # Saturated cores are flat-topped at the same level everywhere on the tile.
        np.minimum(img, BACKGROUND_DN[b] + bm.sat_dn, out=img)
        images[b] = img.astype(np.float32)
    if nan_patch:  # a masked patch in one band, as left by bad frames
        b = int(rng.choice(bands))
        w, h = rng.integers(8, 24, 2)
        px, py = rng.integers(0, max(1, crop.nx - w)), rng.integers(0, max(1, crop.ny - h))
        images[b][py : py + h, px : px + w] = np.nan
    return images


# --------------------------------------------------------------------------------------------
# The catalog: AllWISE columns, units and descriptions

_COLUMNS: tuple[tuple[str, pa.DataType, str, str], ...] = (
    ("cntr", pa.int64(), "", "Unique identification number for this object"),
    ("designation", pa.string(), "", "Sexagesimal, equatorial position-based source name"),
    ("source_id", pa.string(), "", "Unique source ID: Atlas Tile coadd_id and source number"),
    ("ra", pa.float64(), "deg", "J2000 right ascension"),
    ("dec", pa.float64(), "deg", "J2000 declination"),
    ("glon", pa.float64(), "deg", "Galactic longitude"),
    ("glat", pa.float64(), "deg", "Galactic latitude"),
    ("wx", pa.float64(), "pix", "x-pixel coordinate of the source on the Atlas Image (1-based)"),
    ("wy", pa.float64(), "pix", "y-pixel coordinate of the source on the Atlas Image (1-based)"),
    ("coadd_id", pa.string(), "", "Atlas Tile identifier from which the source was extracted"),
    ("src", pa.int64(), "", "Sequential number of the source on its Atlas Tile"),
    *(
        col
        for b in ALL_BANDS
        for col in (
            (f"w{b}mpro", pa.float64(), "mag",
             f"W{b} profile-fit magnitude, or the 95% confidence upper limit if SNR < 2"),
            (f"w{b}sigmpro", pa.float64(), "mag",
             f"W{b} profile-fit magnitude uncertainty; null for upper limits"),
            (f"w{b}snr", pa.float64(), "", f"W{b} profile-fit signal-to-noise ratio"),
            (f"w{b}rchi2", pa.float64(), "", f"Reduced chi^2 of the W{b} profile-fit photometry"),
        )
    ),
    ("nb", pa.int64(), "", "Number of PSF components used simultaneously in the profile fit"),
    ("na", pa.int64(), "", "Active deblending flag"),
    ("cc_flags", pa.string(), "", "Contamination and confusion flags, W1 W2 W3 W4"),
    ("ext_flg", pa.int64(), "", "Extended source flag"),
    ("var_flg", pa.string(), "", "Variability flag, W1 W2 W3 W4"),
    ("ph_qual", pa.string(), "", "Photometric quality flag, W1 W2 W3 W4 (A, B, C, U)"),
)  # fmt: skip


def catalog_schema() -> pa.Schema:
    """The catalog schema, with units and descriptions in the field metadata."""
    fields = []
    for name, typ, unit, desc in _COLUMNS:
        meta = {b"description": desc.encode()}
        if unit:
            meta[b"unit"] = unit.encode()
        fields.append(pa.field(name, typ, metadata=meta))
    return pa.schema(
        fields, metadata={b"description": b"Synthetic AllWISE Source Catalog (iic_survey)"}
    )


def designations(ra: np.ndarray, dec: np.ndarray) -> list[str]:
    """IAU names 'Jhhmmss.ss+ddmmss.s' of positions, truncated as AllWISE does."""
    t = np.floor(np.asarray(ra) / 15.0 * 360000.0 + 1e-6).astype(np.int64)
    h, m, s = t // 360000, (t // 6000) % 60, t % 6000
    d = np.floor(np.abs(np.asarray(dec)) * 36000.0 + 1e-6).astype(np.int64)
    dd, dm, ds = d // 36000, (d // 600) % 60, d % 600
    sign = np.where(np.asarray(dec) < 0, "-", "+")
    return [
        f"J{h[i]:02d}{m[i]:02d}{s[i] // 100:02d}.{s[i] % 100:02d}"
        f"{sign[i]}{dd[i]:02d}{dm[i]:02d}{ds[i] // 10:02d}.{ds[i] % 10}"
        for i in range(t.size)
    ]


def _field_catalog(
    rng: np.random.Generator, objs: pd.DataFrame, field: _Field
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Catalog rows and truth rows of the catalogued objects of one field."""
    cat = objs[objs["catalogued"]].reset_index(drop=True)
    ra, dec = cat["ra"].to_numpy(), cat["dec"].to_numpy()
    best = tiles.best_tiles(ra, dec)
    cid8 = best["coadd_id"].to_numpy()
    missing = sorted(set(cid8) - set(field.crops))
    if missing:
        raise RuntimeError(f"sources assigned to unwritten tiles {missing} (field geometry bug)")
    x0 = np.array([field.crops[c].x0 for c in cid8])
    y0 = np.array([field.crops[c].y0 for c in cid8])
    grid_index = {c: i for i, c in enumerate(tiles.tile_grid()["coadd_id"])}
    order = np.lexsort((ra, dec, cid8))
    src = np.zeros(len(cat), dtype=np.int64)
    for c in np.unique(cid8):
        members = order[cid8[order] == c]
        src[members] = np.arange(1, members.size + 1)
    cntr = np.array([(grid_index[c] + 1) * 10_000_000 for c in cid8], dtype=np.int64) + src
    phot = _measure(rng, cat)
    gal = SkyCoord(ra * u.deg, dec * u.deg, frame="icrs").galactic
    # Rows near a bright star sit in its halo: 'h' (contaminated), or 'H' for rows that are
    # only halo (the empty-centre ones).
    bright = objs[objs["bright_star"]]
    near = np.zeros(len(cat), dtype=bool)
    for bra, bdec in zip(bright["ra_true"], bright["dec_true"], strict=True):
        sep = SkyCoord(ra * u.deg, dec * u.deg).separation(SkyCoord(bra * u.deg, bdec * u.deg))
        near |= (sep.arcsec < 60) & (sep.arcsec > 1)
    flag = np.where(cat["empty_centre"].to_numpy(), "H", "h")
    cc = np.where(near, np.char.add(np.char.add(flag, flag), "00"), "0000")
    hidden = cat["hidden_companion"].to_numpy().astype(np.int64)
    nb = np.minimum(1 + _neighbours(ra, dec, 8.0) + hidden, 9)
    atlas = np.char.add(cid8.astype(str), tiles.AC51)
    rows = {
        "cntr": cntr,
        "designation": designations(ra, dec),
        "source_id": [f"{a}-{s:06d}" for a, s in zip(atlas, src, strict=True)],
        "ra": ra,
        "dec": dec,
        "glon": gal.l.deg,
        "glat": gal.b.deg,
        "wx": best["x"].to_numpy() - x0,
        "wy": best["y"].to_numpy() - y0,
        "coadd_id": atlas.astype(object),
        "src": src,
        **{k: v for k, v in phot.items() if k not in ("ext_flg", "ph_qual", "var_flg")},
        "nb": nb,
        "na": ((nb > 1) & (rng.random(len(cat)) < 0.5)).astype(np.int64),
        "cc_flags": cc.astype(object),
        "ext_flg": phot["ext_flg"],
        "var_flg": phot["var_flg"],
        "ph_qual": phot["ph_qual"],
    }
    catalog = pd.DataFrame(rows)
    truth = pd.DataFrame(
        {
            "cntr": cntr,
            "class": cat["class"].to_numpy().astype(object),
            "subclass": cat["subclass"].to_numpy().astype(object),
            "field": cat["field"].to_numpy().astype(np.int64),
            "ra_true": cat["ra_true"].to_numpy(),
            "dec_true": cat["dec_true"].to_numpy(),
            **{f"w{b}_true": cat[f"w{b}_true"].to_numpy() for b in ALL_BANDS},
            "shape": cat["shape"].to_numpy().astype(object),
            "r_e_arcsec": cat["r_e_arcsec"].to_numpy(),
            "axis_ratio": cat["axis_ratio"].to_numpy(),
            "extended": (cat["shape"].to_numpy() != "point")
            & (cat["r_e_arcsec"].to_numpy() >= 2.5),
            "empty_centre": cat["empty_centre"].to_numpy(),
            "offset_arcsec": cat["offset_arcsec"].to_numpy(),
            "hidden_companion": cat["hidden_companion"].to_numpy(),
            "saturated": cat["w1_true"].to_numpy() < SATURATION_MAG[1],
            "near_bright_star": near,
        }
    )
    return catalog, truth


def _write_catalog(catalog: pd.DataFrame, out: pathlib.Path) -> list[int]:
    """Hive-partitioned Parquet by order-5 pixel, plus _metadata and _common_metadata."""
    schema = catalog_schema()
    k5 = sky.pixel_of(catalog["ra"].to_numpy(), catalog["dec"].to_numpy(), 5)
    collected = []
    pixels = sorted(int(p) for p in np.unique(k5))
    for pix in pixels:
        part = catalog[k5 == pix].sort_values("cntr")
        rel = f"healpix_k0={pix // 1024}/healpix_k5={pix}/part0.snappy.parquet"
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pandas(part, schema=schema, preserve_index=False)
        table = table.replace_schema_metadata(schema.metadata)
        pq.write_table(table, path, compression="snappy")
        md = pq.read_metadata(path)
        md.set_file_path(rel)
        collected.append(md)
    pq.write_metadata(schema, out / "_common_metadata")
    pq.write_metadata(schema, out / "_metadata", metadata_collector=collected)
    return pixels


# --------------------------------------------------------------------------------------------
# Writing a sky


def _prepare_root(root: pathlib.Path, overwrite: bool) -> None:
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
    _prepare_root(root_p, overwrite)
    root_p.parent.mkdir(parents=True, exist_ok=True)
    tmp = root_p.parent / f".{root_p.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        doc = _write_into(tmp, config)
        if root_p.exists():
            old = root_p.parent / f".{root_p.name}.old-{os.getpid()}"
            root_p.rename(old)
            tmp.rename(root_p)
            shutil.rmtree(old)
        else:
            tmp.rename(root_p)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %d sources on %d tiles to %s", doc["n_sources"], len(doc["tiles"]), root_p)
    return SkyManifest.load(root_p)


def _write_into(out: pathlib.Path, config: SkyConfig) -> dict[str, Any]:
    half = config.field_size_deg / 2
    n_fields = len(config.fields)
    counts = np.full(n_fields, config.n_sources // n_fields)
    counts[: config.n_sources % n_fields] += 1
    catalogs, truths, all_tiles, field_docs = [], [], [], []
    for i, (ra0, dec0) in enumerate(config.fields):
        field = _Field(i, ra0, dec0, half, _field_tiles(ra0, dec0, half))
        rng = np.random.default_rng([config.seed, i])
        objs = _draw_field(rng, field, int(counts[i]), config)
        catalog, truth = _field_catalog(rng, objs, field)
        shape_comps = _shape_components(objs)
        grid_index = {c: k for k, c in enumerate(tiles.tile_grid()["coadd_id"])}
        nan_tile = max(field.crops, key=lambda c: field.crops[c].nx * field.crops[c].ny)
        for cid, crop in field.crops.items():
            tile_rng = np.random.default_rng([config.seed, i, grid_index[cid]])
            nan_patch = config.artefacts and cid == nan_tile
            images = _render_tile(tile_rng, objs, shape_comps, cid, crop, config.bands, nan_patch)
            for b, img in images.items():
                path = out / IMAGES_PREFIX / tile_relpath(cid, b)
                path.parent.mkdir(parents=True, exist_ok=True)
                hdr = tiles.tile_header(cid, b, crop)
                hdr["COMMENT"] = f"Synthetic sky by iic_survey.synthetic, seed {config.seed}"
                fits.PrimaryHDU(data=img, header=hdr).writeto(path)
            all_tiles.append(tiles.atlas_id(cid))
        catalogs.append(catalog)
        truths.append(truth)
        field_docs.append(
            {
                "ra": ra0,
                "dec": dec0,
                "n_sources": len(catalog),
                "tiles": {tiles.atlas_id(c): list(crop) for c, crop in field.crops.items()},
            }
        )
        log.info("field %d: %d sources, %d tiles", i, len(catalog), len(field.crops))
    catalog = pd.concat(catalogs, ignore_index=True)
    if catalog["cntr"].duplicated().any():
        raise RuntimeError("duplicate cntr values (generator bug)")
    pixels = _write_catalog(catalog, out / CATALOG_PREFIX)
    truth = pd.concat(truths, ignore_index=True).sort_values("cntr", ignore_index=True)
    truth.to_parquet(out / "truth.parquet", index=False)
    doc = {
        "format_version": FORMAT_VERSION,
        "generator": "iic_survey.synthetic",
        "config": config.to_dict(),
        "n_sources": len(catalog),
        "pixels": pixels,
        "tiles": sorted(all_tiles),
        "bands": list(config.bands),
        "catalog": CATALOG_PREFIX,
        "images": IMAGES_PREFIX,
        "fields": field_docs,
    }
    (out / "sky.json").write_text(json.dumps(doc, indent=1) + "\n")
    return doc


# --------------------------------------------------------------------------------------------
# Command line


def tiny_config(seed: int = 0) -> SkyConfig:
    """The test sky: 2,000 sources in two 0.25 deg fields (6 order-5 pixels, 5 tiles)."""
    return SkyConfig(
        seed=seed,
        n_sources=2000,
        fields=(DEFAULT_FIELDS[0], DEFAULT_FIELDS[2]),
        field_size_deg=0.25,
    )


def add_sky_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that build a :class:`SkyConfig` (shared by the CLI and jobs/make_sky.py)."""
    d = SkyConfig.__dataclass_fields__
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


def config_from_args(args: argparse.Namespace) -> SkyConfig:
    """The :class:`SkyConfig` that parsed :func:`add_sky_arguments` options describe."""
    if args.tiny:
        return tiny_config(args.seed)
    try:
        fields = (
            tuple(tuple(float(v) for v in f.split(",")) for f in args.fields.split(";") if f)
            if args.fields
            else DEFAULT_FIELDS
        )
        bands = tuple(int(b) for b in args.bands.split(",") if b)
    except ValueError as exc:
        raise ValueError(f"cannot parse --fields/--bands: {exc}") from exc
    if any(len(f) != 2 for f in fields):
        raise ValueError(f"--fields needs 'ra,dec' pairs separated by ';', got {args.fields!r}")
    return SkyConfig(
        seed=args.seed,
        n_sources=args.n_sources,
        fields=fields,  # type: ignore[arg-type]
        field_size_deg=args.field_size,
        bands=bands,
        artefacts=not args.no_artefacts,
    )


def cli(argv: list[str] | None = None) -> int:
    """``python -m iic_survey make-sky ROOT [--tiny] [--seed N] [--n-sources N] ...``."""
    parser = argparse.ArgumentParser(prog="iic_survey make-sky", description=__doc__.split("\n")[0])
    add_sky_arguments(parser)
    args = parser.parse_args(argv)
    try:
        manifest = write_sky(args.root, config_from_args(args), overwrite=args.overwrite)
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
