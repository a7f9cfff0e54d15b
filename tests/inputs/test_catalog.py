"""Tests of iic_survey.inputs.catalog against local disk and a moto S3 server on 127.0.0.1.

A small hive-partitioned catalog in IRSA's layout is written here (``write_catalog``), so every
case (empty partition, corrupt file, missing column, wrong type, no ``_metadata``) is one
argument away. Pruning is proved by counting: files opened through a counting local
filesystem, and HTTP requests logged by the S3 server.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import healpy as hp
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from fsspec.implementations.local import LocalFileSystem

from iic_survey.core import healpix
from iic_survey.inputs import allwise_schema, partitions, storage
from iic_survey.inputs import catalog as cat
from tests.fixtures.s3 import BUCKET, RequestLog, upload_tree

SEAM = (0.3, 0.2, 1.0)
"""A cone across the ra = 0/360 seam: (ra, dec, radius in degrees)."""

# Pixels of the test catalog: the four order-5 children of order-4 pixel 0, one pixel in
# another base pixel, the pixels under the seam cone, and pixel 4000 holding an empty file.
PIXELS = tuple(
    sorted({0, 1, 2, 3, 1029, *map(int, healpix.cone_pixels(SEAM[0], SEAM[1], SEAM[2] + 0.5, 5))})
)
EMPTY_PIXEL = 4000


def _table(k5: int, n: int, first: int, rng: np.random.Generator) -> pa.Table:
    """``n`` sources in order-5 pixel ``k5`` with every pipeline column, AllWISE-typed."""
    fine = rng.choice(healpix.children(k5, 5, 14), n, replace=False)
    ra, dec = hp.pix2ang(healpix.nside(14), fine, nest=True, lonlat=True)
    snr3 = rng.uniform(0, 10, n)
    sig3 = np.where(snr3 >= 2, rng.uniform(0.05, 0.3, n), np.nan)
    cols: dict[str, Any] = {
        "cntr": pa.array(np.arange(first, first + n), pa.int64()),
        "designation": pa.array([f"J{k5:05d}.{i:04d}" for i in range(n)], pa.string()),
        "ra": ra,
        "dec": dec,
        "w1mpro": rng.normal(15, 1, n),
        "w2mpro": rng.normal(14.5, 1, n),
        "w3mpro": rng.normal(11, 1, n),
        "w4mpro": rng.normal(8, 1, n),
        "w1sigmpro": rng.uniform(0.02, 0.1, n),
        "w2sigmpro": rng.uniform(0.02, 0.1, n),
        "w3sigmpro": pa.array(sig3, pa.float64(), from_pandas=True),
        "w1snr": rng.uniform(5, 100, n),
        "w2snr": rng.uniform(5, 100, n),
        "w3snr": snr3,
        "nb": pa.array(np.ones(n, np.int64), pa.int32()),
        "ext_flg": pa.array(rng.integers(0, 2, n), pa.int32()),
        "ph_qual": pa.array(["AAB"] * n, pa.string()),
        "cc_flags": pa.array(["0000"] * n, pa.string()),
        "coadd_id": pa.array(["0000p000_ac51"] * n, pa.string()),
        "wx": rng.uniform(1, 4095, n),
        "wy": rng.uniform(1, 4095, n),
    }
    return pa.table(cols)


def write_catalog(
    root: Path,
    pixels: Iterable[int] = PIXELS,
    n: int = 40,
    metadata: bool = True,
    empty: int | None = EMPTY_PIXEL,
    drop: tuple[str, ...] = (),
    cast: dict[str, pa.DataType] | None = None,
) -> dict[int, pa.Table]:
    """Write a catalog in IRSA's layout under ``root``; returns the table of each pixel."""
    rng = np.random.default_rng(5)
    tables: dict[int, pa.Table] = {}
    collector: list[pq.FileMetaData] = []
    schema = None
    for i, k5 in enumerate([*pixels, *([empty] if empty is not None else [])]):
        t = _table(k5, 0 if k5 == empty else n, i * n, rng).drop_columns(list(drop))
        for name, typ in (cast or {}).items():
            t = t.set_column(t.schema.get_field_index(name), name, t.column(name).cast(typ))
        rel = f"healpix_k0={k5 // 1024}/healpix_k5={k5}/part0.snappy.parquet"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(t, root / rel, row_group_size=15, metadata_collector=collector)
        collector[-1].set_file_path(rel)
        tables[k5], schema = t, t.schema
    assert schema is not None
    if metadata:
        pq.write_metadata(schema, root / "_common_metadata")
        pq.write_metadata(schema, root / "_metadata", metadata_collector=collector)
    return tables


