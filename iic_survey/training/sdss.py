"""SDSS DR17 spectroscopic classes as training labels, fetched from SkyServer in RA stripes.

:func:`fetch_sdss` asks for ``SpecObj`` rows with ``zWarning = 0`` and class GALAXY, QSO or
STAR, one RA stripe per query. SkyServer silently caps a query at :data:`SDSS_ROW_CAP` rows,
so a stripe that comes back full is split in two and asked again. Classes are mapped to ours
(:data:`SDSS_CLASSES`).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

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
