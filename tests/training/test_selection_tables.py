"""Selection products: completeness / purity tables, thresholds, reliability, masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hats.io.validation import is_valid_catalog

from iic_survey.core.flags import QualityFlag
from iic_survey.output import selection_folder
from iic_survey.testing.catalog import ORDER, fake_results, write_catalog
from iic_survey.training import selection_tables
from tests.fixtures.selection import fake_selection_tables


def _proba(pred: list[int], conf: list[float]) -> np.ndarray:
    """Rows whose arg-max is ``pred`` with top probability ``conf`` (the rest split evenly)."""
    p = np.zeros((len(pred), 3))
    for i, (k, c) in enumerate(zip(pred, conf, strict=True)):
        p[i] = (1 - c) / 2
        p[i, k] = c
    return p


def test_thresholds_are_the_smallest_whose_lower_bound_reaches_each_purity_and_are_verified():
    # 400 galaxies predicted galaxy at 0.9, 100 quasars predicted galaxy at 0.5: purity 0.8 at
    # thresholds <= 0.5, 1.0 above (lower bound 0.05 ** (1 / 400) = 0.9925), so 0.90 / 0.95 /
    # 0.99 all need threshold 0.51; 30 stars, pure, bound 0.05 ** (1 / 30) = 0.905: 0.90 only
    y = np.array([0] * 400 + [1] * 100 + [2] * 30)
    proba = _proba([0] * 500 + [2] * 30, [0.9] * 400 + [0.5] * 100 + [0.95] * 30)
    rec = selection_tables.recommended_thresholds(y, proba).set_index(["class", "target_purity"])
    assert rec.loc[("galaxy", 0.90), "threshold"] == pytest.approx(0.51)
    assert rec.loc[("galaxy", 0.99), "threshold"] == pytest.approx(0.51)
    assert rec.loc[("galaxy", 0.99), "purity"] == 1.0
    assert rec.loc[("galaxy", 0.99), "completeness"] == 1.0
    assert rec.loc[("star", 0.90), "threshold"] == pytest.approx(0.34)  # pure at any threshold
    assert np.isnan(rec.loc[("star", 0.95), "threshold"])  # 30 sources cannot show 0.95
    assert np.isnan(rec.loc[("quasar", 0.90), "threshold"])  # never predicted
    assert "not reached" in rec.loc[("quasar", 0.90), "note"]
    # a verify part where the galaxy threshold lets contaminants through, the star one not
    y2 = np.array([0] * 10 + [1] * 10 + [2] * 200)
    p2 = _proba([0] * 20 + [2] * 200, [0.9] * 10 + [0.6] * 10 + [0.95] * 200)
    v = selection_tables.verify_thresholds(rec.reset_index(), y2, p2).set_index(
        ["class", "target_purity"]
    )
    g = v.loc[("galaxy", 0.90)]
    assert (g.verify_n_selected, g.verify_n_correct, g.verify_n_true) == (20, 10, 10)
    assert g.verify_purity == pytest.approx(0.5) and g.purity == 1.0  # promised 1.0 on choose
    assert not g.held and g.verdict == "not held"
    s = v.loc[("star", 0.90)]
    assert s.verify_purity == 1.0 and s.verify_purity_lo95 == pytest.approx(0.05 ** (1 / 200))
    assert s.held and s.verdict == "held"
    assert v.loc[("quasar", 0.90), "verdict"] == "no threshold"
    assert "1 of 4 purity promises held" in selection_tables.promises_held(v.reset_index())


def test_verify_part_is_deterministic_disjoint_balanced_and_order_free():
    cntr = np.random.default_rng(0).choice(10**12, 20_000, replace=False) + 10**12
    part = selection_tables.verify_part(cntr)
    assert part.dtype == bool and 0.48 < part.mean() < 0.52
    assert np.array_equal(part, selection_tables.verify_part(cntr.copy()))  # deterministic
    order = np.random.default_rng(1).permutation(len(cntr))
    assert np.array_equal(
        part[order], selection_tables.verify_part(cntr[order])
    )  # per row, not order
    assert np.array_equal(part[:100], selection_tables.verify_part(cntr[:100]))  # nor batch-mates
    assert not set(cntr[part]) & set(cntr[~part])  # disjoint
    # consecutive cntr (a scan) are mixed, not blocked; another key draws other parts
    seq = selection_tables.verify_part(np.arange(10**12, 10**12 + 1000))
    assert 0.4 < seq[:500].mean() < 0.6 and 0.4 < seq[500:].mean() < 0.6
    assert 0.4 < np.mean(part != selection_tables.verify_part(cntr, key=12345)) < 0.6


def test_purity_bounds_are_scipys_one_sided_clopper_pearson():
    from scipy.stats import binomtest

    for k, n in [(0, 5), (1, 1), (7, 10), (95, 100), (990, 1000), (1000, 1000)]:
        # a two-sided 90 % exact interval's ends are the one-sided 95 % bounds
        ci = binomtest(k, n).proportion_ci(confidence_level=0.90, method="exact")
        assert selection_tables.purity_lower_bound(k, n) == pytest.approx(ci.low, abs=1e-12)
        assert selection_tables.purity_upper_bound(k, n) == pytest.approx(ci.high, abs=1e-12)
    assert np.isnan(selection_tables.purity_lower_bound(0, 0))
    lo = selection_tables.purity_lower_bound(np.array([9, 90, 900]), np.array([10, 100, 1000]))
    assert (np.diff(lo) > 0).all() and (lo < 0.9).all()  # more sources, tighter, still below


def test_selection_tables_choose_and_verify_on_disjoint_clean_parts():
    rng = np.random.default_rng(3)
    n = 4000
    y = rng.integers(0, 3, n)
    z = rng.normal(0, 1, (n, 3)) + 3.0 * np.eye(3)[y]
    proba = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    cntr = rng.choice(10**9, n, replace=False)
    flags = np.where(rng.random(n) < 0.1, int(QualityFlag.ARTEFACT), 0)
    split = {"label": y, "w1mpro": rng.uniform(11, 17, n), "ra": rng.uniform(0, 360, n),
             "dec": rng.uniform(-60, 60, n), "quality_flags": flags, "cntr": cntr}  # fmt: skip
    th = selection_tables.selection_tables(split, proba)["thresholds"]
    keep = flags == 0
    verify = selection_tables.verify_part(cntr)
    for _, r in th.iterrows():
        k = selection_tables.CLASSES.index(r["class"])
        assert r["n_true"] == ((y == k) & keep & ~verify).sum()
        assert r["verify_n_true"] == ((y == k) & keep & verify).sum()
    assert set(th["verdict"]) <= {"held", "not held", "not shown", "no threshold"}
    assert th["held"].any()


def test_tables_count_by_bin_and_threshold_on_clean_rows_only():
    y = np.array([0, 0, 1, 2, 0])
    proba = _proba([0, 1, 1, 2, 0], [0.8, 0.6, 0.9, 0.7, 0.99])
    w1 = np.array([12.0, 12.5, 15.2, 15.2, 12.0])
    ra, dec = np.array([10.0, 10.0, 10.0, 10.0, 10.0]), np.array([-60.0] * 5)  # |b| ~ 56.9
    flags = np.array([0, 0, 0, 0, int(QualityFlag.ARTEFACT)])  # the last row is not clean
    split = {"label": y, "w1mpro": w1, "ra": ra, "dec": dec, "quality_flags": flags,
             "cntr": np.arange(5)}  # fmt: skip
    t = selection_tables.selection_tables(split, proba)
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
    b, beta = selection_tables.positions(np.array([266.405, 270.0]), np.array([-28.936, 66.561]))
    assert b[0] < 0.1  # the Galactic centre
    assert beta[1] > 89.9  # the north ecliptic pole


def test_write_tables_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 600)
    proba = _proba(list(y), list(rng.uniform(0.5, 1.0, 600)))
    split = {"label": y, "w1mpro": rng.uniform(10, 17, 600), "ra": rng.uniform(0, 360, 600),
             "dec": rng.uniform(-80, 80, 600), "quality_flags": np.zeros(600, int),
             "cntr": np.arange(600)}  # fmt: skip
    t = selection_tables.selection_tables(split, proba)
    selection_tables.write_tables(tmp_path, t, {"split": "test"})
    back = pd.read_parquet(tmp_path / selection_tables.FILES["thresholds"])
    pd.testing.assert_frame_equal(back, t["thresholds"])
    assert (tmp_path / selection_tables.SUMMARY).exists()


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
    info = selection_folder.publish(out, str(model))
    sel = Path(out) / "selection"
    assert info["tables"] == ["thresholds.parquet"]
    assert (sel / "thresholds.parquet").read_bytes() == b"PAR1-test"
    masks = {m: MOC.from_fits(sel / "masks" / f"{m}.fits") for m in selection_folder.MASKS}
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
    assert "promises hold is **not known**" in (sel / "README.md").read_text()  # not a table
    assert is_valid_catalog(out, strict=True)  # the collection is still valid HATS


def test_publish_without_model_tables_or_counts_still_writes_masks(tmp_path):
    out, _ = _catalog_with_gaps(tmp_path)
    for marker in (Path(out) / "_done").rglob("*.json"):  # markers of an older version
        doc = json.loads(marker.read_text())
        doc.pop("histogram_clean"), doc.pop("histogram_classified")
        marker.write_text(json.dumps(doc))
    info = selection_folder.publish(out, str(tmp_path / "old_model"))
    text = (Path(out) / "selection" / "README.md").read_text()
    assert info["tables"] == [] and "**absent**" in text
    assert info["markers_without_counts"] > 0 and "older version" in text
    assert info["mask_sky_fraction"]["no_images"] == 0.0
    assert (Path(out) / "selection" / "masks" / "galactic_plane.fits").exists()


def test_the_readme_worked_example_runs_on_a_published_catalog(tmp_path):
    import re

    out, df = _catalog_with_gaps(tmp_path)
    tables = fake_selection_tables(seed=2, separation=3.0, n=3000)  # 0.95 within reach
    selection_tables.write_tables(tmp_path / "model" / "selection", tables, {"split": "test"})
    selection_folder.publish(out, str(tmp_path / "model"))
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme[readme.index("A worked example, quasars at purity") :]
    code = re.search(r"```python\n(.*?)```", block, re.S).group(1)
    scope = {"root": out}
    exec(code, scope)
    q, cut = scope["q"], scope["cut"]
    text = (Path(out) / "selection" / "README.md").read_text()
    th = tables["thresholds"]
    made = th[th["verdict"] != "no threshold"]
    assert f"Purity promises: {int(made['held'].sum())} of {len(made)} held" in text
    assert text.count("| held |") == int(made["held"].sum())
    assert 0.34 < cut < 1.0
    # the whole fake catalog lies in the Galactic plane: the mask leaves no row
    assert len(q) == 0
    before = df[(df["class"] == "quasar") & (df["subset"] == "safe") & (df["confidence"] >= cut)]
    assert len(before) > 0  # so it was the mask that removed them
