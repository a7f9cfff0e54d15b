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

Classes are balanced by keeping, per class, the rows with the smallest keyed BLAKE2b hash of
``cntr``; the 8:1:1 split is another keyed hash of ``cntr`` (or of a HEALPix pixel, so that
neighbours never straddle splits). Both are pure functions of the ids: stable across runs,
machines, row order and Python versions (``hash()`` is salted per process; BLAKE2b is not).

Images are made by :class:`iic_survey.stamps.StampMaker`, exactly as the sky pipeline makes
them, so training and inference cannot drift apart. :class:`TrainingSetWriter` stores the set
as Parquet, one folder per split (``<root>/split=train/part-*.parquet``, a hive partition, so
``pandas.read_parquet(root)`` sees a ``split`` column), with the 3x80x80 image and the catalog
features as ``arrow.fixed_shape_tensor`` columns, and a ``_manifest.json`` beside them (feature
names, RGB parameters, counts) that the training job reads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from iic_survey import CLASSES, sky
from iic_survey._util import did_you_mean

logger = logging.getLogger(__name__)

PAPER_COUNTS: dict[str, int] = {"galaxy": 7298, "quasar": 7215, "star": 7223}
"""Sources per class in Zhao et al. (2023), Table 1."""

SPLITS: tuple[str, ...] = ("train", "val", "test")
"""Split names, in the order of :attr:`SplitConfig.fractions`."""

SDSS_CLASSES: dict[str, str] = {"GALAXY": "galaxy", "QSO": "quasar", "STAR": "star"}
"""SDSS ``SpecObj.class`` -> our class name."""

SDSS_ROW_CAP = 500_000
"""SkyServer returns at most this many rows per query (silently truncated)."""

SDSS_SQL = (
    "SELECT s.specobjid, s.ra, s.dec, s.class, s.z FROM SpecObj s "
    "WHERE s.zWarning = 0 AND s.class IN ('GALAXY','QSO','STAR') "
    "AND s.ra >= {lo!r} AND s.ra < {hi!r}"
)
"""One RA stripe of the spectroscopic label query."""

_SQL_STRIPE = re.compile(r"s\.ra >= ([-+0-9.e]+) AND s\.ra < ([-+0-9.e]+)")


def class_index(classes: pd.Series | np.ndarray) -> np.ndarray:
    """Label indices into ``CLASSES`` of class names; raises on an unknown name."""
    names = np.asarray(classes, dtype=object)
    lookup = {c: i for i, c in enumerate(CLASSES)}
    unknown = sorted({str(c) for c in names if c not in lookup})
    if unknown:
        raise ValueError(f"unknown class names {unknown}; expected {CLASSES}")
    return np.fromiter((lookup[c] for c in names), dtype=np.int64, count=len(names))


# ---------------------------------------------------------------------------------------------
# Keyed hashes: balancing and splits


def hash_unit(ids: np.ndarray, key: str) -> np.ndarray:
    """Map int64 ids to floats in [0, 1) by keyed BLAKE2b of their little-endian bytes.

    Different ``key``s give independent draws (the balance and split hashes must not correlate).
    """
    raw = np.ascontiguousarray(np.asarray(ids, dtype="<i8"))
    k = key.encode()[:64]
    out = np.empty(raw.shape[0], dtype=np.uint64)
    for i, b in enumerate(raw.view(np.uint8).reshape(-1, 8)):
        out[i] = int.from_bytes(
            hashlib.blake2b(b.tobytes(), digest_size=8, key=k).digest(), "little"
        )
    return (out >> np.uint64(11)).astype(np.float64) / float(1 << 53)


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """How sources are dealt into train / val / test."""

    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    """Fractions of train, val and test (the paper's 8:1:1); must sum to 1."""
    block_order: int | None = None
    """If set, hash the NESTED HEALPix pixel at this order instead of ``cntr``: every source in a
    pixel lands in the same split, so neighbours and blends cannot leak across splits (order 8
    pixels are ~14' across)."""
    key: str = "iic-split-v1"
    """Hash key; change it to draw a different split of the same sources."""

    def __post_init__(self) -> None:
        fr = tuple(float(f) for f in self.fractions)
        object.__setattr__(self, "fractions", fr)
        if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1) > 1e-9:
            raise ValueError(
                f"split fractions must be 3 non-negative numbers summing to 1, got {fr}"
            )
        if self.block_order is not None:
            sky.check_order(self.block_order)


