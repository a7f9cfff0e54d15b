"""Sky scale: iic_survey.inputs.footer_bytes, iic_survey.synthetic.metadata_file, .allwise_columns
and .skyscale, the planner at many partitions, iic_survey.output.duplicates and
iic_survey.survey.progress; the rehearsal's resume and the cross-pixel duplicate check on Ray.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.coordinates import SkyCoord

from iic_survey.core import healpix
from iic_survey.core.paths import as_path
from iic_survey.inputs import footer_bytes, partitions
from iic_survey.inputs.catalog import open_catalog
from iic_survey.inputs.storage import CatalogError
from iic_survey.output import duplicates, reader
from iic_survey.output.schema import catalog_dir
from iic_survey.survey.config import PipelineConfig
from iic_survey.survey.progress import Progress
from iic_survey.survey.run import run_pipeline
from iic_survey.synthetic import allwise_columns, skyfiles, skyscale
from iic_survey.synthetic.metadata_file import MetadataWriter
from tests.fixtures.crashes import crash_after_commits

# ------------------------------------------------------------------------ the column set


def test_column_names_are_irsas(shared_data: Path) -> None:
    lines = (shared_data / "allwise-parquet-columns.txt").read_text().splitlines()
    real = [s.strip() for s in lines if s.strip() and not s.startswith("#")]
    assert list(allwise_columns.COLUMN_NAMES) == real
    schema = allwise_columns.full_schema()
    assert schema.names == real
    assert schema.field("ra").type == pa.float64() and schema.field("ext_flg").type == pa.int64()


# -------------------------------------------------- _metadata in windows, and written so


def _catalog(root: Path, sizes: dict[int, int], row_group_size: int = 7) -> list[pq.FileMetaData]:
    """Files of ``sizes`` rows (several row groups each) in IRSA's layout; their footers."""
    schema = pa.schema([("designation", pa.string()), ("cntr", pa.int64()),
                        ("ra", pa.float64()), ("dec", pa.float64())])  # fmt: skip
    footers = []
    for k5, n in sizes.items():
        rel = f"healpix_k0={k5 // 1024}/healpix_k5={k5}/part0.snappy.parquet"
        t = pa.table(
            {"designation": [f"J{i}" for i in range(n)], "cntr": np.arange(n) + 1000 * k5,
             "ra": np.linspace(0, 1, n), "dec": np.zeros(n)},
            schema=schema,
        )  # fmt: skip
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(t, root / rel, row_group_size=row_group_size)
        md = pq.read_metadata(root / rel)
        md.set_file_path(rel)
        footers.append(md)
    pq.write_metadata(schema, root / "_common_metadata")
    return footers


SIZES = {0: 5, 3: 0, 1027: 40, 12287: 1, 5000: 300}


@pytest.mark.parametrize("window", [64, 1000, 1 << 24])
def test_scan_metadata_counts_every_file_as_pyarrow_does(tmp_path: Path, window: int) -> None:
    footers = _catalog(tmp_path, SIZES)
    pq.write_metadata(footers[0].schema.to_arrow_schema(), tmp_path / "_metadata",
                      metadata_collector=footers)  # fmt: skip
    full = pq.read_metadata(tmp_path / "_metadata")
    want: dict[str, int] = {}
    for i in range(full.num_row_groups):
        rg = full.row_group(i)
        want[rg.column(0).file_path] = want.get(rg.column(0).file_path, 0) + rg.num_rows
    with open(tmp_path / "_metadata", "rb") as f:
        counts, paths = footer_bytes.scan_metadata(f, "designation", window=window)
    assert counts == want and paths == set(want)
    # A first column the chunks do not carry: paths are still found, counts are not.
    with open(tmp_path / "_metadata", "rb") as f:
        counts, paths = footer_bytes.scan_metadata(f, "cntr_not_there", window=window)
    assert counts == {} and paths == set(want)


def test_index_falls_back_to_footers_for_files_it_cannot_count(tmp_path: Path) -> None:
    footers = _catalog(tmp_path, SIZES)
    pq.write_metadata(footers[0].schema.to_arrow_schema(), tmp_path / "_metadata",
                      metadata_collector=footers)  # fmt: skip
    c = open_catalog(str(tmp_path))
    store = partitions.PartitionFiles(str(tmp_path), c.filesystem, str(tmp_path))
    index, counts = store.index_from_metadata("no_such_column")  # every count from footers
    assert sorted(index) == sorted(SIZES)
    assert {int(r.split("=")[2].split("/")[0]): n for r, n in counts.items()} == SIZES


def test_metadata_writer_equals_pyarrows_collector(tmp_path: Path) -> None:
    footers = _catalog(tmp_path, SIZES)
    w = MetadataWriter(tmp_path / "_metadata")
    for md in footers:
        w.add(md, md.row_group(0).column(0).file_path)
    w.close()
    pq.write_metadata(footers[0].schema.to_arrow_schema(), tmp_path / "_ref",
                      metadata_collector=footers)  # fmt: skip
    ours, ref = pq.read_metadata(tmp_path / "_metadata"), pq.read_metadata(tmp_path / "_ref")
    assert ours.num_rows == ref.num_rows == sum(SIZES.values())
    assert ours.num_row_groups == ref.num_row_groups
    for i in range(ref.num_row_groups):
        assert ours.row_group(i).to_dict() == ref.row_group(i).to_dict()
    assert ours.schema.to_arrow_schema() == ref.schema.to_arrow_schema()
    assert pq.ParquetDataset(tmp_path).read().num_rows == sum(SIZES.values())


