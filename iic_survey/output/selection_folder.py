"""The catalog's ``selection/`` folder: the model's selection tables and sky masks (MOC).

Written at the end of a classification run (:func:`publish`), beside the HATS collection::

    selection/README.md                        what every file is, and how to use it
    selection/completeness_purity.parquet      } measured on the model's labelled test split
    selection/completeness_purity_w1.parquet   } (copied from <model_dir>/selection/;
    selection/thresholds.parquet               }  :mod:`iic_survey.training.selection_tables`)
    selection/reliability_w1.parquet           }
    selection/tables.json                      }
    selection/masks/galactic_plane.fits        |b| < 10 deg
    selection/masks/bulge.fits                 |l| < 20 deg and |b| < 15 deg (wrapping l = 0)
    selection/masks/no_images.fits             order-9 cells with rows, none classified
    selection/masks/flagged_only.fits          order-9 cells with rows, none clean

The masks are IVOA MOCs (FITS, written by ``mocpy``), at HEALPix order :data:`MASK_ORDER`
(0.11 deg cells): the two Galactic ones are every cell whose centre lies in the region; the
two catalog ones come from the per-cell counts the commit markers keep
(:func:`iic_survey.output.commit.quality_histograms`). A model directory without selection
tables (an older one) gives the masks alone, and the README says so; markers without the
counts (an older run) leave their pixels out of the catalog masks, and the README says how
many.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import healpy as hp
import numpy as np
import pandas as pd
from astropy import units as u
from astropy.coordinates import SkyCoord
from mocpy import MOC
from upath import UPath

from iic_survey.core import healpix
from iic_survey.core.atomic import write_atomic
from iic_survey.core.paths import PathLike, as_path
from iic_survey.output.commit import SKYMAP_ORDER
from iic_survey.output.hatsfiles import coverage_map
from iic_survey.output.staging import commit_markers

logger = logging.getLogger(__name__)

SELECTION = "selection"
"""Folder of the selection products inside the catalog root."""
MASK_ORDER = SKYMAP_ORDER
"""HEALPix order of the masks (the order of the markers' counts)."""
GALACTIC_PLANE_B = 10.0
"""|b| (deg) below which a cell is in the Galactic-plane mask."""
BULGE_L, BULGE_B = 20.0, 15.0
"""The bulge mask: |l| < BULGE_L and |b| < BULGE_B (deg)."""
MASKS = ("galactic_plane", "bulge", "no_images", "flagged_only")


def galactic_masks(order: int = MASK_ORDER) -> dict[str, np.ndarray]:
    """NESTED cell indices at ``order`` whose centres lie in the plane and the bulge."""
    ipix = np.arange(healpix.npix(order), dtype=np.int64)
    ra, dec = hp.pix2ang(healpix.nside(order), ipix, nest=True, lonlat=True)
    gal = SkyCoord(ra * u.deg, dec * u.deg, frame="icrs").galactic
    b, lon = gal.b.deg, (gal.l.deg + 180.0) % 360.0 - 180.0
    return {
        "galactic_plane": ipix[np.abs(b) < GALACTIC_PLANE_B],
        "bulge": ipix[(np.abs(lon) < BULGE_L) & (np.abs(b) < BULGE_B)],
    }


def catalog_masks(markers: dict[int, dict[str, Any]]) -> tuple[dict[str, np.ndarray], int]:
    """(``no_images`` and ``flagged_only`` cells, markers lacking the counts) of a catalog."""
    full = [m for m in markers.values() if "histogram_clean" in m]
    rows = coverage_map([m.get("histogram", []) for m in full], MASK_ORDER)
    classified = coverage_map([m["histogram_classified"] for m in full], MASK_ORDER)
    clean = coverage_map([m["histogram_clean"] for m in full], MASK_ORDER)
    return {
        "no_images": np.flatnonzero((rows > 0) & (classified == 0)),
        "flagged_only": np.flatnonzero((rows > 0) & (clean == 0)),
    }, len(markers) - len(full)


def _moc_bytes(cells: np.ndarray, order: int) -> bytes:
    moc = MOC.from_healpix_cells(
        np.asarray(cells, dtype=np.uint64), np.full(len(cells), order, dtype=np.uint8), order
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "mask.fits")
        moc.save(path, format="fits", overwrite=True)
        return Path(path).read_bytes()


def _copy_tables(out: UPath, model_dir: str | None) -> list[str]:
    """Copy ``<model_dir>/selection/*`` into ``out``; the names copied (none if absent)."""
    src = Path(model_dir or "") / SELECTION
    if not model_dir or not src.is_dir():
        return []
    names = sorted(p.name for p in src.iterdir() if p.is_file())
    for name in names:
        write_atomic(out / name, (src / name).read_bytes())
    return names


def promises(model_dir: str | None) -> list[dict[str, Any]] | None:
    """The recommended thresholds' rows with their verification (``held``, ``verdict``), from
    ``<model_dir>/selection/thresholds.parquet``; None without one, or one written before the
    choose / verify split (no ``verdict`` column)."""
    path = Path(model_dir or "") / SELECTION / "thresholds.parquet"
    if not model_dir or not path.is_file():
        return None
    try:
        t = pd.read_parquet(path)
    except (OSError, ValueError) as e:  # ArrowInvalid is a ValueError
        logger.warning("cannot read %s (%s): promises not reported", path, e)
        return None
    if "verdict" not in t:
        return None
    return list(t.to_dict("records"))


def promise_lines(rows: list[dict[str, Any]] | None) -> list[str]:
    """Markdown: whether each purity promise held on the verify part (see
    :mod:`iic_survey.training.selection_tables`), or why that is not known."""
    if rows is None:
        return ["Whether the thresholds' purity promises hold is **not known**: the model's "
                "thresholds were chosen and measured on the same rows (written before the "
                "choose / verify split); retrain to get verified ones.", ""]  # fmt: skip
    made = [r for r in rows if r["verdict"] != "no threshold"]
    held = sum(bool(r["held"]) for r in made)
    lines = [f"**Purity promises: {held} of {len(made)} held** on the verify part (rows that "
             "chose nothing: a keyed hash of `cntr` splits the labelled test split into a "
             "choose and a verify part); a promise holds when the verified purity's one-sided "
             "95 % Clopper-Pearson lower bound reaches the target.", "",
             "| class | target purity | threshold | verified purity | 95 % lower bound | "
             "selected (correct) | verdict |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]  # fmt: skip
    for r in rows:
        if r["verdict"] == "no threshold":
            lines.append(f"| {r['class']} | {r['target_purity']:.2f} | - | - | - | - | no "
                         "threshold reaches it |")  # fmt: skip
            continue
        lines.append(f"| {r['class']} | {r['target_purity']:.2f} | {r['threshold']:.2f} | "
                     f"{r['verify_purity']:.3f} | {r['verify_purity_lo95']:.3f} | "
                     f"{r['verify_n_selected']} ({r['verify_n_correct']}) | "
                     f"{r['verdict']} |")  # fmt: skip
    return [*lines, ""]


def publish(path: PathLike, model_dir: str | None) -> dict[str, Any]:
    """Write ``selection/`` into the catalog root ``path`` (see the module); what was written."""
    root = as_path(path)
    out = root / SELECTION
    tables = _copy_tables(out, model_dir)
    markers = commit_markers(root)
    order = next(iter(markers), None)
    cells, missing = catalog_masks(markers.get(order, {}) if order is not None else {})
    cells |= galactic_masks()
    for name in MASKS:
        write_atomic(out / f"masks/{name}.fits", _moc_bytes(cells[name], MASK_ORDER))
    sky_fraction = {n: len(c) / healpix.npix(MASK_ORDER) for n, c in cells.items()}
    info = {"tables": tables, "model_dir": model_dir, "markers_without_counts": missing,
            "mask_sky_fraction": sky_fraction, "promises": promises(model_dir)}  # fmt: skip
    write_atomic(out / "README.md", readme(info).encode())
    logger.info("selection products written to %s (%d tables, %d masks)", out, len(tables),
                len(MASKS))  # fmt: skip
    return info


WORKED_EXAMPLE = [
    "A pure quasar sample (purity 0.95 on the labelled set), outside the Galactic plane:",
    "",
    "```python",
    "import astropy.units as u, pandas as pd",
    "from mocpy import MOC",
    "t = pd.read_parquet(f'{root}/selection/thresholds.parquet')",
    "cut = t.query(\"`class` == 'quasar' and target_purity == 0.95\")['threshold'].item()",
    "q = pd.read_parquet(f'{root}/iic_allwise/dataset', filters=[('class', '==', 'quasar'),",
    "                    ('subset', '==', 'safe'), ('confidence', '>=', cut)])",
    "plane = MOC.from_fits(f'{root}/selection/masks/galactic_plane.fits')",
    "q = q[~plane.contains_lonlat(q['ra'].values * u.deg, q['dec'].values * u.deg)]",
    "```",
    "",
]
"""The worked example closing ``selection/README.md``: a pure quasar sample off the plane."""


def readme(info: dict[str, Any]) -> str:
    """The ``selection/README.md`` text for what :func:`publish` wrote."""
    frac = info["mask_sky_fraction"]
    tables = info["tables"]
    if tables:
        source = (f"measured by training on the labelled test split of the model "
                  f"`{info['model_dir']}` (clean rows, calibrated probabilities)")  # fmt: skip
    else:
        source = ("**absent**: the model directory has no selection tables (it was trained "
                  "before they existed); retrain to get them")  # fmt: skip
    lines = [
        "# Selection products",
        "",
        f"Tables: {source}.",
        "",
        "| file | what |",
        "| --- | --- |",
        "| `thresholds.parquet` | recommended `confidence` threshold per `class` for purity 0.90 / "
        "0.95 / 0.99 (`target_purity`), chosen on one part of the split (`purity`, "
        "`completeness`) and verified on another (`verify_purity`, `verify_purity_lo95`, "
        "`verify_n_selected`, `verify_n_correct`, `held`, `verdict`) |",
        "| `completeness_purity.parquet` | per `class`, W1 bin (`w1_lo`, `w1_hi`), Galactic |b| "
        "bin, ecliptic |beta| bin and `threshold`: `n_true`, `n_selected`, `n_correct`, "
        "`n_from_<class>`, `completeness`, `purity` |",
        "| `completeness_purity_w1.parquet` | the same per W1 bin, over all positions |",
        "| `reliability_w1.parquet` | per W1 bin and confidence bin: `n`, mean `confidence`, "
        "fraction correct (`accuracy`) |",
        "| `tables.json` | bin edges, the threshold grid, the calibration, the recommended rows |",
        f"| `masks/galactic_plane.fits` | MOC: \\|b\\| < {GALACTIC_PLANE_B:g} deg "
        f"({100 * frac['galactic_plane']:.1f} % of the sky) |",
        f"| `masks/bulge.fits` | MOC: \\|l\\| < {BULGE_L:g} deg and \\|b\\| < {BULGE_B:g} deg "
        f"({100 * frac['bulge']:.2f} %) |",
        f"| `masks/no_images.fits` | MOC: order-{MASK_ORDER} cells whose rows all lack images "
        f"(none classified; {100 * frac['no_images']:.4f} %) |",
        f"| `masks/flagged_only.fits` | MOC: order-{MASK_ORDER} cells whose rows are all not "
        f"clean ({100 * frac['flagged_only']:.4f} %) |",
        "",
        "Counts are over **clean** rows (`quality_flags & 2015 == 0`, `iic_survey.core.flags."
        "NOT_CLEAN`). The labelled split is class-balanced, so `purity` holds for equal class "
        "fractions; for true fractions `f_k`: `purity_c = f_c n_from_c / sum_k f_k n_from_k`. "
        "The masks are IVOA MOCs: `mocpy.MOC.from_fits(path)`, then `moc.contains_lonlat(ra, "
        "dec)` (with astropy units).",
        "",
    ]
    if tables:
        lines += promise_lines(info.get("promises"))
    if info["markers_without_counts"]:
        n_old = info["markers_without_counts"]
        lines += [f"{n_old} work pixels were committed by an older version without per-cell "
                  "counts: they are not in the two catalog masks.", ""]  # fmt: skip
    lines += WORKED_EXAMPLE
    return "\n".join(lines)