def assign_split(
    cntr: np.ndarray, ra: np.ndarray, dec: np.ndarray, config: SplitConfig = SplitConfig()
) -> np.ndarray:
    """Split name (``SPLITS``) of each source: a pure function of its id (or its pixel)."""
    ids = np.asarray(cntr, dtype=np.int64)
    if config.block_order is not None:
        ids = sky.pixel_of(ra, dec, config.block_order)
    u = hash_unit(ids, config.key)
    edges = np.cumsum(config.fractions)[:2]
    return np.asarray(SPLITS, dtype=object)[np.searchsorted(edges, u, side="right")]


def balance(
    df: pd.DataFrame,
    targets: int | Mapping[str, int] | None = None,
    key: str = "iic-balance-v1",
) -> pd.DataFrame:
    """Keep at most ``targets`` rows per class (column ``class``), chosen by a keyed hash of cntr.

    ``targets`` is one count for every class, a count per class (e.g. :data:`PAPER_COUNTS`), or
    None for "as many as the rarest class has". A class with fewer rows than asked keeps them all
    (with a warning). The choice depends only on the ids, not on row order, and a smaller target
    keeps a subset of what a larger one keeps.
    """
    counts = df["class"].value_counts()
    missing = [c for c in CLASSES if counts.get(c, 0) == 0]
    if missing:
        raise ValueError(f"no labelled sources of class {missing}; cannot balance")
    if targets is None:
        want = dict.fromkeys(CLASSES, int(counts.min()))
    elif isinstance(targets, Mapping):
        unknown = [c for c in targets if c not in CLASSES]
        if unknown:
            raise ValueError(f"unknown class {unknown[0]!r}{did_you_mean(unknown[0], CLASSES)}")
        want = {c: int(targets.get(c, 0)) for c in CLASSES}
    else:
        want = dict.fromkeys(CLASSES, int(targets))
    rank = hash_unit(df["cntr"].to_numpy(), key)
    keep = np.zeros(len(df), dtype=bool)
    cls = df["class"].to_numpy()
    for c in CLASSES:
        idx = np.flatnonzero(cls == c)
        if len(idx) < want[c]:
            logger.warning(
                "class %s: %d sources, fewer than the %d asked for", c, len(idx), want[c]
            )
        keep[idx[np.argsort(rank[idx], kind="stable")[: want[c]]]] = True
    return df.loc[keep].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# SDSS spectroscopic labels


@dataclasses.dataclass(frozen=True)
class SDSSConfig:
    """How spectroscopic labels are fetched from SkyServer."""

    data_release: int = 17
    """SDSS data release."""
    ra_range: tuple[float, float] = (0.0, 360.0)
    """RA interval [lo, hi) to fetch, degrees."""
    stripe_deg: float = 10.0
    """Width of the RA stripe asked in one query; a stripe that hits the row cap is halved."""
    row_cap: int = SDSS_ROW_CAP
    """Rows at which SkyServer truncates a result: a page this full is split and re-asked."""
    min_stripe_deg: float = 1e-3
    """Give up (raise) rather than halve a full stripe below this width."""
    timeout_s: float = 600.0
    """Per-query time limit."""

    def __post_init__(self) -> None:
        lo, hi = (float(x) for x in self.ra_range)
        object.__setattr__(self, "ra_range", (lo, hi))
        if not 0 <= lo < hi <= 360:
            raise ValueError(f"ra_range must satisfy 0 <= lo < hi <= 360, got {self.ra_range}")
        if self.stripe_deg <= 0 or self.min_stripe_deg <= 0 or self.row_cap < 1:
            raise ValueError("stripe_deg, min_stripe_deg and row_cap must be positive")