def test_metadata_writer_refuses_a_file_of_another_schema(tmp_path: Path) -> None:
    footers = _catalog(tmp_path, {1: 3})
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"x": [1.0]}), other)
    w = MetadataWriter(tmp_path / "_metadata")
    w.add(footers[0], "healpix_k0=0/healpix_k5=1/part0.snappy.parquet")
    with pytest.raises(ValueError, match="schema or writer fields differ"):
        w.add(pq.read_metadata(other), "healpix_k0=0/healpix_k5=2/part0.snappy.parquet")


# ---------------------------------------------------------------- the density model


def test_density_model_has_allwises_structure() -> None:
    w = skyscale.density_weights()
    assert w.shape == (12288,) and np.isclose(w.mean(), 1.0)
    ra, dec = (np.array(v) for v in zip(*[healpix.pixel_center(int(p), 5) for p in range(12288)],
                                         strict=True))  # fmt: skip
    gal = SkyCoord(ra, dec, unit="deg").galactic
    b, lon = gal.b.deg, (gal.l.deg + 180) % 360 - 180
    plane, pole = w[np.abs(b) < 2].mean(), w[np.abs(b) > 60].mean()
    assert 3 < plane / pole < 10
    assert w[(np.abs(lon) < 5) & (np.abs(b) < 5)].mean() > plane  # the bulge
    lmc = gal.separation(SkyCoord(280.47, -32.89, unit="deg", frame="galactic")).deg < 2
    assert w[lmc].mean() > 2 * w[(np.abs(b) > 25) & (np.abs(b) < 40)].mean()
    counts = skyscale.pixel_counts(74_763, w)
    assert counts.sum() == 74_763 and counts.min() >= 1


# ------------------------------------------------- a reduced sky-scale sky and the planner


@pytest.fixture(scope="module")
def small_scale(tmp_path_factory: pytest.TempPathFactory):
    """The first 1,000 partitions (plus the imaged fields') at scale 1e-4: ~8,000 rows."""
    root = tmp_path_factory.mktemp("sky_scale") / "sky"
    config = skyscale.SkyScaleConfig(scale=1e-4, partitions=1000)
    return skyscale.write_sky_scale(root, config)


def test_sky_scale_catalog_is_irsas_layout_and_the_planner_counts_it(small_scale) -> None:
    c = open_catalog(small_scale.catalog_url)
    pixels = c.pixels()
    assert len(pixels) >= 1000 and pixels.tolist() == list(small_scale.pixels)
    full = pq.read_metadata(f"{small_scale.catalog_url}/_metadata")
    assert full.num_row_groups == len(pixels) and full.num_columns == 300
    c.check_files()
    counts = {int(p): c.count(int(p)) for p in pixels}
    assert sum(counts.values()) == full.num_rows == small_scale.n_sources
    truth = pd.read_parquet(f"{small_scale.root}/truth.parquet")
    assert len(truth) == small_scale.n_sources and truth["cntr"].is_unique
    one = pq.read_table(f"{small_scale.catalog_url}/healpix_k0=0/healpix_k5=7/part0.snappy.parquet")
    assert one.num_rows == counts[7] and one.schema.names == list(allwise_columns.COLUMN_NAMES)
    ra, dec = one["ra"].to_numpy(), one["dec"].to_numpy()
    assert (healpix.pixel_of(ra, dec, 5) == 7).all()


@pytest.fixture(scope="module")
def rehearsal_scale(tmp_path_factory: pytest.TempPathFactory):
    """The first 120 partitions (plus the imaged fields') at scale 1e-4: ~2,700 rows."""
    root = tmp_path_factory.mktemp("rehearsal") / "sky"
    return skyscale.write_sky_scale(root, skyscale.SkyScaleConfig(scale=1e-4, partitions=120))


