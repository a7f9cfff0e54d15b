"""Selection products: completeness / purity tables, thresholds, reliability, masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hats.io.validation import is_valid_catalog

from iic_survey.core.flags import QualityFlag
from iic_survey.output import selection as out_selection
from iic_survey.training import selection
from tests.fixtures.selection import fake_selection_tables
from tests.test_output import ORDER, fake_results, write_catalog


def _proba(pred: list[int], conf: list[float]) -> np.ndarray:
    """Rows whose arg-max is ``pred`` with top probability ``conf`` (the rest split evenly)."""
    p = np.zeros((len(pred), 3))
    for i, (k, c) in enumerate(zip(pred, conf, strict=True)):
        p[i] = (1 - c) / 2
        p[i, k] = c
    return p


def test_thresholds_are_the_smallest_reaching_each_purity_and_hold_elsewhere():
    # 40 galaxies predicted galaxy at 0.9, 10 quasars predicted galaxy at 0.5: purity 0.8 at
    # thresholds <= 0.5, 1.0 above; so 0.90 / 0.95 / 0.99 all need threshold 0.51
    y = np.array([0] * 40 + [1] * 10 + [2] * 30)
    proba = _proba([0] * 40 + [0] * 10 + [2] * 30, [0.9] * 40 + [0.5] * 10 + [0.95] * 30)
    rec = selection.recommended_thresholds(y, proba).set_index(["class", "target_purity"])
    assert rec.loc[("galaxy", 0.90), "threshold"] == pytest.approx(0.51)
    assert rec.loc[("galaxy", 0.99), "purity"] == 1.0
    assert rec.loc[("galaxy", 0.99), "completeness"] == 1.0
    assert rec.loc[("star", 0.90), "threshold"] == pytest.approx(0.34)  # pure at any threshold
    assert np.isnan(rec.loc[("quasar", 0.90), "threshold"])  # never predicted
    assert "not reached" in rec.loc[("quasar", 0.90), "note"]
    # another split where the same thresholds let contaminants through
    y2 = np.array([0] * 10 + [1] * 10)
    p2 = _proba([0] * 20, [0.9] * 10 + [0.6] * 10)
    held = selection.measure_thresholds(rec.reset_index(), y2, p2).set_index(
        ["class", "target_purity"]
    )
    assert held.loc[("galaxy", 0.90), "purity"] == pytest.approx(0.5)
    assert held.loc[("galaxy", 0.90), "promised_purity"] == 1.0


def test_tables_count_by_bin_and_threshold_on_clean_rows_only():
    y = np.array([0, 0, 1, 2, 0])
    proba = _proba([0, 1, 1, 2, 0], [0.8, 0.6, 0.9, 0.7, 0.99])
    w1 = np.array([12.0, 12.5, 15.2, 15.2, 12.0])
    ra, dec = np.array([10.0, 10.0, 10.0, 10.0, 10.0]), np.array([-60.0] * 5)  # |b| ~ 56.9
    flags = np.array([0, 0, 0, 0, int(QualityFlag.ARTEFACT)])  # the last row is not clean
    t = selection.selection_tables(y, proba, w1, ra, dec, flags)
    cp = t["completeness_purity"]
    g = cp[(cp["class"] == "galaxy") & (cp["threshold"] == 0.5) & (cp["w1_hi"] == 13.0)]
    (row,) = g.itertuples()
    assert (row.n_true, row.n_selected, row.n_correct) == (2, 1, 1)
    assert row.completeness == 0.5 and row.purity == 1.0 and row.abs_b_lo == 30.0
    q = cp[(cp["class"] == "quasar") & (cp["threshold"] == 0.5) & (cp["w1_hi"] == 13.0)]
    assert q["n_selected"].item() == 1 and q["n_from_galaxy"].item() == 1
    assert q["purity"].item() == 0.0 and np.isnan(q["completeness"].item())  # no true quasar
    # the W1 marginal sums the positional table
    w = t["completeness_purity_w1"]
    key = ["class", "threshold", "w1_lo"]
    summed = cp.groupby(key)[["n_true", "n_selected", "n_correct"]].sum()
    assert (w.set_index(key)[["n_true", "n_selected", "n_correct"]] == summed).all().all()
    rel = t["reliability_w1"]
    assert rel["n"].sum() == 4  # clean rows only


def test_positions_are_galactic_and_ecliptic_latitudes():
    b, beta = selection.positions(np.array([266.405, 270.0]), np.array([-28.936, 66.561]))
    assert b[0] < 0.1  # the Galactic centre
    assert beta[1] > 89.9  # the north ecliptic pole


def test_write_tables_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 600)
    proba = _proba(list(y), list(rng.uniform(0.5, 1.0, 600)))
    t = selection.selection_tables(
        y, proba, rng.uniform(10, 17, 600), rng.uniform(0, 360, 600),
        rng.uniform(-80, 80, 600), np.zeros(600, int),
    )  # fmt: skip
    selection.write_tables(tmp_path, t, {"split": "test"})
    back = pd.read_parquet(tmp_path / selection.FILES["thresholds"])
    pd.testing.assert_frame_equal(back, t["thresholds"])
    assert (tmp_path / selection.SUMMARY).exists()


# ------------------------------------------------------------------ the catalog's selection/


def _catalog_with_gaps(tmp_path) -> tuple[str, pd.DataFrame]:
    """A catalog in the Galactic plane (centre l ~ 0, b ~ 0) with one region of unclassified
    rows and one region of rows that are classified but all flagged."""
    df, _ = fake_results(3000, seed=3, centre=(266.4, -28.9), radius_deg=3.0)
    df["quality_flags"] = df["quality_flags"] & ~int(QualityFlag.FETCH_FAILED)
    ra, dec = df["ra"].to_numpy(), df["dec"].to_numpy()
    dark = (ra > 267.5) & (dec > -28.0)  # no images there
    flagged = (ra < 265.0) & (dec < -29.5)  # only artefacts there
    df.loc[dark, "quality_flags"] = int(QualityFlag.FETCH_FAILED)
    for c in ("p_galaxy", "p_quasar", "p_star", "confidence", "entropy", "ood_score"):
        df.loc[dark, c] = np.nan
    df.loc[dark, "class"] = None
    df.loc[dark, "is_outlier"] = False
    df.loc[flagged, "quality_flags"] = int(QualityFlag.ARTEFACT)
    out = str(tmp_path / "cat")
    write_catalog(out, df, ORDER)
    return out, df


def test_publish_writes_masks_and_copies_the_models_tables(tmp_path):
    import astropy.units as u
    from mocpy import MOC

    out, df = _catalog_with_gaps(tmp_path)
    model = tmp_path / "model"
    (model / "selection").mkdir(parents=True)
    (model / "selection" / "thresholds.parquet").write_bytes(b"PAR1-test")
    info = out_selection.publish(out, str(model))
    sel = Path(out) / "selection"
    assert info["tables"] == ["thresholds.parquet"]
    assert (sel / "thresholds.parquet").read_bytes() == b"PAR1-test"
    masks = {m: MOC.from_fits(sel / "masks" / f"{m}.fits") for m in out_selection.MASKS}
    ra, dec = df["ra"].to_numpy() * u.deg, df["dec"].to_numpy() * u.deg
    flags = df["quality_flags"].to_numpy()
    dark = (flags & int(QualityFlag.FETCH_FAILED)) != 0
    flagged = (flags & int(QualityFlag.ARTEFACT)) != 0
    inside_no_images = masks["no_images"].contains_lonlat(ra, dec)
    inside_flagged = masks["flagged_only"].contains_lonlat(ra, dec)
    # every mask cell holds only such rows; most such rows are in their mask (edge cells mix)
    assert not inside_no_images[~dark].any() and inside_no_images[dark].mean() > 0.5
    assert not inside_flagged[~(dark | flagged)].any() and inside_flagged[flagged].mean() > 0.5
    assert masks["galactic_plane"].contains_lonlat(ra, dec).all()  # |b| < 3.5 everywhere here
    assert masks["bulge"].contains_lonlat(ra, dec).all()
    far = masks["galactic_plane"].contains_lonlat([0.0] * u.deg, [90.0] * u.deg)  # b ~ 27
    assert not far[0]
    assert abs(info["mask_sky_fraction"]["galactic_plane"] - np.sin(np.radians(10))) < 0.005
    assert "thresholds.parquet" in (sel / "README.md").read_text()
    assert is_valid_catalog(out, strict=True)  # the collection is still valid HATS


def test_publish_without_model_tables_or_counts_still_writes_masks(tmp_path):
    out, _ = _catalog_with_gaps(tmp_path)
    for marker in (Path(out) / "_done").rglob("*.json"):  # markers of an older version
        doc = json.loads(marker.read_text())
        doc.pop("histogram_clean"), doc.pop("histogram_classified")
        marker.write_text(json.dumps(doc))
    info = out_selection.publish(out, str(tmp_path / "old_model"))
    text = (Path(out) / "selection" / "README.md").read_text()
    assert info["tables"] == [] and "**absent**" in text
    assert info["markers_without_counts"] > 0 and "older version" in text
    assert info["mask_sky_fraction"]["no_images"] == 0.0
    assert (Path(out) / "selection" / "masks" / "galactic_plane.fits").exists()


def test_the_readme_worked_example_runs_on_a_published_catalog(tmp_path):
    import re

    out, df = _catalog_with_gaps(tmp_path)
    tables = fake_selection_tables(seed=2, separation=1.5)
    selection.write_tables(tmp_path / "model" / "selection", tables, {"split": "test"})
    out_selection.publish(out, str(tmp_path / "model"))
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme[readme.index("A worked example, quasars at purity") :]
    code = re.search(r"```python\n(.*?)```", block, re.S).group(1)
    scope = {"root": out}
    exec(code, scope)
    q, cut = scope["q"], scope["cut"]
    assert 0.34 < cut < 1.0
    # the whole fake catalog lies in the Galactic plane: the mask leaves no row
    assert len(q) == 0
    before = df[(df["class"] == "quasar") & (df["subset"] == "safe") & (df["confidence"] >= cut)]
    assert len(before) > 0  # so it was the mask that removed them
