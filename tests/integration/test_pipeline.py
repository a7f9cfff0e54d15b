"""The sky pipeline: planning, stages, and whole runs on the session's local Ray cluster."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import healpy as hp
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from iic_survey.core import healpix, metrics
from iic_survey.core.calibration import DepthCalibration
from iic_survey.core.constants import CLASSES, SUBSETS
from iic_survey.core.flags import UNCLASSIFIABLE, QualityFlag
from iic_survey.core.paths import as_path
from iic_survey.inputs.allwise_schema import PIPELINE_COLUMNS
from iic_survey.inputs.catalog import open_catalog
from iic_survey.model import ood as model_ood
from iic_survey.model.domain import TrainingDomain
from iic_survey.model.ood import OodStats
from iic_survey.output import commit, schema, staging
from iic_survey.stamps.maker import StampMaker
from iic_survey.stamps.split import StampCutter
from iic_survey.survey.classify import Classify, Scoring, result_rows, scoring_record
from iic_survey.survey.config import PipelineConfig, PipelineError
from iic_survey.survey.plan import assign_pixels, plan_run
from iic_survey.survey.run import run_pipeline
from iic_survey.survey.stages import ChunkStage, PartWriter, PixelReader, chunk_rows

# Lives in tests/fixtures/model.py; re-exported for test_faults.py and test_bad_input.py.
from iic_survey.testing.model import make_model_dir
from tests.fixtures.crashes import crash_after_commits


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir: str) -> str:
    """The session's tiny model directory (read-only: the runs share it)."""
    return tiny_model_dir


def config(tiny_sky, model_dir: str, out: str, **kw) -> PipelineConfig:
    base = dict(
        catalog=tiny_sky.catalog_url,
        images=tiny_sky.images_url,
        model_dir=model_dir,
        output=out,
        chunk_size=400,
        model_batch_size=128,
        inference_actors=1,
        progress_interval_s=2.0,
    )
    base.update(kw)
    return PipelineConfig.create(**base)


# ------------------------------------------------------------------------------ pure pieces


def test_config_checks():
    kw = dict(catalog="c", images="i", model_dir="m", output="o")
    with pytest.raises(ValueError, match=r"0\.\.8"):
        PipelineConfig.create(**kw, healpix_order=9)
    with pytest.raises(ValueError, match="not both"):
        PipelineConfig.create(**kw, pixels=(1,), cone=(10.0, 10.0, 1.0))
    with pytest.raises(ValueError, match="did you mean 'tiles'"):
        PipelineConfig.create(**kw, cutout_mode="tile")
    with pytest.raises(ValueError, match="out of range"):
        PipelineConfig.create(**kw, healpix_order=0, pixels=(12,))
    with pytest.raises(ValueError, match="limit"):
        PipelineConfig.create(**kw, limit=0)
    with pytest.raises(ValueError, match="empty"):
        PipelineConfig.create(**{**kw, "catalog": " "})
    assert PipelineConfig.create(**kw, pixels=(5, 3, 5)).selection.pixels == (3, 5)
    with pytest.raises(TypeError, match="did you mean 'chunk_size'"):
        PipelineConfig.create(**kw, chunk_sise=4)
    with pytest.raises(ValueError, match="service_timeout_s"):
        PipelineConfig.create(**kw, service_timeout_s=0)


def test_the_service_timeout_reaches_the_cutout_service(tiny_sky):
    from iic_survey.survey.stages import _stamp_maker

    cfg = PipelineConfig.create(tiny_sky.catalog_url, "irsa", "m", "o", cutout_mode="service")
    assert _stamp_maker(cfg, {}).cutout.service.read_timeout_s == 30.0
    quick = dataclasses.replace(cfg, inputs=dataclasses.replace(cfg.inputs, service_timeout_s=2.5))
    maker = _stamp_maker(quick, {})
    assert maker.cutout.method == "service" and maker.cutout.service.read_timeout_s == 2.5