def sdss_sql(lo: float, hi: float) -> str:
    """The label query for one RA stripe [lo, hi)."""
    return SDSS_SQL.format(lo=float(lo), hi=float(hi))


def stripe_of_sql(sql: str) -> tuple[float, float]:
    """Inverse of :func:`sdss_sql` (used by the offline SkyServer stand-in in the tests)."""
    m = _SQL_STRIPE.search(sql)
    if m is None:
        raise ValueError(f"not a label stripe query: {sql!r}")
    return float(m.group(1)), float(m.group(2))


def _astroquery_sql(sql: str, config: SDSSConfig) -> pd.DataFrame:
    import warnings

    from astropy.utils.exceptions import AstropyWarning
    from astroquery.sdss import SDSS

    with warnings.catch_warnings():
        # specobjid overflows int64; astroquery re-parses it as uint64 right after this warning.
        warnings.filterwarnings("ignore", "OverflowError converting", AstropyWarning)
        table = SDSS.query_sql(
            sql, data_release=config.data_release, timeout=config.timeout_s, cache=False
        )
    if table is None:  # astroquery's "no rows"
        return pd.DataFrame({"specobjid": [], "ra": [], "dec": [], "class": [], "z": []})
    return table.to_pandas()


def fetch_sdss(
    config: SDSSConfig = SDSSConfig(),
    query: Callable[[str, SDSSConfig], pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """Spectroscopic labels (specobjid, ra, dec, class, z) in ``config.ra_range``, all pages.

    ``query`` runs one SQL string (default: ``astroquery.sdss.SDSS.query_sql``); tests point
    astroquery at a local stand-in of SkyServer instead of replacing it.
    """
    run = query or _astroquery_sql
    lo, hi = config.ra_range
    todo = [(a, min(a + config.stripe_deg, hi)) for a in np.arange(lo, hi, config.stripe_deg)]
    pages: list[pd.DataFrame] = []
    while todo:
        a, b = todo.pop(0)
        page = run(sdss_sql(a, b), config)
        if len(page) >= config.row_cap:
            if b - a < 2 * config.min_stripe_deg:
                raise RuntimeError(
                    f"RA stripe [{a}, {b}) still returns {len(page)} rows (the cap); "
                    "lower SDSSConfig.min_stripe_deg or page by declination too"
                )
            mid = (a + b) / 2
            logger.info("SDSS stripe [%g, %g) hit the %d-row cap: halving", a, b, config.row_cap)
            todo[:0] = [(a, mid), (mid, b)]
            continue
        logger.info("SDSS stripe [%g, %g): %d spectra", a, b, len(page))
        pages.append(page)
    df = pd.concat(pages, ignore_index=True) if pages else pd.DataFrame()
    if df.empty:
        return pd.DataFrame(
            {
                "specobjid": pd.Series([], dtype="uint64"),
                "ra": [],
                "dec": [],
                "class": pd.Series([], dtype=object),
                "z": [],
            }
        )
    raw = df["class"].astype(str).str.strip().str.upper()
    bad = sorted(set(raw) - set(SDSS_CLASSES))
    if bad:
        raise ValueError(f"SkyServer returned unexpected classes {bad}")
    out = pd.DataFrame(
        {
            "specobjid": df["specobjid"].astype("uint64"),
            "ra": df["ra"].astype("float64"),
            "dec": df["dec"].astype("float64"),
            "class": raw.map(SDSS_CLASSES).astype(object),
            "z": df["z"].astype("float64"),
        }
    )
    return out.drop_duplicates("specobjid").reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Crossmatch


def pixels_near(
    ra: np.ndarray, dec: np.ndarray, radius_arcsec: float, order: int, n_points: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """(row, pixel) pairs: the NESTED pixels at ``order`` each position's match circle reaches.

    Tests the centre and the vertices of a polygon circumscribing the circle: at match radii
    (arcseconds) a pixel edge is straight, and a half-plane that meets a convex polygon contains
    one of its vertices, so only a pixel corner poking between two vertices could be missed.
    """
    ra = np.asarray(ra, dtype=np.float64)
    dec = np.asarray(dec, dtype=np.float64)
    r = np.radians(radius_arcsec / 3600.0) / np.cos(np.pi / n_points)
    # Points at angular distance r from each position, by rotating on the sphere (exact).
    theta = np.linspace(0.0, 2 * np.pi, n_points, endpoint=False)[:, None]  # (P, 1)
    d0, a0 = np.radians(dec)[None, :], np.radians(ra)[None, :]  # (1, N)
    sin_d = np.sin(d0) * np.cos(r) + np.cos(d0) * np.sin(r) * np.cos(theta)  # (P, N)
    d1 = np.arcsin(np.clip(sin_d, -1, 1))
    a1 = a0 + np.arctan2(np.sin(theta) * np.sin(r) * np.cos(d0), np.cos(r) - np.sin(d0) * sin_d)
    ras = np.concatenate([ra[None, :], np.degrees(a1) % 360.0])  # (P + 1, N)
    decs = np.concatenate([dec[None, :], np.degrees(d1)])
    pix = sky.pixel_of(ras.ravel(), decs.ravel(), order).reshape(ras.shape)
    rows = np.broadcast_to(np.arange(len(ra)), pix.shape)
    pairs = np.unique(np.stack([rows.ravel(), pix.ravel()], axis=1), axis=0)
    return pairs[:, 0], pairs[:, 1]


def crossmatch(
    labels: pd.DataFrame,
    catalog: Any,
    radius_arcsec: float = 2.5,
    order: int = 5,
    columns: list[str] | None = None,
) -> pd.DataFrame:
    """Nearest AllWISE source within ``radius_arcsec`` of each label position, one to one.

    Parameters
    ----------
    labels
        Must have ``ra``, ``dec`` (degrees) and ``class``; other columns are carried along.
    catalog
        An ``iic_survey.catalog.AllWiseCatalog`` (anything with ``pixels(order)`` and
        ``read_pixel(pixel, order, columns)``); each needed pixel is read exactly once.
    columns
        Catalog columns to return (``cntr``, ``ra``, ``dec`` are always read).

    Returns
    -------
    The matched catalog rows with the label columns joined (label ``ra``/``dec`` renamed to
    ``label_ra``/``label_dec``) and ``sep_arcsec``. A WISE source claimed by several labels keeps
    the nearest one only (a spectrum and its duplicate cannot both become training rows).
    """
    from astropy import units as u
    from astropy.coordinates import SkyCoord, match_coordinates_sky

    if radius_arcsec <= 0:
        raise ValueError(f"match radius must be positive, got {radius_arcsec}")
    cols = list(dict.fromkeys(["cntr", "ra", "dec", *(columns or [])]))
    rows, pix = pixels_near(labels["ra"].to_numpy(), labels["dec"].to_numpy(), radius_arcsec, order)
    available = np.intersect1d(np.unique(pix), np.asarray(catalog.pixels(order), dtype=np.int64))
    lab_coord = SkyCoord(labels["ra"].to_numpy() * u.deg, labels["dec"].to_numpy() * u.deg)
    candidates: list[pd.DataFrame] = []  # only rows within the radius: memory ~ matches
    for p in available:
        idx = np.unique(rows[pix == p])
        cat = catalog.read_pixel(int(p), order, columns=cols)
        if cat.empty:
            continue
        cat_coord = SkyCoord(cat["ra"].to_numpy() * u.deg, cat["dec"].to_numpy() * u.deg)
        j, sep, _ = match_coordinates_sky(lab_coord[idx], cat_coord)
        sep_as = sep.to_value(u.arcsec)
        ok = sep_as <= radius_arcsec
        cand = cat.iloc[j[ok]].reset_index(drop=True)
        cand["_label"] = idx[ok]
        cand["sep_arcsec"] = sep_as[ok]
        candidates.append(cand)
    if not candidates or sum(len(c) for c in candidates) == 0:
        logger.info('crossmatch: no label within %.2f" of a catalog source', radius_arcsec)
        return pd.DataFrame(columns=[*cols, "sep_arcsec"])
    # A label near a pixel edge may match in two pixels: keep its nearest source; then a source
    # claimed by several labels keeps its nearest label.
    best = (
        pd.concat(candidates, ignore_index=True)
        .sort_values(["_label", "sep_arcsec"], kind="stable")
        .drop_duplicates("_label")
    )
    best = best.sort_values(["cntr", "sep_arcsec"], kind="stable").drop_duplicates("cntr")
    lab = labels.iloc[best["_label"].to_numpy()].reset_index(drop=True)
    lab = lab.rename(columns={"ra": "label_ra", "dec": "label_dec"})
    best = best.drop(columns="_label").reset_index(drop=True)
    lab = lab.drop(columns=[c for c in lab.columns if c in best.columns])
    out = pd.concat([best, lab], axis=1).sort_values("cntr", kind="stable")
    logger.info(
        'crossmatch: %d of %d labels matched within %.2f" over %d pixels',
        len(out),
        len(labels),
        radius_arcsec,
        len(available),
    )
    return out.reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# The training set on disk: <root>/_manifest.json + <root>/split=<name>/part-NNNNN.parquet

FORMAT_VERSION = 1
"""Version of the training-set layout; readers refuse a newer one."""
MANIFEST = "_manifest.json"
"""Manifest file name; the leading underscore makes Parquet readers skip it, like _metadata."""
IMAGE_SHAPE = (3, 80, 80)


def _fs(url: str) -> tuple[Any, str]:
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


def to_arrow(df: pd.DataFrame, images: np.ndarray, features: np.ndarray) -> Any:
    """A pyarrow table of the rows with ``image`` and ``features`` as fixed-shape tensor columns.

    ``arrow.fixed_shape_tensor`` is Arrow's canonical extension type: Ray Data reads it into
    (N, 3, 80, 80) numpy batches, and plain pyarrow/pandas keep the shape too.
    """
    import pyarrow as pa

    images = np.ascontiguousarray(images, dtype=np.float32)
    features = np.ascontiguousarray(features, dtype=np.float32)
    if images.shape[1:] != IMAGE_SHAPE or len(images) != len(df) or len(features) != len(df):
        raise ValueError(
            f"images {images.shape} / features {features.shape} do not fit {len(df)} rows"
        )
    table = pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)
    table = table.append_column("image", pa.FixedShapeTensorArray.from_numpy_ndarray(images))
    return table.append_column("features", pa.FixedShapeTensorArray.from_numpy_ndarray(features))


class TrainingSetWriter:
    """Writes part files into a staging folder and publishes the set atomically on :meth:`close`.

    A reader never sees half a training set: everything goes to ``<root>.partial`` and is renamed
    to ``<root>`` once the manifest is written. An existing ``<root>`` is refused unless
    ``overwrite``.
    """

    def __init__(self, root: str, overwrite: bool = False) -> None:
        self.fs, self.root = _fs(root)
        if self.fs.exists(self.root) and not overwrite:
            raise FileExistsError(f"training set {root} exists; pass overwrite=True to replace it")
        self.staging = self.root.rstrip("/") + ".partial"
        if self.fs.exists(self.staging):
            self.fs.rm(self.staging, recursive=True)
        self.fs.makedirs(self.staging, exist_ok=True)
        self.counts: dict[str, dict[str, int]] = {s: dict.fromkeys(CLASSES, 0) for s in SPLITS}
        self.parts = 0

    def write(self, df: pd.DataFrame, images: np.ndarray, features: np.ndarray) -> None:
        """Write labelled rows (must have ``split``, ``class``) with their images and features."""
        import pyarrow.parquet as pq

        split = df["split"].to_numpy()
        for s in SPLITS:
            sel = np.flatnonzero(split == s)
            if not len(sel):
                continue
            table = to_arrow(df.iloc[sel].drop(columns="split"), images[sel], features[sel])
            path = f"{self.staging}/split={s}/part-{self.parts:05d}.parquet"
            self.fs.makedirs(f"{self.staging}/split={s}", exist_ok=True)
            with self.fs.open(path, "wb") as f:
                pq.write_table(table, f, compression="zstd", row_group_size=1024)
            for c, k in df.iloc[sel]["class"].value_counts().items():
                self.counts[s][str(c)] += int(k)
        self.parts += 1

    def close(self, meta: dict[str, Any]) -> dict[str, Any]:
        """Write the manifest (``meta`` + counts) and publish; returns the manifest."""
        from iic_survey import __version__

        manifest = {
            "format_version": FORMAT_VERSION,
            "classes": list(CLASSES),
            "image_shape": list(IMAGE_SHAPE),
            "code_version": __version__,
            **meta,
            "counts": self.counts,
        }
        with self.fs.open(f"{self.staging}/{MANIFEST}", "w") as f:
            json.dump(manifest, f, indent=1, default=str)
        if self.fs.exists(self.root):
            self.fs.rm(self.root, recursive=True)
        self.fs.mv(self.staging, self.root, recursive=True)
        return manifest


def read_manifest(root: str) -> dict[str, Any]:
    """The manifest of a training set (classes, feature names, RGB parameters, counts)."""
    fs, path = _fs(root)
    try:
        with fs.open(f"{path}/{MANIFEST}", "r") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no training set at {root} (no {MANIFEST}); build one with jobs/build_training_set.py"
        ) from None
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"training set {root} has format {manifest['format_version']}, newer than "
            f"this code reads ({FORMAT_VERSION}); upgrade iic_survey"
        )
    if tuple(manifest.get("classes", ())) != CLASSES:
        raise ValueError(f"training set classes {manifest.get('classes')} differ from {CLASSES}")
    return dict(manifest)


