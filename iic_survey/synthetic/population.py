"""The synthetic source population: what objects a field holds, and their trouble.

:func:`draw_field` fills a field (:class:`iic_survey.synthetic.rendering.Field`) with objects:
class, subclass, true W1-W4 magnitudes, shape, and the trouble that real catalogs have. It is a
pure function of a random generator, so a seed fixes the sky. The catalog rows AllWISE would
list for these objects are made by :func:`iic_survey.synthetic.catalog.field_catalog`.

What is simulated, and why (docs/design.md §2):

* Classes overlap the way real ones do. Stars sit at W1-W2 ~ 0, W2-W3 ~ 0 with dusty and
  late-type tails; most quasars have W1-W2 ~ 1 and W2-W3 2.2-4.2, but a fifth (high-z or low
  luminosity) fall into the galaxy and stellar loci; early-type galaxies share the stars' W1-W2
  with W2-W3 0.5-1.5, spirals have W2-W3 2-4, starbursts reach the quasar wedge. Faint sources
  have noisy colours and W3 upper limits, so no single colour cut separates the classes.
* Morphology carries extra information: bright galaxies are resolved (exponential or de
  Vaucouleurs profiles), some quasars show a host, stars and most quasars are point sources.
* Realistic trouble: neighbours at AllWISE density, unlisted blended companions (nb > 1),
  off-centre catalog positions, catalog rows with nothing visible at the position (the paper's
  failure class 4; those near bright stars are halo artefacts), and saturated bright stars
  (their flat-topped cores, and NaN patches, are drawn by rendering).

Shapes are in arcsec and fluxes in DN (m = MAGZP - 2.5 log10 DN) throughout. How the objects
look in the images is :mod:`iic_survey.synthetic.rendering`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from iic_survey.core.constants import CLASSES
from iic_survey.synthetic.rendering import ALL_BANDS, Field

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


def draw_population(
    rng: np.random.Generator, n: int, class_fractions: tuple[float, ...]
) -> pd.DataFrame:
    """``n`` objects of classes drawn with ``class_fractions``, without positions."""
    classes = rng.choice(np.array(CLASSES, dtype=object), size=n, p=class_fractions)
    objs = _draw_objects(rng, classes)
    objs.insert(0, "class", classes)
    return objs


def _set_kind(objs: pd.DataFrame, catalogued: bool, field_index: int) -> None:
    """Start the bookkeeping columns: catalogued or not, and no trouble yet."""
    objs["catalogued"] = catalogued
    objs["empty_centre"] = False
    objs["offset_arcsec"] = 0.0
    objs["hidden_companion"] = False
    objs["field"] = field_index


def _offset(
    ra: np.ndarray, dec: np.ndarray, r: np.ndarray, angle: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``r`` deg from (ra, dec) towards position angle ``angle`` (rad, east of north).

    A flat-sky step, exact enough for the arcsecond-to-arcminute offsets drawn here.
    """
    cosd = np.cos(np.radians(dec))
    return (ra + r * np.sin(angle) / cosd) % 360, dec + r * np.cos(angle)


def _add_bright_stars(rng: np.random.Generator, objs: pd.DataFrame) -> np.ndarray:
    """Make a few stars per field saturated (flat-topped cores and halos); their mask."""
    n = len(objs)
    bright = np.zeros(n, dtype=bool)
    stars = np.nonzero(objs["class"].to_numpy() == "star")[0]
    k = min(stars.size, max(1, round(n / 2500)))
    pick = rng.choice(stars, size=k, replace=False)
    objs.loc[pick, "subclass"] = "main_sequence"
    w1 = rng.uniform(5.5, 7.8, k)
    for b in ALL_BANDS:
        objs.loc[pick, f"w{b}_true"] = w1 - rng.normal(0, 0.03, k) * (b > 1)
    bright[pick] = True
    return bright