def test_chunks_fit_the_object_store(monkeypatch):
    import ray

    cfg = PipelineConfig.create("c", "i", "m", "o")
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"object_store_memory": 1e9})
    # eight 37x37x3 float32 stamp chunks per actor in half the store: 1,979 rows on test heads
    assert chunk_rows(cfg, 2) == int(1e9 / 2 / (8 * 2 * 3 * 37 * 37 * 4)) == 1902
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"object_store_memory": 1e8})
    assert chunk_rows(cfg, 2) == 190
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"object_store_memory": 600e9})
    assert chunk_rows(cfg, 8) == 2048  # a GPU node: the cap
    assert chunk_rows(PipelineConfig.create("c", "i", "m", "o", chunk_size=300), 2) == 300
    # a small run: two chunks for every actor (a pixel of 2,500 rows, 3 actors: 6 of 417)
    assert chunk_rows(cfg, 3, rows=2500) == 417
    assert chunk_rows(cfg, 3, rows=10**6) == 2048  # a big run: unchanged
    assert chunk_rows(cfg, 8, rows=100) == 128  # never below the floor
    assert chunk_rows(PipelineConfig.create("c", "i", "m", "o", chunk_size=300), 3, 50) == 300


def test_a_small_run_gives_every_actor_two_chunks(
    ray_cluster, tiny_sky, model_dir, tmp_path, caplog
):
    """The run sizes its chunks from its own rows (the planned ones), not the object store alone:
    the tiny sky's rows over 3 actors are six chunks, so no started actor idles."""
    import logging

    from iic_survey.survey.stages import build_dataset, inference_resources, open_inputs

    cfg = config(tiny_sky, model_dir, str(tmp_path / "out"), chunk_size=None, inference_actors=3)
    inputs = open_inputs(cfg)
    plan = plan_run(cfg, inputs.catalog)
    actors = inference_resources(cfg)[0]
    want = chunk_rows(cfg, actors, plan.todo_rows)
    assert actors == 3 and plan.todo_rows == tiny_sky.n_sources and want < chunk_rows(cfg, 3)
    assert want == max(128, -(-tiny_sky.n_sources // 6))
    with caplog.at_level(logging.INFO, logger="iic_survey.survey.stages"):
        build_dataset(cfg, inputs, plan)  # lazy: nothing runs
    assert f"{actors} actors, 0 GPU each; chunks of {want} rows" in caplog.text


def test_assign_pixels_matches_healpy():
    rng = np.random.default_rng(0)
    k5 = 4321
    ra0, dec0 = healpix.pixel_center(k5, 5)
    ra = ra0 + rng.uniform(-0.5, 0.5, 500)
    dec = dec0 + rng.uniform(-0.5, 0.5, 500)
    inside = hp.ang2pix(32, ra, dec, nest=True, lonlat=True) == k5
    ra, dec = ra[inside], dec[inside]
    got = assign_pixels(ra, dec, 7, k5, 5)
    np.testing.assert_array_equal(got, hp.ang2pix(128, ra, dec, nest=True, lonlat=True))
    bad = assign_pixels(np.array([np.nan, 400.0]), np.array([0.0, 0.0]), 7, k5, 5)
    np.testing.assert_array_equal(bad, [k5 << 4, k5 << 4])  # the partition's first child


def _batch(flags: list[int]) -> dict[str, np.ndarray]:
    n = len(flags)
    return {
        "_pixel": np.full(n, 7, np.int64),
        "_row": np.arange(n, dtype=np.int64),
        "_chunk": np.zeros(n, np.int32),
        "cntr": np.arange(100, 100 + n, dtype=np.int64),
        "designation": np.array([f"J{i}" for i in range(n)], dtype=object),
        "ra": np.linspace(10, 11, n),
        "dec": np.linspace(-5, -4, n),
        "w1mpro": np.full(n, 15.0),
        "w2mpro": np.full(n, 14.5),
        "w3mpro": np.full(n, 11.0),
        "quality_flags": np.asarray(flags, dtype=np.uint32),
    }


def test_result_rows_probabilities_and_outliers():
    logits = np.array([[6.0, 0.0, 0.0], [0.1, 0.0, 0.05], [0.0, 5.0, 0.0], [1.0, 2.0, 3.0]])
    flags = [0, int(QualityFlag.W3_UNDETECTED), int(QualityFlag.FETCH_FAILED), 0]
    ood = np.array([1.0, 2.0, 3.0, 50.0])
    out = result_rows(
        _batch(flags),
        logits,
        ood,
        Scoring(
            calibration=DepthCalibration.constant(2.0),
            confidence_threshold=0.6,
            ood_threshold=10.0,
            model_version="m",
        ),
    )
    p = np.stack([out[f"p_{c}"] for c in CLASSES], axis=1).astype(np.float64)
    z = np.exp(logits / 2.0)
    expected = z / z.sum(axis=1, keepdims=True)
    ok = [0, 1, 3]
    np.testing.assert_allclose(p[ok], expected[ok], rtol=1e-6)
    np.testing.assert_allclose(p[ok].sum(axis=1), 1.0, rtol=1e-6)
    assert np.isnan(p[2]).all() and out["class"][2] is None  # unclassifiable: nulls
    assert np.isnan(out["confidence"][2]) and np.isnan(out["ood_score"][2])
    assert list(out["class"][[0, 1, 3]]) == ["galaxy", "galaxy", "star"]
    np.testing.assert_allclose(out["confidence"][ok], expected[ok].max(axis=1), rtol=1e-6)
    ent = -(expected * np.log(expected)).sum(axis=1)
    np.testing.assert_allclose(out["entropy"][ok], ent[ok], rtol=1e-5)
    # row 1: near-uniform -> low confidence; row 3: far from the training set; row 2: not judged
    assert out["is_outlier"].tolist() == [False, True, False, True]
    assert out["quality_flags"].dtype == np.int32 and out["model_version"][0] == "m"


def test_result_rows_calibrate_per_depth_carry_allwise_columns_and_label_subsets():
    n = 7
    batch = {
        **_batch([0, 0, 0, int(QualityFlag.ARTEFACT), int(QualityFlag.FETCH_FAILED), 0, 0]),
        "w1mpro": np.array([12.0, 17.0, 15.0, 15.0, 15.0, 19.5, 15.0]),
        "w2mpro": np.array([11.8, 16.0, 14.5, 14.5, 14.5, 18.5, 13.0]),
        "w3mpro": np.array([11.0, 15.0, 11.0, 11.0, 11.0, 16.0, 11.0]),
        "features": np.zeros((n, 7), np.float32),  # no W3 detections: W2-W3 not judged
        "cc_flags": np.array(["0000", "0000", "00h0", "H000", "0000", "0000", "0000"], object),
        "ph_qual": np.array(["AAAU"] * n, dtype=object),
        "nb": np.ones(n, np.int64),
        "w4mpro": np.full(n, 9.1),
    }
    calibration = DepthCalibration(knots=(13.0, 17.0), log_t=(0.0, np.log(3.0)), temperature=1.5)
    domain = TrainingDomain(w1=(8.0, 18.0), w1_w2=(-0.5, 1.2), w2_w3=(-1.0, 5.0))
    scoring = Scoring(calibration, 0.4, 10.0, "m", domain)
    logits = np.tile([3.0, 0.0, 0.0], (n, 1))
    ood = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 50.0])
    out = result_rows(batch, logits, ood, scoring)
    p0 = np.stack([out[f"p_{c}"] for c in CLASSES], axis=1)
    # each row at the temperature of its own depth: T = 1 at W1 12, 3 at W1 17
    np.testing.assert_allclose(p0[0], metrics.softmax(logits[:1], 1.0)[0], rtol=1e-6)
    np.testing.assert_allclose(p0[1], metrics.softmax(logits[:1], 3.0)[0], rtol=1e-6)
    assert out["subset"].tolist() == [
        "safe",
        "safe",  # W1 17 is inside the training range
        "safe",  # a lower-case (real, contaminated) cc_flags is still clean
        "unsafe",  # AllWISE artefact
        "unsafe",  # unclassified
        "extrapolation",  # fainter than the training set
        "unsafe",  # out of distribution
    ]
    assert out["cc_flags"][3] == "H000" and out["nb"][0] == 1 and out["w4mpro"][0] == 9.1
    assert out["w1snr"][0] is None  # absent from the batch: null
    table = schema.as_output_table(
        pd.DataFrame(out).drop(columns=["_pixel", "_row", "_chunk"]),
        5,
        int(healpix.pixel_of(np.array([10.5]), np.array([-4.5]), 5)[0]),
    )
    assert table.column("subset").type == pa.dictionary(pa.int8(), pa.string())
    # an older model (no training domain): nothing is extrapolation
    old = result_rows(batch, logits, ood, dataclasses.replace(scoring, domain=None))
    assert old["subset"][5] == "safe" and old["subset"][3] == "unsafe"


