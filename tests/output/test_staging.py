"""The HATS writer: schema, staging and commit of pixels, resume, finalize, HATS validity."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import fsspec
import hats
import healpy as hp
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hats.io.validation import is_valid_catalog
from upath import UPath

from iic_survey.core import healpix
from iic_survey.core.constants import CLASSES
from iic_survey.core.paths import as_path
from iic_survey.output import commit, schema, staging
from iic_survey.output import finalize as output_finalize
from iic_survey.output.reader import read
from iic_survey.output.validate import validate_catalog
from iic_survey.testing.catalog import ORDER, fake_results, write_catalog


@pytest.fixture(scope="module")
def results() -> tuple[pd.DataFrame, pd.DataFrame]:
    return fake_results(3000, seed=1)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory, results) -> str:
    out = str(tmp_path_factory.mktemp("out") / "catalog")
    write_catalog(out, results[0])
    return out


def test_schema_documents_every_column() -> None:
    for field in schema.OUTPUT_SCHEMA:
        assert field.metadata[b"description"], field.name
        assert b"unit" in field.metadata
    assert set(schema.COLUMN_DOCS) == set(schema.OUTPUT_SCHEMA.names)
    assert schema.OUTPUT_SCHEMA.field("ra").metadata[b"unit"] == b"deg"
    assert schema.OUTPUT_SCHEMA.field("class").type == pa.dictionary(pa.int8(), pa.string())
    assert json.loads(schema.OUTPUT_SCHEMA.metadata[b"iic_survey.classes"]) == list(CLASSES)


def test_catalog_is_strictly_valid_hats(catalog: str, results) -> None:
    assert is_valid_catalog(catalog, strict=True)  # the collection: main catalog (+ margin)
    assert is_valid_catalog(f"{catalog}/{schema.MAIN}", strict=True)
    cat = hats.read_hats(f"{catalog}/{schema.MAIN}")
    assert cat.catalog_info.total_rows == len(results[0])
    assert cat.catalog_info.ra_column == "ra" and cat.catalog_info.dec_column == "dec"
    assert cat.catalog_info.healpix_column == "_healpix_29"
    assert {p.order for p in cat.get_healpix_pixels()} == {ORDER}
    assert cat.catalog_info.iic_model_sha256 == "0" * 64
    assert json.loads(cat.catalog_info.iic_run_args)["healpix_order"] == ORDER
    assert validate_catalog(catalog) == []


def test_layout_and_files(catalog: str, results) -> None:
    df = results[0]
    runs = Path(catalog)
    root = runs / schema.MAIN
    assert (runs / "collection.properties").exists()
    for name in ("point_map.fits", "skymap.fits", "data_thumbnail.parquet", "properties"):
        assert (root / name).exists(), name
    info = pd.read_csv(root / "partition_info.csv")
    assert list(info.columns) == ["Norder", "Npix"]
    pixels = np.unique(healpix.pixel_of(df["ra"], df["dec"], ORDER))
    assert info["Npix"].tolist() == pixels.tolist()
    assert not (runs / "_staging").exists()
    total = 0
    for pixel in pixels:
        f = root / "dataset" / healpix.hats_path(ORDER, int(pixel))
        table = pq.read_table(f)
        total += table.num_rows
        h29 = table.column("_healpix_29").to_numpy()
        assert np.all(np.diff(h29) >= 0)
        assert np.all(h29 >> (2 * (29 - ORDER)) == pixel)
        assert (runs / "_done" / f"Norder={ORDER}" / f"Npix={pixel}.json").exists()
        meta = table.schema.metadata
        assert json.loads(meta[b"iic_survey.run_args"])["model"] == "test"
        assert table.schema.field("w1mpro").metadata[b"unit"] == b"mag"
    assert total == len(df)
    common = pq.read_schema(root / "dataset" / "_common_metadata")
    assert common.field("p_star").metadata[b"description"].startswith(b"Calibrated")
    assert pq.read_metadata(root / "dataset" / "_metadata").num_rows == len(df)


def test_values_round_trip(catalog: str, results) -> None:
    df = results[0]
    back = read(catalog).set_index("cntr").loc[df["cntr"]]
    np.testing.assert_allclose(back["ra"], df["ra"])
    np.testing.assert_allclose(back["p_star"], df["p_star"].astype(np.float32), equal_nan=True)
    assert back["class"].astype(object).fillna("-").tolist() == df["class"].fillna("-").tolist()
    assert back["quality_flags"].tolist() == df["quality_flags"].tolist()
    expected = healpix.healpix_29(df["ra"].to_numpy(), df["dec"].to_numpy())
    assert back["_healpix_29"].tolist() == expected.tolist()


def test_pandas_reads_dataset_with_filter(catalog: str, results) -> None:
    q = pd.read_parquet(f"{catalog}/{schema.MAIN}/dataset", filters=[("class", "==", "quasar")])
    assert len(q) == int((results[0]["class"] == "quasar").sum())
    assert set(q["class"].astype(str)) == {"quasar"}


def test_memory_filesystem_round_trip(results) -> None:
    fs = fsspec.filesystem("memory")
    out = "memory://iic-test/catalog"
    df = results[0].iloc[:800]
    try:
        counts = write_catalog(out, df)
        assert fs.exists(f"/iic-test/catalog/{schema.MAIN}/hats.properties")
        assert fs.exists("/iic-test/catalog/collection.properties")
        assert staging.finished_pixels(out, ORDER).tolist() == sorted(counts)
        back = read(out)
        assert sorted(back["cntr"]) == sorted(df["cntr"])
        assert validate_catalog(out) == []
    finally:
        fs.rm("/iic-test", recursive=True)


def _pixel_rows(df: pd.DataFrame) -> tuple[int, pd.DataFrame]:
    pixels = healpix.pixel_of(df["ra"].to_numpy(), df["dec"].to_numpy(), ORDER)
    pixel = int(np.bincount(pixels).argmax())
    return pixel, df[pixels == pixel]


def test_retried_chunk_is_staged_once_and_commit_is_idempotent(tmp_path: Path, results) -> None:
    out = str(tmp_path / "c")
    staging.prepare_output(out, {"a": 1})
    pixel, rows = _pixel_rows(results[0])
    half = len(rows) // 2
    staging.write_part(out, ORDER, pixel, "c0", rows.iloc[:half])
    staging.write_part(out, ORDER, pixel, "c0", rows.iloc[:half])  # a retry: same chunk id
    assert staging.staged_rows(out, ORDER, pixel) == half
    assert not commit.commit_if_complete(out, ORDER, pixel, len(rows))
    staging.write_part(out, ORDER, pixel, "c1", rows.iloc[half:])
    assert commit.commit_pixel(out, ORDER, pixel, len(rows)) == len(rows)
    assert commit.commit_pixel(out, ORDER, pixel, len(rows)) == len(rows)  # again: a no-op
    assert commit.commit_if_complete(out, ORDER, pixel, len(rows))
    with pytest.raises(staging.OutputError, match="the input changed"):
        commit.commit_pixel(out, ORDER, pixel, len(rows) + 1)
    assert staging.finished_pixels(out, ORDER).tolist() == [pixel]
    # no temporary files are left beside the pixel file
    assert not [p for p in (tmp_path / "c").rglob(".*")]


def test_commit_refuses_missing_or_duplicated_rows(tmp_path: Path, results) -> None:
    out = str(tmp_path / "c")
    staging.prepare_output(out, {"a": 1})
    pixel, rows = _pixel_rows(results[0])
    staging.write_part(out, ORDER, pixel, "c0", rows.iloc[:10])
    with pytest.raises(staging.OutputError, match=r"10 rows staged in 1 parts, \d+ planned"):
        commit.commit_pixel(out, ORDER, pixel, len(rows))
    staging.write_part(out, ORDER, pixel, "c1", rows.iloc[5:])  # rows 5..9 staged twice
    with pytest.raises(staging.OutputError, match="planned"):
        commit.commit_pixel(out, ORDER, pixel, len(rows))
    with pytest.raises(staging.OutputError, match="repeated cntr"):
        commit.commit_pixel(out, ORDER, pixel, len(rows) + 5)
    assert not commit.is_finished(out, ORDER, pixel)


def test_rows_are_checked_against_the_schema(results) -> None:
    pixel, rows = _pixel_rows(results[0])
    table = schema.as_output_table(rows, ORDER, pixel)
    assert table.schema == schema.OUTPUT_SCHEMA
    assert table.column("p_galaxy").null_count == int(rows["p_galaxy"].isna().sum())
    with pytest.raises(ValueError, match=r"missing \['entropy'\]"):
        schema.as_output_table(rows.drop(columns="entropy"), ORDER, pixel)
    with pytest.raises(ValueError, match=r"unknown \['colour'\]"):
        schema.as_output_table(rows.assign(colour=1), ORDER, pixel)
    with pytest.raises(ValueError, match="outside"):
        schema.as_output_table(rows, ORDER, pixel + 1)
    # a row just across the edge (input pixelisation rounding) is accepted with the index of
    # its own position (the commit hands it to that pixel: tests/output/test_collection.py)
    shift = 2 * (29 - ORDER)
    neighbour = int(hp.get_all_neighbours(2**ORDER, pixel, nest=True)[0])
    ra, dec = hp.pix2ang(2**ORDER, neighbour, nest=True, lonlat=True)
    edge = rows.copy()
    edge.iloc[0, [edge.columns.get_loc("ra"), edge.columns.get_loc("dec")]] = [ra, dec]
    h29 = schema.as_output_table(edge, ORDER, pixel).column("_healpix_29").to_numpy()
    assert h29[0] == healpix.healpix_29(np.array([ra]), np.array([dec]))[0]
    assert h29[0] >> shift == neighbour and np.all(h29[1:] >> shift == pixel)
    far = edge.copy()
    far.iloc[0, [far.columns.get_loc("ra"), far.columns.get_loc("dec")]] = [0.0, -80.0]
    with pytest.raises(ValueError, match="1 of"):
        schema.as_output_table(far, ORDER, pixel)
    bad = rows.copy()
    bad["class"] = bad["class"].astype(object)
    bad.iloc[0, bad.columns.get_loc("class")] = "QSO"
    with pytest.raises(ValueError, match="QSO"):
        schema.as_output_table(bad, ORDER, pixel)
    with pytest.raises(ValueError, match="'cntr' has 1 nulls"):
        schema.as_output_table(rows.assign(cntr=[None, *rows["cntr"].tolist()[1:]]), ORDER, pixel)
    # a row without coordinates keeps its place in its pixel
    nan = rows.copy()
    nan.iloc[0, nan.columns.get_loc("ra")] = np.nan
    t = schema.as_output_table(nan, ORDER, pixel)
    assert t.column("_healpix_29")[0].as_py() == pixel << (2 * (29 - ORDER))
    assert t.column("ra").null_count == 1
    # the pipeline may pass an Arrow table with plain string classes
    t2 = schema.as_output_table(pa.Table.from_pandas(rows, preserve_index=False), ORDER, pixel)
    assert t2.column("class").to_pylist() == table.column("class").to_pylist()


def test_prepare_output_resume_and_refusals(tmp_path: Path) -> None:
    out = tmp_path / "c"
    assert staging.prepare_output(str(out), {"order": 5, "model": "m"}) is False
    assert staging.prepare_output(str(out), {"order": 5, "model": "m"}) is True
    with pytest.raises(staging.OutputError, match=r"differing: \['order'\]"):
        staging.prepare_output(str(out), {"order": 6, "model": "m"})
    assert staging.prepare_output(str(out), {"order": 6, "model": "m"}, overwrite=True) is False
    assert json.loads((out / "_run.json").read_text())["args"]["order"] == 6

    stray = tmp_path / "notes.txt"
    stray.write_text("mine")
    with pytest.raises(staging.OutputError, match="is a file"):
        staging.prepare_output(str(stray), {})
    assert staging.prepare_output(str(stray), {}, overwrite=True) is False
    assert (stray / "_run.json").exists()

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.csv").write_text("1,2\n")
    for overwrite in (False, True):
        with pytest.raises(staging.OutputError, match="not an iic_survey output"):
            staging.prepare_output(str(foreign), {}, overwrite=overwrite)
    assert (foreign / "data.csv").exists()


def test_partial_runs_resume_and_finalize_checks(tmp_path: Path, results, caplog) -> None:
    out = str(tmp_path / "c")
    df = results[0]
    counts = write_catalog(out, df, finalize=False)
    last = max(counts)
    # simulate a crash: the last pixel's marker never got written
    (tmp_path / "c" / "_done" / f"Norder={ORDER}" / f"Npix={last}.json").unlink()
    assert last not in staging.finished_pixels(out, ORDER)
    assert last not in set(
        read(out)["_healpix_29"].to_numpy() >> (2 * (29 - ORDER))
    )  # ignored by readers
    with pytest.raises(staging.OutputError, match="1 planned pixels unfinished"):
        output_finalize.finalize(out)
    with pytest.raises(staging.OutputError, match="no commit marker"):
        output_finalize.finalize(out, allow_partial=True)
    with pytest.raises(staging.OutputError, match="different pixels or counts"):
        staging.write_plan(out, ORDER, {**counts, last: counts[last] + 1})
    # resume: same arguments, the unfinished pixel is staged and committed again
    with caplog.at_level(logging.INFO, logger="iic_survey.output"):
        assert staging.prepare_output(out, {"healpix_order": ORDER, "model": "test"}) is True
    assert "pixels already finished" in caplog.text
    pixels = healpix.pixel_of(df["ra"].to_numpy(), df["dec"].to_numpy(), ORDER)
    staging.write_part(out, ORDER, last, "x", df[pixels == last])
    commit.commit_pixel(out, ORDER, last, counts[last])
    output_finalize.finalize(out)
    assert validate_catalog(out) == []


def test_validate_catalog_finds_damage(tmp_path: Path, results) -> None:
    out = tmp_path / "c"
    write_catalog(str(out), results[0].iloc[:600])
    f = sorted((out / schema.MAIN / "dataset").rglob("Npix=*.parquet"))[0]
    table = pq.read_table(f)
    p = table.column("p_star").to_numpy(zero_copy_only=False).copy()
    p[0] = 0.99 if p[0] < 0.5 else 0.01
    table = table.set_column(table.schema.get_field_index("p_star"), "p_star", pa.array(p))
    pq.write_table(table.cast(schema.OUTPUT_SCHEMA), f)
    problems = validate_catalog(str(out))
    assert any("checksum" in s for s in problems)
    assert any("do not sum to 1" in s for s in problems)
    (out / schema.MAIN / "hats.properties").unlink()
    assert any("not finalized" in s for s in validate_catalog(str(out)))


def test_s3_round_trip_and_pruning(s3_server: str, s3_requests, results) -> None:
    from tests.fixtures.s3 import s3_storage_options

    out = UPath("s3://iic-test-out/catalog", **s3_storage_options(s3_server))
    fs = out.fs
    if not fs.exists("iic-test-out"):
        fs.mkdir("iic-test-out")
    df = results[0].iloc[:1200]
    counts = write_catalog(out, df)
    assert not fs.exists("iic-test-out/catalog/_staging")
    assert fs.exists(f"iic-test-out/catalog/_done/Norder={ORDER}/Npix={min(counts)}.json")
    assert validate_catalog(out) == []
    # a pixel query reads one pixel file: GETs of Npix files only for that pixel
    s3_requests.clear()
    pixel = max(counts, key=counts.get)
    got = read(out, columns=["cntr"], pixels=(ORDER, [pixel]))
    assert len(got) == counts[pixel]
    gets = {p for p in s3_requests.paths("GET") if "Npix=" in p and "/dataset/" in p}
    assert gets == {
        f"/iic-test-out/catalog/{schema.MAIN}/dataset/{healpix.hats_path(ORDER, pixel)}"
    }
    # and it is a HATS catalog there too, read by hats through the same UPath
    assert hats.read_hats(out / schema.MAIN).catalog_info.total_rows == len(df)


def test_s3_commit_lists_the_staging_folder_afresh(s3_server: str, results) -> None:
    """A reused worker's cached listing must not decide what a commit reads (issue 24 item 5).

    One process (``worker``: s3fs with its listing cache, as the pipeline's) lists a pixel's
    staged parts; another (``rerun``) clears them and stages the rerun's part; the first then
    commits. With a stale listing it opens a part S3 no longer has.
    """
    from tests.fixtures.s3 import s3_storage_options

    url, opts = "s3://iic-test-stale/catalog", s3_storage_options(s3_server)
    # two processes' clients: each root makes its own s3fs instance (skip_instance_cache) and
    # shares it with every path joined from it; ``worker``'s keeps its listings
    rerun = as_path(url, **opts)
    worker = as_path(url, **{**opts, "use_listings_cache": True})
    if not rerun.fs.exists("iic-test-stale"):
        rerun.fs.mkdir("iic-test-stale")
    staging.prepare_output(rerun, {"a": 1})
    pixel, rows = _pixel_rows(results[0])
    staging.write_part(rerun, ORDER, pixel, "old0", rows.iloc[:3])
    staging.write_part(rerun, ORDER, pixel, "old1", rows.iloc[3:5])
    assert len(staging.part_files(worker, ORDER, pixel)) == 2  # cached in ``worker``'s s3fs
    assert worker.fs is not rerun.fs
    assert not commit.is_finished(worker, ORDER, pixel)
    staged = schema.staging_dir(rerun, ORDER, pixel)
    rerun.fs.rm(staged.path, recursive=True)  # the rerun clears ...
    staging.write_part(rerun, ORDER, pixel, "new0", rows)  # ... and stages anew
    assert commit.commit_if_complete(worker, ORDER, pixel, len(rows))
    assert commit.is_finished(worker, ORDER, pixel)
    with schema.pixel_file(rerun, ORDER, pixel).open("rb") as f:
        got = pq.read_table(f).column("cntr").to_pylist()
    assert sorted(got) == sorted(rows["cntr"])
