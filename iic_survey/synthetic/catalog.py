"""The synthetic sky's catalog: the rows AllWISE would list, and its Parquet files.

:func:`field_catalog` turns a field's catalogued objects (from
:func:`iic_survey.synthetic.population.draw_field`) into AllWISE catalog rows, with profile-fit
photometry from :func:`measure`, flags, identifiers and tile positions, and the matching truth
rows. Catalog photometry is what a PSF fit to the image gives: total flux for point sources,
less for resolved ones (which also get a higher rchi2 and ext_flg), with the image's noise;
SNR < 2 gives a 95 % upper limit with null sigmpro and ph_qual 'U'. Rows in a bright star's
halo are flagged 'h' in cc_flags ('H' when they are only halo); ``nb`` counts neighbours and
unlisted blended companions.

:func:`catalog_schema` is the Arrow schema, with each column's unit and description in its
field metadata as in IRSA's ``_common_metadata``. :func:`write_catalog` writes the rows the way
IRSA lays out the AllWISE Parquet: one ``healpix_k0=K0/healpix_k5=K5/part0.snappy.parquet``
per HEALPix order-5 (NESTED) pixel, plus ``_metadata`` (the row groups of every part) and
``_common_metadata`` (the schema alone), so that readers written for the real bucket open the
synthetic one unchanged.

Fluxes are in DN (m = MAGZP - 2.5 log10 DN) throughout.
"""

from __future__ import annotations

import math
import pathlib

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from astropy import units as u
from astropy.coordinates import SkyCoord

from iic_survey.core import healpix
from iic_survey.inputs import tile_header, tiles
from iic_survey.synthetic.rendering import (
    ALL_BANDS,
    BAND_MODELS,
    FWHM_ARCSEC,
    SATURATION_MAG,
    Field,
    flux_dn,
)

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