def test_training_domain_ranges_and_roundtrip():
    rng = np.random.default_rng(0)
    w1 = rng.uniform(10, 16, 5000)
    phot = {"w1mpro": w1, "w2mpro": w1 - 0.3, "w3mpro": w1 - 3.0,
            "w3_detected": np.arange(5000) % 2 == 0}  # fmt: skip
    dom = TrainingDomain.from_photometry(phot)
    assert 10 <= dom.w1[0] < 10.05 and 15.95 < dom.w1[1] <= 16
    assert TrainingDomain.from_dict(json.loads(json.dumps(dom.to_dict()))) == dom
    assert TrainingDomain.from_dict({}) is None
    probe = {
        "w1mpro": np.array([12.0, 16.5, 12.0]),
        "w2mpro": np.array([11.7, 16.2, 10.0]),
        "w3mpro": np.array([0.0, 0.0, 0.0]),
        "w3_detected": np.array([False, False, False]),
    }
    assert dom.inside(probe).tolist() == [True, False, False]  # too faint; too red in W1-W2


def test_ood_stats_roundtrip():
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(200, 5))
    stats = model_ood.ood_statistics(emb, rng.normal(size=(200, 3)), temperature=1.0)
    ood = OodStats.from_model(json.loads(json.dumps({"ood": stats})))
    assert ood is not None and ood.threshold == stats["mahalanobis_threshold"]
    np.testing.assert_allclose(
        ood.score(emb[:7]),
        model_ood.mahalanobis(emb[:7], np.array(stats["mean"]), np.array(stats["precision"])),
    )
    assert OodStats.from_model(stats) is not None
    assert OodStats.from_model({}) is None and OodStats.from_model(None) is None


