"""The catalog report: figures are real PNGs with content, metrics agree with scikit-learn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from iic_survey import CLASSES, report
from tests.test_output import fake_results, write_catalog

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
    cfg = report.ReportConfig(dpi=DPI, n_examples=9, map_order=5)
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
        _check_png(tmp_path / f"{name}.png", report.FIGSIZES[name], rows=2)
    for c in (*CLASSES, "outlier"):
        _check_png(tmp_path / f"examples_{c}.png", report.FIGSIZES["examples"])
    for name in ("confidence", "confusion", "roc", "completeness_purity"):
        _check_png(tmp_path / f"{name}.png", report.FIGSIZES[name])
    df = results[0]
    assert f"{len(df):,} sources" in text
    assert f"| quasar | {int((df['class'] == 'quasar').sum()):,} |" in text
    assert "FETCH_FAILED" in text and "Accuracy" in text


def test_report_without_images_or_truth(tmp_path: Path, catalog: str) -> None:
    cfg = report.ReportConfig(dpi=DPI, map_order=4)
    md = report.write_report(catalog, tmp_path, config=cfg)
    text = md.read_text()
    assert "No image source was given" in text
    assert not list(tmp_path.glob("examples_*.png"))
    assert not (tmp_path / "confusion.png").exists()
    assert "truth" not in text


def test_a_failing_image_source_is_reported_not_fatal(tmp_path: Path, catalog: str) -> None:
    def broken(rows: pd.DataFrame) -> np.ndarray:
        raise OSError("archive unreachable")

    cfg = report.ReportConfig(dpi=DPI, map_order=3)
    text = report.write_report(catalog, tmp_path, stamps=broken, config=cfg).read_text()
    assert text.count("archive unreachable") == 4


def test_examples_are_deterministic_and_confident(catalog: str) -> None:
    from iic_survey.export import iter_pixels

    cfg = report.ReportConfig(n_examples=5, example_min_confidence=0.9)
    picks = []
    for _ in range(2):
        tally = report._Tally(cfg, None)
        for _, _, df in iter_pixels(catalog, report._COLUMNS):
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
    m = report.truth_metrics(matched)
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
    curves = report.binned_completeness_purity(matched, values, [0, 1, 2], min_n=1)
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
    assert report.cli(argv) == 0
    assert (out / "report.md").exists() and (out / "roc.png").exists()
    with pytest.raises(ValueError, match="too fine"):
        report.ReportConfig(map_order=12)
    with pytest.raises(ValueError, match="increasing"):
        report.ReportConfig(w1_edges=(10.0, 9.0))
    with pytest.raises(ValueError, match="cntr and class"):
        report.load_truth(pd.DataFrame({"cntr": [1]}))
    with pytest.raises(ValueError, match="QSO"):
        report.load_truth(pd.DataFrame({"cntr": [1], "class": ["QSO"]}))


def test_map_views() -> None:
    order = 3
    assert [v["kind"] for v in report._views(np.ones(12 * 4**order), order)] == ["moll"]
    few = np.zeros(12 * 4**order)
    few[[0, 1]] = 5  # two pixels near RA 45, Dec 5..10: a zoom around them
    views = report._views(few, order)
    assert [v["kind"] for v in views] == ["moll", "cart"]
    assert 30 < views[1]["rot"][0] < 60 and views[1]["latra"][0] < 5 < views[1]["latra"][1]