def split_path(root: str, split: str) -> str:
    """Folder of one split."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}{did_you_mean(split, SPLITS)}")
    return f"{root.rstrip('/')}/split={split}"


def read_split(
    root: str, split: str, columns: list[str] | None = None, filter: Any = None
) -> dict[str, np.ndarray]:
    """One split as numpy arrays (``image`` (N, 3, 80, 80), ``features`` (N, F), ...), in memory;
    ``filter`` is a ``pyarrow.compute`` expression applied while reading."""
    import pyarrow.dataset as pds

    fs, path = _fs(split_path(root, split))
    if not fs.exists(path):
        return {}
    table = pds.dataset(path, filesystem=fs, format="parquet").to_table(
        columns=columns, filter=filter
    )
    out: dict[str, np.ndarray] = {}
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        out[name] = (
            col.to_numpy_ndarray()
            if hasattr(col, "to_numpy_ndarray")
            else col.to_numpy(zero_copy_only=False)
        )
    return out


def read_split_ray(root: str, split: str, columns: list[str] | None = None) -> Any:
    """One split as a lazy Ray Dataset (tensor columns come out as (N, ...) numpy batches)."""
    import ray.data

    fs, path = _fs(split_path(root, split))
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    if "file" in protocols or "local" in protocols:
        ds = ray.data.read_parquet(path)
    else:
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        ds = ray.data.read_parquet(path, filesystem=PyFileSystem(FSSpecHandler(fs)))
    return ds if columns is None else ds.select_columns(columns)


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
    """Image archive spec for :class:`~iic_survey.stamps.StampMaker`; empty: the sky's or ``s3``."""
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

    def targets(self) -> int | Mapping[str, int] | None:
        """The per-class counts :func:`balance` is given."""
        return PAPER_COUNTS if self.paper_counts else self.per_class