def test_plan_is_exact_at_every_order(tiny_sky):
    """Orders 4, 5 and 6 each plan every catalog row exactly once; deeper = split parents."""
    cat = open_catalog(tiny_sky.catalog_url)
    plans = {
        k: plan_run(PipelineConfig.create("c", "i", "m", "o", healpix_order=k), cat)
        for k in (4, 5, 6)
    }
    for plan in plans.values():
        assert sum(plan.counts.values()) == tiny_sky.n_sources
        assert plan.todo == tuple(plan.counts) and not plan.finished and not plan.partial
    p5, p6 = plans[5], plans[6]
    for k5, n in p5.counts.items():
        assert sum(v for p, v in p6.counts.items() if p >> 2 == k5) == n
    assert all(len(u["pixels"]) >= 1 and u["read_order"] == 5 for u in p6.units)
    assert len(p6.units) == len(p5.counts)  # one read per parent partition
    first = next(iter(p5.counts))
    limited = plan_run(PipelineConfig.create("c", "i", "m", "o", limit=1), cat, finished=[first])
    assert limited.finished == (first,) and len(limited.todo) == 1 and limited.partial


def _one_pixel(sky, index: int, chunk_size: int) -> tuple[Any, int, dict[str, Any], PixelReader]:
    """(catalog, pixel, its work unit, a reader in chunks of ``chunk_size``) of a sky's pixel."""
    cat = open_catalog(sky.catalog_url)
    pixel = int(sky.pixels[index])
    n = cat.count(pixel, 5)
    unit = {"read_order": 5, "read_pixel": pixel, "pixels": [pixel], "counts": [n]}
    return cat, pixel, unit, PixelReader(cat, PIPELINE_COLUMNS, 5, chunk_size=chunk_size)


