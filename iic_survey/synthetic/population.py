"""The synthetic source population, and the catalog rows AllWISE would list for it.

:func:`draw_field` fills a field (:class:`iic_survey.rendering.Field`) with objects: class,
subclass, true W1-W4 magnitudes, shape, and the trouble that real catalogs have.
:func:`field_catalog` turns a field's catalogued objects into AllWISE catalog rows (profile-fit
photometry from :func:`measure`, flags, identifiers, tile positions) and the matching truth
rows. All are pure functions of a random generator, so a seed fixes the sky.

What is simulated, and why (DESIGN.md section 2):

* Classes overlap the way real ones do. Stars sit at W1-W2 ~ 0, W2-W3 ~ 0 with dusty and
  late-type tails; most quasars have W1-W2 ~ 1 and W2-W3 2.2-4.2, but a fifth (high-z or low
  luminosity) fall into the galaxy and stellar loci; early-type galaxies share the stars' W1-W2
  with W2-W3 0.5-1.5, spirals have W2-W3 2-4, starbursts reach the quasar wedge. Faint sources
  have noisy colours and W3 upper limits, so no single colour cut separates the classes.
* Morphology carries extra information: bright galaxies are resolved (exponential or de
  Vaucouleurs profiles), some quasars show a host, stars and most quasars are point sources.
* Catalog photometry is what a PSF fit to the image gives: total flux for point sources, less
  for resolved ones (which also get a higher rchi2 and ext_flg), with the image's noise; SNR < 2
  gives a 95 % upper limit with null sigmpro and ph_qual 'U'.
* Realistic trouble: neighbours at AllWISE density, unlisted blended companions (nb > 1),
  off-centre catalog positions, catalog rows with nothing visible at the position (the paper's
  failure class 4; those near bright stars are halo artefacts flagged 'H' in cc_flags), and
  saturated bright stars (their flat-topped cores, and NaN patches, are drawn by rendering).

Shapes are in arcsec and fluxes in DN (m = MAGZP - 2.5 log10 DN) throughout. How the objects
look in the images is :mod:`iic_survey.rendering`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from astropy import units as u
from astropy.coordinates import SkyCoord

from iic_survey.core.constants import CLASSES
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


def draw_field(
    rng: np.random.Generator,
    field: Field,
    n: int,
    class_fractions: tuple[float, ...],
    artefacts: bool,
) -> pd.DataFrame:
    """All objects of one field: the catalogued ones plus unlisted blended companions.

    Parameters
    ----------
    rng
        The field's own random stream.
    field
        Where the objects go (only its box is used here).
    n
        Number of catalogued objects.
    class_fractions
        Fractions of galaxies, quasars and stars (the order of CLASSES), summing to 1.
    artefacts
        Add saturated bright stars, whose halos hold some of the empty-centre rows.
    """
    classes = rng.choice(np.array(CLASSES, dtype=object), size=n, p=class_fractions)
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
    if artefacts:
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
    comp_cls = rng.choice(np.array(CLASSES, dtype=object), size=prim.size, p=class_fractions)
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


def field_catalog(
    rng: np.random.Generator, objs: pd.DataFrame, field: Field
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
    phot = measure(rng, cat)
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
    nb = np.minimum(1 + neighbours(ra, dec, 8.0) + hidden, 9)
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