def _copy(src: str, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_a_file_metadata_lists_but_storage_lacks_fails_before_work(small_scale, tmp_path):
    cat = _copy(small_scale.catalog_url, tmp_path / "cat")
    gone = cat / "healpix_k0=0/healpix_k5=9/part0.snappy.parquet"
    gone.unlink()
    c = open_catalog(str(cat))
    with pytest.raises(CatalogError, match="healpix_k5=9/part0"):
        c.check_files()


def test_a_file_metadata_does_not_list_is_planned_from_its_footer(small_scale, tmp_path, caplog):
    cat = _copy(small_scale.catalog_url, tmp_path / "cat")
    src = cat / "healpix_k0=0/healpix_k5=9/part0.snappy.parquet"
    extra = cat / "healpix_k0=0/healpix_k5=9/part1.snappy.parquet"
    shutil.copy(src, extra)
    c = open_catalog(str(cat))
    before = pq.read_metadata(src).num_rows
    with caplog.at_level(logging.WARNING):
        c.check_files()
    assert "not listed in _metadata" in caplog.text and "part1" in caplog.text
    assert c.count(9) == 2 * before
    assert len(c.files_for(9)) == 2


# ------------------------------------------------------------------ cntr across pixels


@pytest.mark.parametrize("bucket_rows", [duplicates.BUCKET_ROWS, 7])
def test_a_cntr_in_two_files_is_found_with_both_named(tmp_path, monkeypatch, bucket_rows):
    monkeypatch.setattr(duplicates, "BUCKET_ROWS", bucket_rows)
    paths = []
    for i, values in enumerate([[1, 2, 3], [10, 11], [20, 2, 21], [30]]):
        p = as_path(tmp_path / f"Npix={i}.parquet")
        pq.write_table(pa.table({"cntr": pa.array(values, pa.int64())}), p.path)
        paths.append(p)
    assert duplicates.check_unique_cntr([paths[0], paths[1], paths[3]], 6) == 6
    with pytest.raises(duplicates.DuplicateCntrError, match="cntr 2 in") as err:
        duplicates.check_unique_cntr(paths, 9)
    assert err.value.found == {2: [paths[0].path, paths[2].path]} and err.value.n_repeated == 1


def test_progress_line_says_done_total_rate_and_time_left() -> None:
    p = Progress(12288, 1_000_000, lambda: (0, 0), t0=0.0)
    p._samples.append((0.0, 0))
    line = p.line(100.0, 1024, 100_000)
    assert "1,024/12,288 pixels (8.3 %)" in line and "100,000/1,000,000 sources (10.0 %)" in line
    assert "1,000 sources/s now" in line and "about 15m00s left" in line
    assert "about 29m40s left" in p.line(200.0, 1100, 101_000)  # 505/s over the window


# --------------------------------------------------------------- runs on Ray (slow)


def _config(manifest, model_dir: str, out: str, **kw) -> PipelineConfig:
    base = dict(catalog=manifest.catalog_url, images=manifest.images_url, model_dir=model_dir,
                output=out, chunk_size=400, model_batch_size=128, inference_actors=1,
                progress_interval_s=2.0)  # fmt: skip
    base.update(kw)
    return PipelineConfig.create(**base)


def _rows(out: str) -> pd.DataFrame:
    return reader.read(out).sort_values("cntr", ignore_index=True)


@pytest.mark.slow
def test_rehearsal_killed_half_way_and_resumed_equals_a_clean_run(
    ray_cluster, rehearsal_scale, tiny_model_dir, tmp_path
):
    clean = str(tmp_path / "clean")
    run_pipeline(_config(rehearsal_scale, tiny_model_dir, clean))
    out = str(tmp_path / "resumed")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_pipeline(_config(rehearsal_scale, tiny_model_dir, out), crash_after_commits(50))
    resumed = run_pipeline(_config(rehearsal_scale, tiny_model_dir, out))
    assert resumed.pixels_skipped >= 50 and resumed.pixels_done > 0
    got, want = _rows(out), _rows(clean)
    assert len(got) == rehearsal_scale.n_sources and got["cntr"].is_unique
    pd.testing.assert_frame_equal(got, want, check_exact=True)  # batch-invariant: exact


@pytest.mark.slow
def test_a_source_in_two_partitions_is_refused_at_finalize(
    ray_cluster, tiny_sky, tiny_model_dir, tmp_path
):
    root = _copy(tiny_sky.root, tmp_path / "sky")
    cat = Path(f"{root}/{skyfiles.CATALOG_PREFIX}")
    a, b = tiny_sky.pixels[0], tiny_sky.pixels[1]
    path_a = cat / f"healpix_k0={a // 1024}/healpix_k5={a}/part0.snappy.parquet"
    path_b = cat / f"healpix_k0={b // 1024}/healpix_k5={b}/part0.snappy.parquet"
    row = pq.read_table(path_a).slice(0, 1).to_pandas()
    dup = int(row["cntr"][0])
    target = pq.read_table(path_b)
    row["ra"], row["dec"] = target["ra"][0].as_py(), target["dec"][0].as_py()  # inside b
    merged = pa.concat_tables([target, pa.Table.from_pandas(row, schema=target.schema)])
    pq.write_table(merged, path_b)
    w = MetadataWriter(cat / "_metadata")
    for k5 in tiny_sky.pixels:
        rel = f"healpix_k0={k5 // 1024}/healpix_k5={k5}/part0.snappy.parquet"
        w.add(pq.read_metadata(cat / rel), rel)
    w.close()
    manifest = skyfiles.SkyManifest.load(root)
    out = str(tmp_path / "out")
    with pytest.raises(duplicates.DuplicateCntrError, match=f"cntr {dup} in") as err:
        run_pipeline(_config(manifest, tiny_model_dir, out))
    named = " ".join(err.value.found[dup])
    assert f"Npix={a}." in named and f"Npix={b}." in named
    assert not (catalog_dir(as_path(out)) / "hats.properties").exists()