def test_pixel_reader_chunks(tiny_sky):
    cat, pixel, unit, reader = _one_pixel(tiny_sky, 0, chunk_size=300)
    n = unit["counts"][0]
    chunks = list(reader(pd.DataFrame({"unit": [json.dumps(unit)]})))
    assert all(len(c) <= 300 for c in chunks) and len(chunks) == -(-n // 300)
    allrows = pd.concat(chunks, ignore_index=True)
    np.testing.assert_array_equal(allrows["_row"], np.arange(n))
    np.testing.assert_array_equal(allrows["_chunk"], np.arange(n) // 300)
    assert (allrows["_pixel"] == pixel).all()
    assert allrows["coadd_id"].is_monotonic_increasing  # tiles grouped: few reads per chunk
    assert all(g["wy"].is_monotonic_increasing for _, g in allrows.groupby("coadd_id"))
    direct = cat.read_pixel(pixel, 5, columns=["cntr"])["cntr"]
    assert sorted(allrows["cntr"]) == sorted(direct)
    bad = dict(unit, counts=[n + 1])
    with pytest.raises(PipelineError, match="catalog changed"):
        list(reader(pd.DataFrame({"unit": [json.dumps(bad)]})))


def test_stages_without_ray_commit_a_pixel(tiny_sky, model_dir, tmp_path):
    """Reader -> StampMaker -> Classify -> PartWriter -> commit, called in-process."""
    _, pixel, unit, reader = _one_pixel(tiny_sky, -1, chunk_size=500)
    n = unit["counts"][0]
    maker = StampMaker.from_spec(tiny_sky.images_url)
    classify = Classify(model_dir, "cpu", 128, None)
    out = str(tmp_path / "cat")
    staging.prepare_output(out, {"test": 1})
    writer = PartWriter(out, 5)
    receipts = []
    for chunk in reader(pd.DataFrame({"unit": [json.dumps(unit)]})):
        rows = classify(maker(chunk))
        assert "image" not in rows  # only small rows leave the inference stage
        receipts.append(writer(pd.DataFrame(rows)))
    rec = pd.concat(receipts)
    assert rec["rows"].sum() == n and rec["part"].is_unique
    assert rec[[f"n_{c}" for c in CLASSES] + ["n_unclassified"]].to_numpy().sum() == n
    assert commit.commit_pixel(out, 5, pixel, n) == n
    table = pd.read_parquet(schema.pixel_file(as_path(out), 5, pixel))
    assert len(table) == n and table["cntr"].is_unique
    assert table["_healpix_29"].is_monotonic_increasing
    assert table["model_version"].iloc[0] == classify.version


def test_the_cpu_actor_stages_the_rows_of_the_separate_stages(tiny_sky, model_dir, tmp_path):
    """ChunkStage (cut, classify and stage in one actor) writes the parts the three stages do."""
    _, pixel, unit, reader = _one_pixel(tiny_sky, 0, chunk_size=300)
    chunks = list(reader(pd.DataFrame({"unit": [json.dumps(unit)]})))
    cutter = StampCutter.from_spec(tiny_sky.images_url)
    kwargs = dict(model_dir=model_dir, device="cpu", model_batch_size=128)
    kwargs["confidence_threshold"] = None
    outs = [str(tmp_path / name) for name in ("fused", "separate")]
    for out in outs:
        staging.prepare_output(out, {"test": 1})
    fused = ChunkStage(cutter, kwargs, PartWriter(outs[0], 5))
    classify, writer = Classify(**kwargs), PartWriter(outs[1], 5)
    for chunk in chunks:
        a = fused(chunk)
        b = writer(pd.DataFrame(classify(cutter(chunk))))
        pd.testing.assert_frame_equal(a, b)
    for part in a["part"]:
        tables = [pd.read_parquet(schema.staging_dir(as_path(o), 5, pixel) / f"part-{part}.parquet")
                  for o in outs]  # fmt: skip
        pd.testing.assert_frame_equal(*tables)


def test_a_model_with_depth_calibration_and_a_domain_scores_rows_by_them(tiny_sky, tmp_path):
    cat = open_catalog(tiny_sky.catalog_url)
    rows = cat.read_pixel(int(tiny_sky.pixels[0]), 5, columns=PIPELINE_COLUMNS).head(300)
    rows = rows.assign(_pixel=int(tiny_sky.pixels[0]), _row=np.arange(len(rows)), _chunk=0)
    made = StampMaker.from_spec(tiny_sky.images_url)(rows)
    calibration = DepthCalibration(knots=(12.0, 16.0), log_t=(-0.7, 0.9), temperature=1.3)
    domain = TrainingDomain(w1=(5.0, 15.0), w1_w2=(-5.0, 5.0), w2_w3=(-10.0, 10.0))
    extra = {"calibration": calibration, "training_domain": domain.to_dict()}
    new = make_model_dir(tmp_path / "new", tiny_sky.images_url, tiny_sky.catalog_url, 0, extra)
    old = make_model_dir(tmp_path / "old", tiny_sky.images_url, tiny_sky.catalog_url, 0)
    a, b = Classify(new, "cpu", 128, None), Classify(old, "cpu", 128, None)
    out_new, out_old = a(made), b(made)
    logits = a.logits(made)[0]
    w1 = np.asarray(made["w1mpro"], dtype=np.float64)
    ok = np.isfinite(out_new["p_star"])
    p_new = np.stack([out_new[f"p_{c}"] for c in CLASSES], 1)
    p_old = np.stack([out_old[f"p_{c}"] for c in CLASSES], 1)
    np.testing.assert_allclose(p_new[ok], calibration.probabilities(logits, w1)[ok], atol=1e-6)
    np.testing.assert_allclose(p_old[ok], metrics.softmax(logits, 1.3)[ok], atol=1e-6)
    assert (out_new["class"][ok] == out_old["class"][ok]).all()  # same arg-max
    faint = ok & (w1 > 15.0) & (out_new["subset"] != "unsafe")
    assert faint.any() and set(out_new["subset"][faint]) == {"extrapolation"}
    assert "extrapolation" not in set(out_old["subset"])  # no domain: never extrapolation
    assert scoring_record(new)["depth_calibration"] and not scoring_record(new)["notes"]
    notes = scoring_record(old)["notes"]
    assert len(notes) == 2 and "single temperature T = 1.3000" in notes[0]


def test_part_names_are_a_function_of_the_rows(tmp_path):
    result = result_rows(
        _batch([0] * 6),
        np.zeros((6, 3)),
        None,
        Scoring(
            calibration=DepthCalibration.constant(1.0),
            confidence_threshold=0.5,
            ood_threshold=None,
            model_version="m",
        ),
    )
    rows = pd.DataFrame(result)
    pixel = int(healpix.pixel_of(np.array([10.5]), np.array([-4.5]), 5)[0])
    rows["_pixel"] = pixel
    out = str(tmp_path / "o")
    writer = PartWriter(out, 5)
    a = writer(rows)["part"].tolist()
    assert writer(rows)["part"].tolist() == a  # a retry rewrites its own part
    split = writer(rows.iloc[:2])["part"].tolist() + writer(rows.iloc[2:])["part"].tolist()
    assert len(set(split)) == 2 and not set(split) & set(a)


def test_missing_model_is_a_clear_error(tiny_sky, tmp_path):
    cfg = config(tiny_sky, str(tmp_path / "nothing"), str(tmp_path / "o"))
    with pytest.raises(FileNotFoundError, match="train one first"):
        run_pipeline(cfg)


# ------------------------------------------------------------------------ runs on Ray (slow)


def _truth_counts(tiny_sky, order: int) -> dict[int, int]:
    cat = open_catalog(tiny_sky.catalog_url)
    df = cat.read_pixels(tiny_sky.pixels, 5, columns=["ra", "dec"])
    pix = healpix.pixel_of(df["ra"].to_numpy(), df["dec"].to_numpy(), order)
    values, counts = np.unique(pix, return_counts=True)
    return dict(zip(values.tolist(), counts.tolist(), strict=True))


def _read_all(out: str) -> pd.DataFrame:
    df = pd.read_parquet(out + "/iic_allwise/dataset")
    df = df.drop(columns=[c for c in ("Norder", "Dir", "Npix") if c in df.columns])
    return df.sort_values("cntr", ignore_index=True)


@pytest.fixture(scope="module")
def order5(ray_cluster, tiny_sky, model_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run5") / "catalog")
    summary = run_pipeline(config(tiny_sky, model_dir, out))
    return summary, out


@pytest.mark.slow
def test_run_writes_a_valid_hats_catalog(order5, tiny_sky):
    import hats
    from hats.io.validation import is_valid_catalog

    summary, out = order5
    assert summary.rows == tiny_sky.n_sources and summary.pixels_done == len(tiny_sky.pixels)
    assert is_valid_catalog(out, strict=True)
    cat = hats.read_hats(out + "/iic_allwise")
    assert cat.catalog_info.total_rows == tiny_sky.n_sources
    quasars = pd.read_parquet(out + "/iic_allwise/dataset", filters=[("class", "==", "quasar")])
    assert len(quasars) == summary.counters["n_quasar"] and (quasars["class"] == "quasar").all()

    df = _read_all(out)
    assert len(df) == tiny_sky.n_sources and df["cntr"].is_unique
    per_pixel = (df["_healpix_29"].to_numpy() >> (2 * (29 - 5))).tolist()
    assert dict(pd.Series(per_pixel).value_counts()) == _truth_counts(tiny_sky, 5)
    p = df[[f"p_{c}" for c in CLASSES]].to_numpy(np.float64)
    bad = (df["quality_flags"].to_numpy() & int(UNCLASSIFIABLE)) != 0
    np.testing.assert_allclose(p[~bad].sum(axis=1), 1.0, rtol=1e-5)
    assert np.isnan(p[bad]).all() and df.loc[bad, "class"].isna().all()
    c = summary.counters
    assert sum(c[f"n_{k}"] for k in CLASSES) + c["n_unclassified"] == summary.rows
    assert c["n_outlier"] == int(df["is_outlier"].sum())
    seen = df["subset"].astype(object).value_counts()
    assert {k: c[f"subset_{k}"] for k in SUBSETS} == {k: int(seen.get(k, 0)) for k in SUBSETS}
    assert (df.loc[bad, "subset"] == "unsafe").all()  # unclassified rows are never trusted
    assert (
        df.loc[df["quality_flags"] & int(QualityFlag.ARTEFACT) != 0, "subset"] == "unsafe"
    ).all()
    assert df["cc_flags"].str.len().eq(4).all() and df["w4mpro"].notna().any()


@pytest.mark.slow
def test_rerun_skips_finished_pixels(order5, tiny_sky, model_dir):
    summary, out = order5
    before = {p.name: p.stat().st_mtime_ns for p in Path(out, "dataset").rglob("Npix=*.parquet")}
    again = run_pipeline(config(tiny_sky, model_dir, out))
    assert again.pixels_done == 0 and again.pixels_skipped == summary.pixels_done
    after = {p.name: p.stat().st_mtime_ns for p in Path(out, "dataset").rglob("Npix=*.parquet")}
    assert after == before


@pytest.mark.slow
def test_crash_then_rerun_at_order_6_equals_uninterrupted(order5, tiny_sky, model_dir, tmp_path):
    """A run killed after its first commit, resumed, gives the uninterrupted run's rows.

    Run at order 6, it also shows that the order only changes the partitioning, not the rows.
    """
    _, out5 = order5
    out = str(tmp_path / "catalog6")
    cfg = config(tiny_sky, model_dir, out, healpix_order=6)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_pipeline(cfg, after_commit=crash_after_commits(1))
    done_before = staging.finished_pixels(out, 6)
    total = len(_truth_counts(tiny_sky, 6))
    assert 1 <= len(done_before) < total
    resumed = run_pipeline(cfg)
    assert resumed.pixels_skipped == len(done_before)
    assert resumed.pixels_skipped + resumed.pixels_done == total
    got, want = _read_all(out), _read_all(out5)
    per_pixel = (got["_healpix_29"].to_numpy() >> (2 * (29 - 6))).tolist()
    assert dict(pd.Series(per_pixel).value_counts()) == _truth_counts(tiny_sky, 6)
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-5, atol=1e-6)
    assert not Path(out, "_staging").exists()


@pytest.mark.slow
def test_service_mode_with_faults_keeps_every_row(ray_cluster, irsa, tiny_sky, model_dir, tmp_path):
    """Per-source IBE cutouts through a flaky server: rows are flagged, never lost."""
    cat = open_catalog(tiny_sky.catalog_url)
    plan = plan_run(PipelineConfig.create("c", "i", "m", "o", healpix_order=8), cat)
    pixel, n = min(plan.counts.items(), key=lambda kv: kv[1])
    irsa.faults.configure(server_error=0.3, seed=2)
    cfg = config(
        tiny_sky,
        model_dir,
        str(tmp_path / "svc"),
        healpix_order=8,
        pixels=(pixel,),
        images=irsa.ibe_url,
        cutout_mode="service",
    )
    summary = run_pipeline(cfg)
    df = _read_all(str(tmp_path / "svc"))
    assert summary.rows == n == len(df) and df["cntr"].is_unique
    assert irsa.faults.injected["server_error"] > 0