def measure(rng: np.random.Generator, objs: pd.DataFrame) -> dict[str, np.ndarray]:
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
        f_true = flux_dn(objs[f"w{b}_cat"].to_numpy(), b) * frac
        sat = objs[f"w{b}_cat"].to_numpy() < SATURATION_MAG[b]
        sig = np.sqrt(bm.flux_noise**2 + (0.015 * f_true) ** 2 + (0.04 * f_true * sat) ** 2)
        f = f_true + sig * rng.standard_normal(n)
        snr = f / sig
        det = snr >= 2.0
        mag = np.where(
            det,
            tile_header.MAGZP[b] - 2.5 * np.log10(np.clip(f, 1e-30, None)),
            tile_header.MAGZP[b] - 2.5 * np.log10(np.clip(f, 0, None) + 2 * sig),
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


def neighbours(ra: np.ndarray, dec: np.ndarray, radius_arcsec: float) -> np.ndarray:
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
# Catalog rows


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


def _tile_numbers(
    ra: np.ndarray, dec: np.ndarray, cid8: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's sequential number on its tile (``src``) and its unique ``cntr``.

    Rows are numbered on each tile in order of declination, then right ascension; ``cntr`` is
    the tile's place in the grid (from 1) times 10**7 plus ``src``.
    """
    grid_index = {c: i for i, c in enumerate(tiles.tile_grid()["coadd_id"])}
    order = np.lexsort((ra, dec, cid8))
    src = np.zeros(ra.size, dtype=np.int64)
    for c in np.unique(cid8):
        members = order[cid8[order] == c]
        src[members] = np.arange(1, members.size + 1)
    cntr = np.array([(grid_index[c] + 1) * 10_000_000 for c in cid8], dtype=np.int64) + src
    return src, cntr


def _near_bright_star(bright: pd.DataFrame, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """Which positions lie 1-60" from one of the ``bright`` stars (in its halo)."""
    near = np.zeros(ra.size, dtype=bool)
    for bra, bdec in zip(bright["ra_true"], bright["dec_true"], strict=True):
        sep = SkyCoord(ra * u.deg, dec * u.deg).separation(SkyCoord(bra * u.deg, bdec * u.deg))
        near |= (sep.arcsec < 60) & (sep.arcsec > 1)
    return near


def _truth_rows(cat: pd.DataFrame, cntr: np.ndarray, near: np.ndarray) -> pd.DataFrame:
    """The truth table's rows of catalogued objects ``cat``: what the generator knows."""
    return pd.DataFrame(
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


def field_catalog(
    rng: np.random.Generator, objs: pd.DataFrame, field: Field
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Catalog rows and truth rows of the catalogued objects of one field.

    Each row is placed on the tile it lies furthest inside (its ``coadd_id``, ``wx``, ``wy``
    on that tile's crop), which must be one of ``field``'s crops.
    """
    cat = objs[objs["catalogued"]].reset_index(drop=True)
    ra, dec = cat["ra"].to_numpy(), cat["dec"].to_numpy()
    best = tiles.best_tiles(ra, dec)
    cid8 = best["coadd_id"].to_numpy()
    missing = sorted(set(cid8) - set(field.crops))
    if missing:
        raise RuntimeError(f"sources assigned to unwritten tiles {missing} (field geometry bug)")
    best["x"] -= np.array([field.crops[c].x0 for c in cid8])
    best["y"] -= np.array([field.crops[c].y0 for c in cid8])
    best["src"], best["cntr"] = _tile_numbers(ra, dec, cid8)
    # Rows near a bright star sit in its halo: 'h' (contaminated), or 'H' for rows that are
    # only halo (the empty-centre ones).
    near = _near_bright_star(objs[objs["bright_star"]], ra, dec)
    return catalog_rows(rng, cat, best, near)


def catalog_rows(
    rng: np.random.Generator,
    cat: pd.DataFrame,
    best: pd.DataFrame,
    near: np.ndarray,
    nb: np.ndarray | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Catalog and truth rows of catalogued objects ``cat`` placed on tiles ``best``.

    ``best`` holds each row's ``coadd_id``, its ``x``, ``y`` on the image written for that
    tile, and its numbers ``src`` and ``cntr``; ``near`` marks rows in a bright star's halo. ``nb``:
    each row's neighbours within 8" (default: counted here, for one small field).
    """
    ra, dec = cat["ra"].to_numpy(), cat["dec"].to_numpy()
    cid8 = best["coadd_id"].to_numpy()
    src, cntr = best["src"].to_numpy(), best["cntr"].to_numpy()
    phot = measure(rng, cat)
    gal = SkyCoord(ra * u.deg, dec * u.deg, frame="icrs").galactic
    flag = np.where(cat["empty_centre"].to_numpy(), "H", "h")
    cc = np.where(near, np.char.add(np.char.add(flag, flag), "00"), "0000")
    hidden = cat["hidden_companion"].to_numpy().astype(np.int64)
    if nb is None:
        nb = neighbours(ra, dec, 8.0)
    nb = np.minimum(1 + nb + hidden, 9)
    atlas = np.char.add(cid8.astype(str), tiles.AC51)
    rows = {
        "cntr": cntr,
        "designation": designations(ra, dec),
        "source_id": [f"{a}-{s:06d}" for a, s in zip(atlas, src, strict=True)],
        "ra": ra,
        "dec": dec,
        "glon": gal.l.deg,
        "glat": gal.b.deg,
        "wx": best["x"].to_numpy(),
        "wy": best["y"].to_numpy(),
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
    return pd.DataFrame(rows), _truth_rows(cat, cntr, near)


# --------------------------------------------------------------------------------------------
# The files: AllWISE columns, units and descriptions

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
"""(name, type, unit, description) of each catalog column, in AllWISE's order."""


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


def write_catalog(catalog: pd.DataFrame, out: pathlib.Path) -> list[int]:
    """Write ``catalog`` under ``out`` as hive-partitioned Parquet by order-5 pixel.

    Each part holds one pixel's rows sorted by ``cntr``; ``_metadata`` and
    ``_common_metadata`` are written after the parts.

    Returns
    -------
    list[int]
        The order-5 (NESTED) pixels written, ascending.
    """
    schema = catalog_schema()
    k5 = healpix.pixel_of(catalog["ra"].to_numpy(), catalog["dec"].to_numpy(), 5)
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