def _catalog(config: TrainingSetConfig) -> Any:
    from iic_survey import catalog as catalog_module

    if config.catalog:
        return catalog_module.open_catalog(config.catalog)
    if config.source == "synthetic":
        from iic_survey import synthetic

        return catalog_module.open_catalog(synthetic.catalog_url(config.sky))
    return catalog_module.open_catalog(catalog_module.IRSA_ALLWISE_URL, anon=True)


def labelled_sources(config: TrainingSetConfig) -> pd.DataFrame:
    """Catalog rows (the pipeline's columns) with a ``class``, before balancing."""
    from iic_survey.catalog import PIPELINE_COLUMNS

    cat = _catalog(config)
    columns = [c for c in PIPELINE_COLUMNS if c in cat.schema.names]
    if config.source == "sdss":
        spectra = fetch_sdss(config.sdss)
        return crossmatch(spectra, cat, config.match_radius_arcsec, columns=columns)
    from iic_survey import synthetic

    truth = synthetic.read_truth(config.sky)[["cntr", "class"]]
    rows = cat.read_pixels(cat.pixels(5), 5, columns=columns)
    out = rows.merge(truth, on="cntr", how="inner", validate="one_to_one")
    logger.info("synthetic truth: %d of %d catalog sources labelled", len(out), len(rows))
    return out