def _place_empty_centres(
    rng: np.random.Generator, objs: pd.DataFrame, field: Field, bright: np.ndarray
) -> np.ndarray:
    """Mark failure class 4 among the rows that are not ``bright``: nothing visible there.

    Half sit in bright-star halos (spurious detections), half are faint objects whose catalog
    flux is noise-boosted. Returns the rows marked.
    """
    ordinary = np.nonzero(~bright)[0]
    n_empty = max(1, round(0.015 * len(objs)))
    empty = rng.choice(ordinary, size=min(n_empty, ordinary.size), replace=False)
    objs.loc[empty, "empty_centre"] = True
    near = empty[: len(empty) // 2] if bright.any() else empty[:0]
    if near.size:
        hosts = rng.choice(np.nonzero(bright)[0], size=near.size)
        r = rng.uniform(15, 50, near.size) / 3600.0
        t = rng.uniform(0, 2 * np.pi, near.size)
        ra_n, dec_n = _offset(
            objs.loc[hosts, "ra"].to_numpy(), objs.loc[hosts, "dec"].to_numpy(), r, t
        )
        objs.loc[near, "ra"], objs.loc[near, "dec"] = field.clip(ra_n, dec_n)
    return empty


def _companions(
    rng: np.random.Generator,
    primaries: pd.DataFrame,
    class_fractions: tuple[float, ...],
    field_index: int,
) -> pd.DataFrame:
    """Unlisted companions, 0.3-2.5 mag fainter and 1.5-5" away, one per primary."""
    comp = draw_population(rng, len(primaries), class_fractions)
    dm = rng.uniform(0.3, 2.5, len(primaries))
    shift = primaries["w1_true"].to_numpy() + dm - comp["w1_true"].to_numpy()
    for b in ALL_BANDS:
        comp[f"w{b}_true"] += shift
    sep = rng.uniform(1.5, 5.0, len(primaries)) / 3600.0
    ang = rng.uniform(0, 2 * np.pi, len(primaries))
    comp["ra"], comp["dec"] = _offset(
        primaries["ra"].to_numpy(), primaries["dec"].to_numpy(), sep, ang
    )
    _set_kind(comp, False, field_index)
    return comp


def _true_positions(rng: np.random.Generator, objs: pd.DataFrame) -> None:
    """Rendered (true) positions; they differ from the catalog's only for off-centre rows."""
    objs["ra_true"], objs["dec_true"] = objs["ra"].to_numpy(), objs["dec"].to_numpy()
    o = objs["offset_arcsec"].to_numpy() > 0
    t = rng.uniform(0, 2 * np.pi, int(o.sum()))
    r = objs.loc[o, "offset_arcsec"].to_numpy() / 3600.0
    ra_t, dec_t = _offset(objs.loc[o, "ra"].to_numpy(), objs.loc[o, "dec"].to_numpy(), r, t)
    objs.loc[o, "ra_true"] = ra_t
    objs.loc[o, "dec_true"] = dec_t


def _catalogued_magnitudes(rng: np.random.Generator, objs: pd.DataFrame) -> None:
    """Catalogued magnitudes: the rendered ones, except for empty-centre rows.

    Those are faint detections of (almost) nothing: 4 mag fainter in the image than in the
    catalog.
    """
    for b in ALL_BANDS:
        objs[f"w{b}_cat"] = objs[f"w{b}_true"]
    e = objs["empty_centre"].to_numpy()
    w1 = rng.uniform(16.2, 16.9, int(e.sum()))
    for b in ALL_BANDS:
        colour = objs.loc[e, "w1_true"].to_numpy() - objs.loc[e, f"w{b}_true"].to_numpy()
        objs.loc[e, f"w{b}_cat"] = w1 - colour
        objs.loc[e, f"w{b}_true"] = w1 - colour + 4.0


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
    objs = draw_population(rng, n, class_fractions)
    objs["ra"], objs["dec"] = field.box(rng.uniform(-1, 1, n), rng.uniform(-1, 1, n))
    _set_kind(objs, True, field.index)
    bright = _add_bright_stars(rng, objs) if artefacts else np.zeros(n, dtype=bool)
    empty = _place_empty_centres(rng, objs, field, bright)
    rest = np.setdiff1d(np.nonzero(~bright)[0], empty)
    # Off-centre catalog positions (centroid pulled by a neighbour or a bad fit).
    off = rng.choice(rest, size=round(0.02 * n), replace=False)
    objs.loc[off, "offset_arcsec"] = rng.uniform(2.0, 5.0, off.size)
    # Unlisted companions closer than WISE resolves: the catalog row is a blend.
    prim = rng.choice(np.setdiff1d(rest, off), size=round(0.04 * n), replace=False)
    objs.loc[prim, "hidden_companion"] = True
    comp = _companions(rng, objs.loc[prim], class_fractions, field.index)
    objs = pd.concat([objs, comp], ignore_index=True)
    _true_positions(rng, objs)
    _catalogued_magnitudes(rng, objs)
    objs["bright_star"] = bright.tolist() + [False] * prim.size
    return objs


def finish_catalogued(rng: np.random.Generator, objs: pd.DataFrame, field_index: int) -> None:
    """Make plain catalogued objects of ``objs`` (drawn, placed; no trouble, no companions)."""
    _set_kind(objs, True, field_index)
    _true_positions(rng, objs)
    _catalogued_magnitudes(rng, objs)
    objs["bright_star"] = False
