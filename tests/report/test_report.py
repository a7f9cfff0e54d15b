"""The catalog report: figures are real PNGs with content, metrics agree with scikit-learn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from iic_survey.core import healpix
from iic_survey.core.constants import CLASSES
from iic_survey.report import cli, config, examples, figures
from iic_survey.report import sections as report
from iic_survey.report import tally as report_tally
from iic_survey.testing.catalog import fake_results, write_catalog
from tests.fixtures.selection import fake_selection_tables

DPI = 50


@pytest.fixture(scope="module")
def results() -> tuple[pd.DataFrame, pd.DataFrame]:
    return fake_results(1500, seed=4)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory, results) -> str:
    out = str(tmp_path_factory.mktemp("rep") / "catalog")
    write_catalog(out, results[0])
    return out


def fake_stamps(rows: pd.DataFrame) -> np.ndarray:
    """A stand-in image source: a coloured blob on noise per row, (N, 3, 37, 37) in [0, 1]."""
    rng = np.random.default_rng(int(rows["cntr"].iloc[0]) % 2**32)
    y, x = np.mgrid[:37, :37]
    blob = np.exp(-((x - 18) ** 2 + (y - 18) ** 2) / 18.0)
    colour = rng.uniform(0.2, 1.0, (len(rows), 3, 1, 1))
    return np.clip(0.15 * rng.random((len(rows), 3, 37, 37)) + colour * blob, 0, 1)


def _check_png(path: Path, size_in: tuple[float, float], rows: int = 1) -> None:
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == (round(size_in[0] * DPI), round(size_in[1] * rows * DPI)), path.name
        a = np.asarray(im.convert("RGB"))
    assert a.std() > 5, path.name
    assert len(np.unique(a.reshape(-1, 3), axis=0)) > 50, path.name


@pytest.mark.slow
def test_full_report(tmp_path: Path, catalog: str, results) -> None:
    cfg = config.ReportConfig(dpi=DPI, n_examples=9, map_order=5)
    md = report.write_report(catalog, tmp_path, results[1], stamps=fake_stamps, config=cfg)
    text = md.read_text()
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == sorted(
        [f"examples_{c}.png" for c in (*CLASSES, "outlier")]
        + ["completeness_purity.png", "confidence.png", "confusion.png", "roc.png"]
        + ["sky_class_fractions.png", "sky_density.png", "sky_outliers.png"]
    )
    for name in pngs:
        assert f"]({name})" in text
    # the fake catalog covers a small cap: every map gets a zoom panel (two rows)
    for name in ("sky_density", "sky_class_fractions", "sky_outliers"):
        _check_png(tmp_path / f"{name}.png", config.FIGSIZES[name], rows=2)
    for c in (*CLASSES, "outlier"):
        _check_png(tmp_path / f"examples_{c}.png", config.FIGSIZES["examples"])
    for name in ("confidence", "confusion", "roc", "completeness_purity"):
        _check_png(tmp_path / f"{name}.png", config.FIGSIZES[name])
    df = results[0]
    assert f"{len(df):,} sources" in text
    assert f"| quasar | {int((df['class'] == 'quasar').sum()):,} |" in text
    assert "FETCH_FAILED" in text and "Accuracy" in text


def test_report_without_images_or_truth(tmp_path: Path, catalog: str) -> None:
    cfg = config.ReportConfig(dpi=DPI, map_order=4)
    md = report.write_report(catalog, tmp_path, config=cfg)
    text = md.read_text()
    assert "No image source was given" in text
    assert not list(tmp_path.glob("examples_*.png"))
    assert not (tmp_path / "confusion.png").exists()
    assert "truth" not in text


def test_a_failing_image_source_is_reported_not_fatal(tmp_path: Path, catalog: str) -> None:
    def broken(rows: pd.DataFrame) -> np.ndarray:
        raise OSError("archive unreachable")

    cfg = config.ReportConfig(dpi=DPI, map_order=3)
    text = report.write_report(catalog, tmp_path, stamps=broken, config=cfg).read_text()
    assert text.count("archive unreachable") == 4


@pytest.fixture(scope="module")
def sky_catalog(tmp_path_factory: pytest.TempPathFactory, tiny_sky: Any) -> str:
    """A classified catalog of the tiny sky's real sources, recording the sky as its images."""
    cols = ["cntr", "designation", "ra", "dec", "w1mpro", "w2mpro", "w3mpro"]
    src = pd.read_parquet(tiny_sky.catalog_url, columns=cols)
    rows, _ = fake_results(len(src), seed=7)
    for name in cols:
        rows[name] = src[name].to_numpy()
    out = str(tmp_path_factory.mktemp("sky_rep") / "catalog")
    write_catalog(out, rows, order=5, run_args={"images": tiny_sky.root})
    return out


