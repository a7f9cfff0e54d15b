"""Generate the SkyServer response the offline SDSS tests replay (made from the tiny sky).

    .venv/bin/python tests/data/sdss/make_generated_response.py

This is not a recording of SkyServer: the spectra are *generated* from the tiny synthetic sky,
so that the crossmatch has known answers. Only the body's form is SkyServer's (checked in
``tests/training/test_labels.py`` against a real SkyServer CSV body shipped in astroquery's own test
data). Writes, next to this script:

* ``specobj_generated_from_tiny_sky.csv`` — in the form of the body SkyServer's SQL search
  (``x_results.aspx?format=csv``) returns for ``SELECT s.specobjid, s.ra, s.dec, s.class, s.z
  FROM SpecObj s WHERE ...``: a ``#Table1`` line, a header, one row per spectrum. The spectra
  sit on sources of the tiny synthetic sky (``skyfiles.tiny_config()``, the ``tiny_sky``
  fixture), 120 per class, each displaced by a realistic astrometric offset (Rayleigh, sigma
  0.4"); plus 15 spectra with no WISE source within 6" (blank sky) and 6 repeat spectra of an
  already-observed source. Class names, redshifts and specobjids are made up in SDSS's form.
* ``specobj_generated_from_tiny_sky.json`` — what the tests expect: the sky's fingerprint (so a
  changed generator is caught: rerun this script then) and, per specobjid, the cntr it must match.

Deterministic: the same generator gives byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import sys
import tempfile

import numpy as np
import pandas as pd
from astropy import units as u
from astropy.coordinates import SkyCoord

HERE = pathlib.Path(__file__).resolve().parent
CSV = HERE / "specobj_generated_from_tiny_sky.csv"
EXPECT = HERE / "specobj_generated_from_tiny_sky.json"
PER_CLASS = 120
N_BLANK = 15
N_REPEAT = 6
SDSS_NAME = {"galaxy": "GALAXY", "quasar": "QSO", "star": "STAR"}


def sky_fingerprint(catalog: pd.DataFrame) -> str:
    """sha256 of the sorted (cntr, ra, dec) of a sky's catalog, rounded to 1e-7 deg."""
    c = catalog.sort_values("cntr")
    rows = np.stack(
        [
            c["cntr"].to_numpy(np.float64),
            np.round(c["ra"].to_numpy(), 7),
            np.round(c["dec"].to_numpy(), 7),
        ],
        axis=1,
    )
    return hashlib.sha256(rows.tobytes()).hexdigest()


def read_sky(root: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(catalog cntr/ra/dec, truth cntr/class) of a synthetic sky."""
    from iic_survey.inputs import catalog
    from iic_survey.synthetic import skyfiles

    cat = catalog.open_catalog(skyfiles.catalog_url(root))
    rows = cat.read_pixels(cat.pixels(5), 5, columns=["cntr", "ra", "dec"])
    return rows, skyfiles.read_truth(root)[["cntr", "class"]]


def make(root: str) -> tuple[pd.DataFrame, dict]:
    """The response table and the expectations for the sky at ``root``."""
    rng = np.random.default_rng(20_230_510)
    rows, truth = read_sky(root)
    src = rows.merge(truth, on="cntr")
    chosen = pd.concat(
        [
            src[src["class"] == c].sample(PER_CLASS, random_state=int(rng.integers(2**31)))
            for c in ("galaxy", "quasar", "star")
        ]
    ).sort_values("cntr")
    sep = rng.rayleigh(0.4, len(chosen))  # arcsec
    pa = rng.uniform(0, 360, len(chosen))
    pos = SkyCoord(chosen["ra"].to_numpy() * u.deg, chosen["dec"].to_numpy() * u.deg)
    pos = pos.directional_offset_by(pa * u.deg, sep * u.arcsec)
    z = {"galaxy": (0.02, 0.4), "quasar": (0.3, 3.5), "star": (-0.0005, 0.0005)}
    spectra = pd.DataFrame(
        {
            "ra": pos.ra.deg,
            "dec": pos.dec.deg,
            "class": chosen["class"].map(SDSS_NAME).to_numpy(),
            "z": [rng.uniform(*z[c]) for c in chosen["class"]],
            "cntr": chosen["cntr"].to_numpy(),
        }
    )
    # Repeats: a second, farther spectrum of some sources (the crossmatch keeps the nearer).
    rep = spectra.sample(N_REPEAT, random_state=1).copy()
    c = SkyCoord(rep["ra"].to_numpy() * u.deg, rep["dec"].to_numpy() * u.deg)
    c = c.directional_offset_by(rng.uniform(0, 360, N_REPEAT) * u.deg, 1.9 * u.arcsec)
    rep["ra"], rep["dec"], rep["repeat"] = c.ra.deg, c.dec.deg, True
    # Blank sky: spectra with no catalog source within 6".
    all_c = SkyCoord(rows["ra"].to_numpy() * u.deg, rows["dec"].to_numpy() * u.deg)
    blanks = []
    lo, hi = rows[["ra", "dec"]].min(), rows[["ra", "dec"]].max()
    while len(blanks) < N_BLANK:
        ra, dec = rng.uniform(lo["ra"], hi["ra"]), rng.uniform(lo["dec"], hi["dec"])
        if SkyCoord(ra * u.deg, dec * u.deg).separation(all_c).arcsec.min() > 6:
            blanks.append(
                {
                    "ra": ra,
                    "dec": dec,
                    "class": str(rng.choice(["GALAXY", "STAR"])),
                    "z": 0.1,
                    "cntr": -1,
                }
            )
    table = pd.concat(
        [spectra.assign(repeat=False), rep, pd.DataFrame(blanks).assign(repeat=False)],
        ignore_index=True,
    )
    # SDSS specobjids are large unsigned 64-bit numbers (beyond int64 for recent plates).
    table.insert(
        0,
        "specobjid",
        (
            np.uint64(9_300_000_000_000_000_000)
            + np.arange(len(table), dtype=np.uint64) * np.uint64(4096)
        ),
    )
    table = table.sort_values("ra", kind="stable").reset_index(drop=True)
    expect = {
        "sky": {"config": "skyfiles.tiny_config()", "fingerprint": sky_fingerprint(rows)},
        "match": {
            str(s): int(c)
            for s, c, r in zip(table["specobjid"], table["cntr"], table["repeat"], strict=True)
            if not r
        },
        "repeats": [str(s) for s in table.loc[table["repeat"], "specobjid"]],
    }
    return table[["specobjid", "ra", "dec", "class", "z"]], expect


def to_skyserver_csv(table: pd.DataFrame) -> str:
    """SkyServer's CSV body: ``#Table1``, then a plain CSV with the selected column names."""
    return "#Table1\n" + table.to_csv(index=False, float_format="%.9g", lineterminator="\n")


def main() -> int:
    from iic_survey.synthetic import skyfiles

    with tempfile.TemporaryDirectory() as tmp:
        skyfiles.write_sky(f"{tmp}/sky", skyfiles.tiny_config())
        table, expect = make(f"{tmp}/sky")
    CSV.write_text(to_skyserver_csv(table))
    EXPECT.write_text(json.dumps(expect, indent=1) + "\n")
    print(f"wrote {CSV.name} ({len(table)} spectra) and {EXPECT.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