def build_training_set(
    config: TrainingSetConfig, out: str, overwrite: bool = False
) -> dict[str, Any]:
    """Label, balance, split and cut a training set; write it to ``out``; return its manifest.

    Rows go through :class:`~iic_survey.stamps.StampMaker` in ``coadd_id`` order, in chunks of
    ``chunk_rows``, so each tile is opened about once and memory stays bounded.
    """
    from iic_survey import flags as flags_module
    from iic_survey import rgb
    from iic_survey.stamps import StampMaker

    rows = labelled_sources(config)
    rows = rows.drop_duplicates("cntr").reset_index(drop=True)
    rows = balance(rows, config.targets())
    rows["label"] = class_index(rows["class"])
    rows["healpix_k5"] = sky.pixel_of(rows["ra"], rows["dec"], 5)
    rows["split"] = assign_split(rows["cntr"], rows["ra"], rows["dec"], config.split)
    rows = rows.sort_values(["coadd_id", "cntr"], kind="stable").reset_index(drop=True)
    images = config.images or (config.sky if config.source == "synthetic" else "s3")
    maker = StampMaker.from_spec(images)
    writer = TrainingSetWriter(out, overwrite=overwrite)
    dropped = 0
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
    if dropped:
        logger.warning(
            "dropped %d unclassifiable rows (failed cutouts, missing bands ...)", dropped
        )
    meta = {
        "source": config.source,
        "config": dataclasses.asdict(config),
        "feature_names": list(rgb.FEATURE_NAMES),
        "rgb": maker.rgb.to_dict(),
        "cutout": dataclasses.asdict(maker.cutout),
        "images": images,
        "dropped": dropped,
    }
    manifest = writer.close(meta)
    logger.info("training set %s: %s", out, manifest["counts"])
    return manifest


def ensure_synthetic_training_set(data: str, sky_root: str, **overrides: Any) -> dict[str, Any]:
    """The manifest of the training set at ``data``, building it from the synthetic sky at
    ``sky_root`` first if there is none (and writing the default sky there if there is none)."""
    from iic_survey import synthetic

    try:
        return read_manifest(data)
    except FileNotFoundError:
        pass
    try:
        synthetic.SkyManifest.load(sky_root)
    except FileNotFoundError:
        logger.info("no synthetic sky at %s: writing the default one", sky_root)
        synthetic.write_sky(sky_root, synthetic.SkyConfig())
    logger.info("no training set at %s: building it from the synthetic sky %s", data, sky_root)
    return build_training_set(TrainingSetConfig(sky=sky_root, **overrides), data)