def test_cli_cuts_example_grids_from_the_recorded_archive(tmp_path: Path, sky_catalog: str) -> None:
    out = tmp_path / "rep"
    argv = [sky_catalog, "--out-dir", str(out), "--map-order", "5", "--dpi", str(DPI)]
    assert cli.cli([*argv, "--examples", "4"]) == 0
    text = (out / "report.md").read_text()
    assert "skipped" not in text and "failed" not in text
    for name in (*CLASSES, "outlier"):
        path = out / f"examples_{name}.png"
        assert f"(examples_{name}.png)" in text
        _check_png(path, config.FIGSIZES["examples"])
        with Image.open(path) as im:
            a = np.asarray(im.convert("RGB")).astype(float)
        # real cutouts: every panel holds a bright source on a darker sky, not blank squares
        h, w = a.shape[:2]
        panels = [
            a[r * h // 2 : (r + 1) * h // 2, c * w // 2 : (c + 1) * w // 2]
            for r in (0, 1)
            for c in (0, 1)
        ]
        assert all(p.max() - np.median(p) > 100 for p in panels), name


def test_stamps_match_the_pipeline_inputs(tiny_sky: Any, sky_catalog: str) -> None:
    from iic_survey.stamps.maker import StampMaker

    rows = pd.read_parquet(tiny_sky.catalog_url).head(6).reset_index(drop=True)
    shown = examples.archive_stamps(tiny_sky.root)(rows)
    seen = StampMaker.from_spec(tiny_sky.root)(rows)["image"]
    assert shown.shape == seen.shape == (6, 3, 80, 80)
    assert shown.min() >= 0 and shown.max() <= 1
    # a per-stamp brightness factor only (then clipped to [0, 1]): the W1:W2:W3 ratios the
    # network sees are kept
    for a, b in zip(shown, seen, strict=True):
        mid = (a > 0.01) & (a < 0.99)
        assert mid.sum() > 100
        ratio = a[mid] / b[mid]
        np.testing.assert_allclose(ratio, ratio[0], rtol=1e-4)
        assert np.all(a[b <= 0] == 0)


def test_cli_without_a_usable_archive_still_writes_the_report(
    tmp_path: Path, sky_catalog: str, catalog: str
) -> None:
    base = ["--map-order", "3", "--dpi", "30"]
    gone = tmp_path / "gone"
    assert (
        cli.cli([sky_catalog, "--out-dir", str(tmp_path / "a"), "--images", str(gone), *base]) == 0
    )
    text = (tmp_path / "a" / "report.md").read_text()
    assert "could not be used" in text and str(gone) in text
    assert not list((tmp_path / "a").glob("examples_*.png"))
    assert cli.cli([sky_catalog, "--out-dir", str(tmp_path / "b"), "--no-cutouts", *base]) == 0
    assert "--no-cutouts was given" in (tmp_path / "b" / "report.md").read_text()
    # a catalog that records no archive (written without one) says so
    assert cli.cli([catalog, "--out-dir", str(tmp_path / "c"), *base]) == 0
    assert "records no image archive" in (tmp_path / "c" / "report.md").read_text()


def test_examples_are_deterministic_and_confident(catalog: str) -> None:
    from iic_survey.output.reader import iter_pixels

    cfg = config.ReportConfig(n_examples=5, example_min_confidence=0.9)
    picks = []
    for _ in range(2):
        tally = report_tally.Tally(cfg, None)
        for _, _, df in iter_pixels(catalog, config.COLUMNS):
            tally.add(df)
        picks.append({k: v["cntr"].tolist() for k, v in tally.examples.items()})
        assert (tally.examples["star"]["class"] == "star").all()
        assert (tally.examples["star"]["confidence"] >= 0.9).all()
        assert tally.examples["outlier"]["is_outlier"].all()
        assert len(tally.examples["galaxy"]) == 5
    assert picks[0] == picks[1]


def test_truth_metrics_agree_with_sklearn(results) -> None:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

    df, truth = results
    matched = df.merge(truth.rename(columns={"class": "true_class"}), on="cntr")
    m = report_tally.truth_metrics(matched)
    true = matched["true_class"].to_numpy()
    pred = matched["class"].fillna("unclassified").to_numpy()
    labels = [*CLASSES, "unclassified"]
    expected = confusion_matrix(true, pred, labels=labels)[:3]
    np.testing.assert_array_equal(m["confusion"], expected)
    ok = pred != "unclassified"
    prec, rec, f1, _ = precision_recall_fscore_support(true, pred, labels=list(CLASSES))
    for i, c in enumerate(CLASSES):
        assert m["per_class"][c]["precision"] == pytest.approx(prec[i])
        assert m["per_class"][c]["recall"] == pytest.approx(rec[i])
        assert m["per_class"][c]["f1"] == pytest.approx(f1[i])
        auc = roc_auc_score(true[ok] == c, matched.loc[ok, f"p_{c}"])
        assert m["per_class"][c]["auc"] == pytest.approx(auc, abs=1e-9)


def test_completeness_purity_bins() -> None:
    matched = pd.DataFrame(
        {
            "true_class": ["star"] * 6 + ["galaxy"] * 6,
            "class": ["star"] * 4 + [None, "galaxy"] + ["galaxy"] * 5 + ["star"],
        }
    )
    values = np.r_[np.zeros(6), np.ones(6)] + 0.5
    curves = report_tally.binned_completeness_purity(matched, values, [0, 1, 2], min_n=1)
    x, comp, pur = curves["star"]
    np.testing.assert_allclose(x, [0.5, 1.5])
    np.testing.assert_allclose(comp, [4 / 6, np.nan])
    np.testing.assert_allclose(pur, [1.0, 0.0])
    np.testing.assert_allclose(curves["galaxy"][1], [np.nan, 5 / 6])


def test_cli_and_config_checks(tmp_path: Path, catalog: str, results) -> None:
    truth = tmp_path / "truth.parquet"
    results[1].to_parquet(truth)
    out = tmp_path / "rep"
    argv = [
        catalog,
        "--out-dir",
        str(out),
        "--truth",
        str(truth),
        "--map-order",
        "3",
        "--dpi",
        "30",
    ]
    assert cli.cli(argv) == 0
    assert (out / "report.md").exists() and (out / "roc.png").exists()
    with pytest.raises(ValueError, match="too fine"):
        config.ReportConfig(map_order=12)
    with pytest.raises(ValueError, match="increasing"):
        config.ReportConfig(w1_edges=(10.0, 9.0))
    with pytest.raises(ValueError, match="cntr and class"):
        report_tally.load_truth(pd.DataFrame({"cntr": [1]}))
    with pytest.raises(ValueError, match="QSO"):
        report_tally.load_truth(pd.DataFrame({"cntr": [1], "class": ["QSO"]}))


def test_map_views() -> None:
    order = 3
    assert [v["kind"] for v in figures.map_views(np.ones(12 * 4**order), order)] == ["moll"]
    few = np.zeros(12 * 4**order)
    few[[0, 1]] = 5  # two pixels near RA 45, Dec 5..10: a zoom around them
    views = figures.map_views(few, order)
    assert [v["kind"] for v in views] == ["moll", "cart"]
    assert 30 < views[1]["rot"][0] < 60 and views[1]["latra"][0] < 5 < views[1]["latra"][1]


def test_separate_small_fields_get_one_zoom_each_drawn_from_fine_counts(monkeypatch) -> None:
    from iic_survey.report import zoom
    from iic_survey.testing.catalog import fake_results

    centres = [(165.5, 18.95), (226.07, -0.75), (316.85, -52.8), (139.8, 56.65)]
    frames = [fake_results(400, seed=i, centre=c, radius_deg=0.2)[0] for i, c in enumerate(centres)]
    df = pd.concat(frames, ignore_index=True)
    df["_healpix_29"] = healpix.healpix_29(df["ra"].to_numpy(), df["dec"].to_numpy())
    order = 6
    counts = np.bincount(
        df["_healpix_29"].to_numpy() >> (2 * (29 - order)), minlength=12 * 4**order
    )
    fine = zoom.FineTally()
    fine.add(df.iloc[:700])
    fine.add(df.iloc[700:])
    assert fine.table is not None and int(fine.table["n"].sum()) == len(df)
    views = figures.map_views(counts, order, fine.table)
    assert [v["kind"] for v in views] == ["moll"] + ["cart"] * 4
    found = sorted(v["rot"][0] for v in views[1:])
    assert np.allclose(found, sorted(c[0] for c in centres), atol=0.1)
    # each zoom spans its 0.4 deg field, not the whole sky or all four fields
    assert all(0.3 < v["latra"][1] - v["latra"][0] < 1.0 for v in views[1:])
    monkeypatch.setattr(zoom, "MAX_FINE", 10)  # too many fine pixels: no fine table
    big = zoom.FineTally()
    big.add(df)
    assert big.table is None


def test_selection_section_draws_the_catalogs_tables(tmp_path: Path) -> None:
    from iic_survey.output.selection_folder import SELECTION
    from iic_survey.report import selection_section
    from iic_survey.training import selection_tables

    tables = fake_selection_tables(seed=0, separation=2.5)
    root = tmp_path / "cat"
    assert selection_section.section(str(root), tmp_path, DPI)[2].startswith("This catalog has no")
    selection_tables.write_tables(root / SELECTION, tables, {"split": "test"})
    md = selection_section.section(f"{root}/iic_allwise", tmp_path, DPI)  # main catalog path too
    assert "![Reliability per W1 bin](reliability_w1.png)" in md
    assert sum(line.startswith("| quasar |") for line in md) == 3
    for name in ("reliability_w1.png", "selection_w1.png"):
        with Image.open(tmp_path / name) as im:
            assert np.asarray(im.convert("RGB")).std() > 5