class CountingFS(LocalFileSystem):
    """A local filesystem that records every file it opens."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.opened: list[str] = []
        self.root = Path("/")

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        self.opened.append(str(path))
        return super()._open(path, mode, **kwargs)

    def data_files(self) -> set[str]:
        """Opened Parquet partitions (metadata files left out)."""
        return {
            Path(p).relative_to(self.root).as_posix() for p in self.opened if p.endswith(".parquet")
        }


def counting_fs(root: Path) -> CountingFS:
    fs = CountingFS(skip_instance_cache=True)
    fs.root = root
    return fs


def rel(k5: int) -> str:
    return f"healpix_k0={k5 // 1024}/healpix_k5={k5}/part0.snappy.parquet"


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, pa.Table]]:
    root = tmp_path_factory.mktemp("cat") / "wise-allwise.parquet"
    return root, write_catalog(root)


@pytest.fixture(scope="module")
def local_nometa(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, pa.Table]]:
    root = tmp_path_factory.mktemp("catnm") / "wise-allwise.parquet"
    return root, write_catalog(root, metadata=False)


def all_rows(tables: dict[int, pa.Table]) -> pa.Table:
    return pa.concat_tables(list(tables.values()))


# ---------------------------------------------------------------------------------------------
# Local disk


@pytest.mark.parametrize("fixture", ["local", "local_nometa"])
def test_pixels_counts_and_schema(fixture: str, request: pytest.FixtureRequest) -> None:
    root, tables = request.getfixturevalue(fixture)
    fs = counting_fs(root)
    c = cat.open_catalog(str(root), filesystem=fs)
    assert c.has_metadata == (fixture == "local")
    np.testing.assert_array_equal(c.pixels(), sorted(tables))
    np.testing.assert_array_equal(c.pixels(0), np.unique(np.array(sorted(tables)) >> 10))
    assert c.count(0, 5) == 40
    assert c.count(0, 4) == 160  # the union of its four children
    assert c.count(EMPTY_PIXEL, 5) == 0
    assert c.count(5000, 5) == 0  # not in the catalog
    assert c.schema.field("healpix_k5").type == pa.int64()
    if fixture == "local":
        assert fs.data_files() == set(), "counts must come from _metadata, not the files"


def test_read_pixel_opens_only_its_file(local: tuple[Path, dict[int, pa.Table]]) -> None:
    root, tables = local
    fs = counting_fs(root)
    c = cat.open_catalog(str(root), filesystem=fs)
    df = c.read_pixel(1029, 5, columns=["cntr", "ra", "healpix_k0", "healpix_k5"])
    assert list(df.columns) == ["cntr", "ra", "healpix_k0", "healpix_k5"]
    np.testing.assert_array_equal(df["cntr"], tables[1029]["cntr"].to_numpy())
    assert (df["healpix_k5"] == 1029).all() and (df["healpix_k0"] == 1).all()
    assert df["healpix_k5"].dtype == np.int64  # typed hive keys, not strings
    assert fs.data_files() == {rel(1029)}
    assert c.files_for(1029) == [f"{root}/{rel(1029)}"]


def test_read_shallower_order_is_union_of_children(local: tuple[Path, dict[int, pa.Table]]) -> None:
    root, tables = local
    fs = counting_fs(root)
    c = cat.open_catalog(str(root), filesystem=fs)
    df = c.read_pixel(0, 4, columns=["cntr"])
    expected = np.concatenate([tables[k]["cntr"].to_numpy() for k in (0, 1, 2, 3)])
    np.testing.assert_array_equal(np.sort(df["cntr"]), np.sort(expected))
    assert fs.data_files() == {rel(k) for k in (0, 1, 2, 3)}
    assert len(c.files_for(0, 0)) == sum(1 for k in tables if k < 1024)


def test_read_deeper_order_filters_parent_by_position(
    local: tuple[Path, dict[int, pa.Table]],
) -> None:
    root, tables = local
    fs = counting_fs(root)
    c = cat.open_catalog(str(root), filesystem=fs)
    t = tables[2]
    p7 = hp.ang2pix(128, t["ra"].to_numpy(), t["dec"].to_numpy(), nest=True, lonlat=True)
    target = int(np.bincount(p7).argmax())
    df = c.read_pixel(target, 7, columns=["cntr"])
    np.testing.assert_array_equal(np.sort(df["cntr"]), np.sort(t["cntr"].to_numpy()[p7 == target]))
    assert list(df.columns) == ["cntr"]
    assert fs.data_files() == {rel(2)}
    assert c.count(target, 7) == int((p7 == target).sum())
    # a deeper pixel that is empty, and several deeper pixels at once
    empty_child = int(np.setdiff1d(healpix.children(2, 5, 7), p7)[0])
    assert c.read_pixel(empty_child, 7, columns=["cntr"]).empty
    two = np.unique(p7)[:2]
    assert len(c.read_pixels(two, 7, ["cntr"])) == int(np.isin(p7, two).sum())


def test_column_projection_reads_requested_columns_only(
    local: tuple[Path, dict[int, pa.Table]],
) -> None:
    root, _ = local
    c = cat.open_catalog(str(root))
    df = c.read_pixel(1, 5, columns=list(allwise_schema.PIPELINE_COLUMNS))
    assert list(df.columns) == list(allwise_schema.PIPELINE_COLUMNS)
    full = c.read_pixel(1, 5)
    assert set(full.columns) == set(c.schema.names)


@pytest.mark.parametrize(
    "cone", [SEAM, (healpix.pixel_center(1, 5)[0], healpix.pixel_center(1, 5)[1], 0.7)]
)
def test_cone_matches_astropy(
    cone: tuple[float, float, float], local: tuple[Path, dict[int, pa.Table]]
) -> None:
    root, tables = local
    ra0, dec0, r = cone
    fs = counting_fs(root)
    c = cat.open_catalog(str(root), filesystem=fs)
    got = c.cone(ra0, dec0, r, columns=["cntr", "ra", "dec"])
    every = all_rows(tables)
    sep = (
        SkyCoord(ra0 * u.deg, dec0 * u.deg)
        .separation(SkyCoord(every["ra"].to_numpy() * u.deg, every["dec"].to_numpy() * u.deg))
        .arcsec
    )
    inside = sep <= r * 3600
    assert inside.sum() > 10, "the test cone should hold sources"
    order = np.argsort(every["cntr"].to_numpy()[inside])
    got = got.sort_values("cntr")
    np.testing.assert_array_equal(got["cntr"], every["cntr"].to_numpy()[inside][order])
    np.testing.assert_allclose(got["_dist_arcsec"], sep[inside][order], rtol=0, atol=1e-6)
    wanted = {rel(int(k)) for k in healpix.cone_pixels(ra0, dec0, r, 5) if int(k) in tables}
    assert fs.data_files() <= wanted


def test_empty_partition_and_absent_pixel_give_typed_empty_frames(
    local: tuple[Path, dict[int, pa.Table]],
) -> None:
    root, _ = local
    c = cat.open_catalog(str(root))
    for pixel in (EMPTY_PIXEL, 5000):
        df = c.read_pixel(pixel, 5, columns=["cntr", "ra", "designation"])
        assert df.empty and list(df.columns) == ["cntr", "ra", "designation"]
        assert df["cntr"].dtype == np.int64 and df["ra"].dtype == np.float64
    assert c.read_pixels([], 5, ["cntr"]).empty


def test_missing_root_names_url_and_layout(tmp_path: Path) -> None:
    url = str(tmp_path / "nowhere.parquet")
    with pytest.raises(FileNotFoundError, match=r"nowhere\.parquet") as err:
        cat.open_catalog(url)
    assert "healpix_k0=" in str(err.value)
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(FileNotFoundError, match="nothing there"):
        cat.open_catalog(str(tmp_path / "emptydir"))
    (tmp_path / "emptydir" / "README").write_text("not a catalog")
    with pytest.raises(FileNotFoundError, match="no partition files"):
        cat.open_catalog(str(tmp_path / "emptydir"))


def test_missing_required_columns_are_listed(tmp_path: Path) -> None:
    write_catalog(tmp_path, pixels=(0,), drop=("coadd_id", "wx"))
    cat.open_catalog(str(tmp_path))  # fine for a cone search: ra, dec, cntr are there
    with pytest.raises(allwise_schema.CatalogSchemaError, match=r"\['coadd_id', 'wx'\]"):
        cat.open_catalog(str(tmp_path), require=allwise_schema.PIPELINE_COLUMNS)
    c = cat.open_catalog(str(tmp_path))
    with pytest.raises(allwise_schema.CatalogSchemaError, match="did you mean"):
        c.read_pixel(0, 5, columns=["cntr", "w1mpr"])


def test_wrong_dtypes_are_refused(tmp_path: Path) -> None:
    write_catalog(tmp_path, pixels=(0,), cast={"ra": pa.string(), "cntr": pa.float64()})
    with pytest.raises(allwise_schema.CatalogSchemaError, match="wrong type") as err:
        cat.open_catalog(str(tmp_path))
    assert "ra: string" in str(err.value) and "cntr: double" in str(err.value)


@pytest.mark.parametrize("damage", ["garbage", "midfile", "schema"])
def test_corrupt_file_is_named(damage: str, tmp_path: Path) -> None:
    write_catalog(tmp_path, pixels=(0, 1, 2))
    path = tmp_path / rel(1)
    raw = path.read_bytes()
    if damage == "schema":  # valid Parquet, but not the columns _common_metadata promises
        t = pq.read_table(path)
        pq.write_table(t.set_column(4, "w1mpro", pa.array(["x"] * len(t))), path)
    else:
        path.write_bytes(
            b"not parquet" * 20 if damage == "garbage" else raw[:60] + bytes(300) + raw[360:]
        )
    c = cat.open_catalog(str(tmp_path))
    assert len(c.read_pixel(0, 5)) == 40  # the others still read
    for pixel, order in ((1, 5), (0, 4)):
        with pytest.raises(partitions.CorruptPartitionError, match="healpix_k5=1/part0") as err:
            c.read_pixel(pixel, order)
        assert err.value.path.endswith(rel(1))


def test_corrupt_metadata_is_named(tmp_path: Path) -> None:
    write_catalog(tmp_path, pixels=(0,))
    (tmp_path / "_common_metadata").write_bytes(b"garbage" * 10)
    with pytest.raises(partitions.CorruptPartitionError, match="_common_metadata"):
        cat.open_catalog(str(tmp_path))


def test_bad_requests_raise(local: tuple[Path, dict[int, pa.Table]]) -> None:
    root, _ = local
    c = cat.open_catalog(str(root))
    with pytest.raises(ValueError, match="order"):
        c.read_pixel(0, 30)
    with pytest.raises(ValueError, match="out of range"):
        c.read_pixel(12 * 4**5, 5)
    with pytest.raises(ValueError, match="radius"):
        c.cone(10, 10, 0)
    with pytest.raises(ValueError, match="centre"):
        c.cone(float("nan"), 10, 1)


def test_pickles_with_its_index(local: tuple[Path, dict[int, pa.Table]]) -> None:
    root, tables = local
    c = cat.open_catalog(str(root))
    c.pixels()  # load the index, which must travel with the object
    c2 = pickle.loads(pickle.dumps(c))
    assert c2._files == c._files
    np.testing.assert_array_equal(
        c2.read_pixel(3, 5, ["cntr"])["cntr"], tables[3]["cntr"].to_numpy()
    )


def test_memory_filesystem(local: tuple[Path, dict[int, pa.Table]]) -> None:
    import fsspec

    root, tables = local
    mem = fsspec.filesystem("memory")
    for path in root.rglob("*"):
        if path.is_file():
            mem.pipe(f"/iic-test-cat/{path.relative_to(root).as_posix()}", path.read_bytes())
    try:
        c = cat.open_catalog("memory://iic-test-cat")
        assert len(c.read_pixel(1029, 5, ["cntr"])) == 40
        np.testing.assert_array_equal(c.pixels(), sorted(tables))
    finally:
        mem.rm("/iic-test-cat", recursive=True)


# ---------------------------------------------------------------------------------------------
# S3 (moto on 127.0.0.1)

S3_URL = f"s3://{BUCKET}/wise/allwise/catalogs/p3as_psd/healpix_k5/wise-allwise.parquet"


@pytest.fixture
def no_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)


@pytest.fixture(scope="module")
def s3_catalogs(
    s3_server: str,
    local: tuple[Path, dict[int, pa.Table]],
    local_nometa: tuple[Path, dict[int, pa.Table]],
) -> dict[str, str]:
    """The test catalog on the server: with and without _metadata, and a private copy."""
    prefix = "wise/allwise/catalogs/p3as_psd/healpix_k5"
    upload_tree(s3_server, local[0], BUCKET, f"{prefix}/wise-allwise.parquet")
    upload_tree(s3_server, local_nometa[0], BUCKET, "nometa/wise-allwise.parquet")
    upload_tree(s3_server, local[0], "private-copy", "wise-allwise.parquet", public=False)
    return {
        "meta": S3_URL,
        "nometa": f"s3://{BUCKET}/nometa/wise-allwise.parquet",
        "private": "s3://private-copy/wise-allwise.parquet",
    }


def _objects(log: RequestLog, method: str) -> list[str]:
    """Objects under the catalog root that got ``method`` requests (bucket listings left out)."""
    sep = "/wise-allwise.parquet/"
    return [p.split(sep)[-1] for p in log.paths(method) if sep in p]


@pytest.mark.usefixtures("no_aws_env")
def test_s3_pruning_with_metadata(
    s3_server: str, s3_catalogs: dict[str, str], s3_requests: RequestLog
) -> None:
    c = cat.open_catalog(s3_catalogs["meta"], endpoint_url=s3_server)  # anonymous by default
    # the schema only: _common_metadata, and whether _metadata exists; no listing
    assert set(_objects(s3_requests, "GET")) == {"_common_metadata"}, s3_requests.snapshot()
    assert len(s3_requests.snapshot()) <= 3, s3_requests.snapshot()
    s3_requests.clear()
    pixels = c.pixels()
    assert len(pixels) == len(PIXELS) + 1
    assert _objects(s3_requests, "GET") == ["_metadata"]  # the index: no listing at all
    assert not [q for _, _, q in s3_requests.snapshot() if "list-type" in q]
    s3_requests.clear()
    assert c.count(0, 4) == 160 and not s3_requests.snapshot()  # counts: zero requests
    df = c.read_pixel(1029, 5, columns=["cntr", "w1mpro"])
    assert len(df) == 40
    touched = set(_objects(s3_requests, "GET")) | set(_objects(s3_requests, "HEAD"))
    assert touched == {rel(1029)}, s3_requests.snapshot()
    n_get = len(s3_requests.paths("GET"))
    assert n_get <= 3, s3_requests.snapshot()  # footer + coalesced column chunks


@pytest.mark.usefixtures("no_aws_env")
def test_s3_single_pixel_without_index_lists_one_directory(
    s3_server: str, s3_catalogs: dict[str, str], s3_requests: RequestLog
) -> None:
    # With _metadata but no index loaded yet (a worker's case), one pixel costs one listing of
    # its own directory. Without _metadata, opening listed the catalog once and reads reuse it.
    for key, n_lists in (("meta", 1), ("nometa", 0)):
        c = cat.open_catalog(s3_catalogs[key], endpoint_url=s3_server)
        s3_requests.clear()
        assert len(c.read_pixel(2, 5, ["cntr"])) == 40
        lists = [q for _, _, q in s3_requests.snapshot() if "list-type" in q]
        assert len(lists) == n_lists, s3_requests.snapshot()
        assert all("healpix_k5%3D2%2F" in q for q in lists)
        assert set(_objects(s3_requests, "GET")) == {rel(2)}, s3_requests.snapshot()


@pytest.mark.usefixtures("no_aws_env")
def test_s3_without_metadata_lists_once_and_reads_footers(
    s3_server: str, s3_catalogs: dict[str, str], s3_requests: RequestLog
) -> None:
    c = cat.open_catalog(s3_catalogs["nometa"], endpoint_url=s3_server)
    assert not c.has_metadata
    np.testing.assert_array_equal(c.pixels(), sorted([*PIXELS, EMPTY_PIXEL]))
    s3_requests.clear()
    assert c.count(0, 4) == 160
    assert set(_objects(s3_requests, "GET")) == {rel(k) for k in (0, 1, 2, 3)}
    got = c.cone(*SEAM, columns=["cntr"])
    assert len(got) > 10


@pytest.mark.usefixtures("no_aws_env")
def test_s3_access_denied_is_a_clear_permission_error(
    s3_server: str, s3_catalogs: dict[str, str]
) -> None:
    with pytest.raises(PermissionError, match="access denied reading s3://private-copy") as err:
        cat.open_catalog(s3_catalogs["private"], endpoint_url=s3_server)
    assert isinstance(err.value, storage.CatalogAccessError)
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no botocore stack


def test_s3_credentials_from_environment(s3_env: str, s3_catalogs: dict[str, str]) -> None:
    # With AWS_* credentials in the environment, anon=None signs requests: the private copy opens.
    c = cat.open_catalog(s3_catalogs["private"], endpoint_url=s3_env)
    assert len(c.read_pixel(0, 5, ["cntr"])) == 40
    with pytest.raises(PermissionError):
        cat.open_catalog(s3_catalogs["private"], endpoint_url=s3_env, anon=True)


def test_s3_missing_root(s3_server: str, s3_catalogs: dict[str, str], no_aws_env: None) -> None:
    with pytest.raises(FileNotFoundError, match="healpix_k0="):
        cat.open_catalog(f"s3://{BUCKET}/no/such/catalog.parquet", endpoint_url=s3_server)


# ---------------------------------------------------------------------------------------------
# The synthetic sky (the team's tiny_sky fixture), local and on S3


@pytest.fixture
def sky_manifest(request: pytest.FixtureRequest) -> Any:
    try:
        return request.getfixturevalue("tiny_sky")
    except pytest.FixtureLookupError:
        pytest.skip("the tiny_sky fixture (tests/fixtures/sky.py) is not registered")


def test_tiny_sky_catalog(sky_manifest: Any) -> None:
    c = cat.open_catalog(sky_manifest.catalog_url, require=allwise_schema.PIPELINE_COLUMNS)
    assert c.has_metadata
    np.testing.assert_array_equal(c.pixels(), sorted(sky_manifest.pixels))
    assert sum(c.count(int(p)) for p in c.pixels()) == sky_manifest.n_sources
    every = c.read_pixels(c.pixels(), 5, ["cntr", "ra", "dec"])
    assert len(every) == sky_manifest.n_sources and every["cntr"].is_unique
    k5 = healpix.pixel_of(every["ra"].to_numpy(), every["dec"].to_numpy(), 5)
    for p in c.pixels():
        assert set(c.read_pixel(int(p), 5, ["cntr"])["cntr"]) == set(every["cntr"][k5 == p])
    ra0, dec0 = float(every["ra"].median()), float(every["dec"].median())
    got = c.cone(ra0, dec0, 0.05, ["cntr"])
    sep = SkyCoord(ra0 * u.deg, dec0 * u.deg).separation(
        SkyCoord(every["ra"].to_numpy() * u.deg, every["dec"].to_numpy() * u.deg)
    )
    assert set(got["cntr"]) == set(every["cntr"][sep.deg <= 0.05])


@pytest.mark.usefixtures("no_aws_env")
def test_tiny_sky_on_s3(
    request: pytest.FixtureRequest, sky_manifest: Any, s3_server: str, s3_requests: RequestLog
) -> None:
    root = request.getfixturevalue("s3_sky")
    assert root == "s3://nasa-irsa-wise/wise/allwise"
    url = f"{root}/catalogs/p3as_psd/healpix_k5/wise-allwise.parquet"
    c = cat.open_catalog(url, endpoint_url=s3_server, require=allwise_schema.PIPELINE_COLUMNS)
    pixels = c.pixels()
    s3_requests.clear()
    pixel = int(pixels[0])
    df = c.read_pixel(pixel, 5, list(allwise_schema.PIPELINE_COLUMNS))
    assert len(df) == c.count(pixel)
    assert set(_objects(s3_requests, "GET")) == {rel(pixel)}, s3_requests.snapshot()


# ---------------------------------------------------------------------------------------------
# The real bucket


@pytest.mark.remote_data
def test_real_allwise_bucket() -> None:
    c = cat.open_catalog(cat.IRSA_ALLWISE_URL, anon=True)
    missing = [col for col in allwise_schema.PIPELINE_COLUMNS if col not in c.schema.names]
    assert not missing
    pixel = int(healpix.pixel_of(np.array([150.0]), np.array([2.2]), 5)[0])  # COSMOS
    df = c.read_pixel(pixel, 5, columns=["cntr", "ra", "dec", "w1mpro"])
    assert len(df) > 1000
    assert (healpix.pixel_of(df["ra"].to_numpy(), df["dec"].to_numpy(), 5) == pixel).all()
