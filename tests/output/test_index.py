"""The id index catalogs: built like hats-import's, found by LSDB, used by read(ids=...)."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import fsspec
import pandas as pd
import pytest
from hats.catalog import CollectionProperties
from upath import UPath

from iic_survey.__main__ import main
from iic_survey.core.paths import as_path
from iic_survey.output import finalize as output_finalize
from iic_survey.output import index
from iic_survey.output.reader import read
from iic_survey.output.staging import OutputError
from iic_survey.testing.catalog import catalog_files, fake_results, write_catalog


@pytest.fixture(scope="module")
def results() -> pd.DataFrame:
    return fake_results(4000, seed=5)[0]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory, results: pd.DataFrame) -> str:
    out = str(tmp_path_factory.mktemp("idx") / "catalog")
    write_catalog(out, results)
    assert index.build_indexes(out) == {"cntr": len(results), "designation": len(results)}
    return out


def test_collection_lists_the_indexes(catalog: str) -> None:
    props = CollectionProperties.read_from_dir(catalog)
    assert props.all_indexes == {c: index.index_name(c) for c in index.INDEXED}
    assert props.default_index == "cntr"
    text = (Path(catalog) / index.index_name("cntr") / "hats.properties").read_text()
    assert "dataproduct_type=index" in text and "hats_index_column=cntr" in text


def test_lsdb_id_search_finds_the_rows(catalog: str, results: pd.DataFrame) -> None:
    import lsdb

    cat = lsdb.open_catalog(catalog)
    row = results.iloc[17]
    got = cat.id_search(values={"cntr": int(row["cntr"])}).compute()
    assert got["cntr"].tolist() == [row["cntr"]]
    got = cat.id_search(values={"designation": row["designation"]}).compute()
    assert got["cntr"].tolist() == [row["cntr"]]


def _read_counting(catalog: str, ids: list) -> tuple[pd.DataFrame, list[str]]:
    """read(ids=...) and the data files it opened (metadata files such as _metadata aside)."""
    fs = fsspec.filesystem("file")
    with mock.patch.object(fs, "open", wraps=fs.open) as spy:
        # a file:// UPath reads through ``fs``, which the spy watches
        df = read(UPath(f"file://{catalog}"), ids=ids)
    opened = [str(c.args[0]) for c in spy.call_args_list]
    return df, [p for p in opened if p.endswith(".parquet")]


def test_read_by_id_opens_the_index_file_and_one_partition(
    catalog: str, results: pd.DataFrame
) -> None:
    row = results.iloc[123]
    for ids in ([int(row["cntr"])], [row["designation"]]):
        df, data_files = _read_counting(catalog, ids)
        assert df["cntr"].tolist() == [row["cntr"]]
        assert df["designation"].tolist() == [row["designation"]]
        assert len(data_files) == 2, data_files
        assert sum("_index/dataset/index/part." in p for p in data_files) == 1
        assert sum("/iic_allwise/dataset/Norder=" in p for p in data_files) == 1
    # several ids, both kinds
    some = results.sample(5, random_state=1)
    ids = [*map(int, some["cntr"][:3]), *some["designation"][3:]]
    df, _ = _read_counting(catalog, ids)
    assert sorted(df["cntr"]) == sorted(some["cntr"])


def test_an_unknown_id_gives_an_empty_result(catalog: str, capsys) -> None:
    df, data_files = _read_counting(catalog, [5, "J000000.00+000000.0"])
    assert len(df) == 0 and "cntr" in df.columns
    assert not any("/iic_allwise/dataset/" in p for p in data_files)  # no partition opened
    assert main(["lookup", catalog, "--cntr", "5"]) == 1
    err = capsys.readouterr().err
    assert f"no source with cntr 5 in {catalog}" in err
    assert "Traceback" not in err


def test_lookup_cli_prints_the_row(catalog: str, results: pd.DataFrame, capsys) -> None:
    row = results.iloc[3]
    code = main(["lookup", catalog, "--cntr", str(row["cntr"]), "--designation",
                 results.iloc[4]["designation"], "--columns", "class,p_star"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert str(row["cntr"]) in out and results.iloc[4]["designation"] in out
    assert "p_star" in out and "w1mpro" not in out


def test_build_refuses_a_partial_or_unfinished_catalog(tmp_path: Path, results) -> None:
    out = str(tmp_path / "unfinished")
    write_catalog(out, results.iloc[:500], finalize=False)
    with pytest.raises(OutputError, match="not a finished catalog"):
        index.build_indexes(out)
    output_finalize.finalize(out, {"iic_partial": "true"})
    with pytest.raises(OutputError, match="partial catalog"):
        index.build_indexes(out)
    assert not (Path(out) / index.index_name("cntr")).exists()


def test_build_resumes_after_a_crash(tmp_path: Path, results: pd.DataFrame) -> None:
    clean, crashed = str(tmp_path / "clean"), str(tmp_path / "crashed")
    for out in (clean, crashed):
        write_catalog(out, results.iloc[:800])
    index.build_indexes(clean)
    real = index._gather

    def dies_on_designation(root, column, parts):
        if column == "designation":
            # a half-written file of the interrupted build
            folder = root / f"{index.index_name(column)}/dataset/index"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "part.0.parquet").write_bytes(b"x")
            raise RuntimeError("simulated crash during the index")
        return real(root, column, parts)

    with (
        mock.patch.object(index, "_gather", dies_on_designation),
        pytest.raises(RuntimeError, match="simulated crash"),
    ):
        index.build_indexes(crashed)
    assert (Path(crashed) / index.index_name("cntr") / "hats.properties").exists()
    assert "all_indexes" not in (Path(crashed) / "collection.properties").read_text()
    with mock.patch.object(index, "_gather", wraps=real) as gather:
        index.build_indexes(crashed)
    assert [c.args[1] for c in gather.call_args_list] == ["designation"]  # cntr was kept
    assert catalog_files(crashed) == catalog_files(clean)
    assert (Path(crashed) / "collection.properties").read_text() == (
        Path(clean) / "collection.properties"
    ).read_text()


def test_many_index_files_and_row_groups(tmp_path: Path, results: pd.DataFrame, monkeypatch):
    """Small row groups and files: each id is found in its own row group of its own file."""
    monkeypatch.setattr(index, "ROW_GROUP_ROWS", 128)
    monkeypatch.setattr(index, "FILE_ROWS", 512)
    out = str(tmp_path / "catalog")
    write_catalog(out, results.iloc[:2000])
    index.build_indexes(out)
    files = sorted((Path(out) / index.index_name("cntr") / "dataset" / "index").iterdir())
    assert len(files) == 4
    root = as_path(out)
    some = results.iloc[:2000].sample(12, random_state=2)
    for column in index.INDEXED:
        values = [int(v) if column == "cntr" else v for v in some[column]]
        with mock.patch.object(pq_file := index.pq, "ParquetFile", wraps=pq_file.ParquetFile) as pf:
            found = index.locate(root, column, values[:1])
        assert pf.call_count == 1  # one index file opened for one id
        found = index.locate(root, column, values)
        want = read(out, ["cntr", "designation", "_healpix_29"], ids=values)
        assert sorted(found) == sorted(values)
        for v, (order, pixel) in found.items():
            h29 = int(want.loc[want[column] == v, "_healpix_29"].iloc[0])
            assert h29 >> (2 * (29 - order)) == pixel
