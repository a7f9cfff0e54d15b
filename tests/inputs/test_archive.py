"""iic_survey.inputs.archive and ibe: tile names, opening tiles (local, HTTP, S3), IBE and SIA."""

from __future__ import annotations

import pickle
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import Cutout2D
from astropy.wcs import WCS

from iic_survey.inputs.archive import (
    IRSA_IBE_URL,
    IRSA_S3_URL,
    TileArchive,
    normalize_coadd_id,
    tile_key,
)
from iic_survey.inputs.errors import ArchiveAccessDenied, TileCorrupt, TileFetchError, TileMissing
from iic_survey.inputs.ibe import CutoutService, ServiceConfig, sia_lookup
from iic_survey.inputs.retry import RetryPolicy
from tests.fixtures.irsa import AtlasPair, IrsaServer

A, B = "1512p000_ac51", "1527p000_ac51"
FAST = RetryPolicy(attempts=3, backoff_s=0.01, backoff_max_s=0.02)


@pytest.fixture(scope="module")
def pair_server(atlas_pair: AtlasPair) -> Iterator[IrsaServer]:
    with IrsaServer(atlas_pair.root) as server:
        yield server


@pytest.fixture
def ibe(pair_server: IrsaServer) -> Iterator[IrsaServer]:
    pair_server.faults.reset()
    pair_server.stats.reset()
    yield pair_server
    pair_server.faults.reset()
    pair_server.cutout_content_type, pair_server.cutout_drop_keys = "image/fits", ()


def _service(**kwargs: object) -> CutoutService:
    opts: dict[str, object] = dict(retry=FAST, read_timeout_s=2.0, connect_timeout_s=2.0)
    opts.update(kwargs)
    return CutoutService(ServiceConfig(**opts))  # type: ignore[arg-type]


# -- names and specs ----------------------------------------------------------------------------


def test_tile_key_matches_irsa_layout() -> None:
    assert tile_key("0904m213", 1) == "09/0904/0904m213_ac51/0904m213_ac51-w1-int-3.fits"
    assert tile_key("0904m213_ac51", 3).endswith("0904m213_ac51-w3-int-3.fits")
    assert normalize_coadd_id(" 0904m213 ") == "0904m213_ac51"
    assert normalize_coadd_id(None) == normalize_coadd_id("x") == normalize_coadd_id(3.0) == ""
    with pytest.raises(ValueError, match="not an AllWISE"):
        tile_key("garbage", 1)
    with pytest.raises(ValueError, match="band"):
        tile_key("0904m213", 5)


def test_from_spec_forms(tmp_path: Path) -> None:
    irsa = TileArchive.from_spec("irsa")
    assert irsa.kind == "http" and irsa.root == IRSA_IBE_URL
    assert irsa.tile_url("0904m213", 2) == (
        "https://irsa.ipac.caltech.edu/ibe/data/wise/allwise/p3am_cdd/"
        "09/0904/0904m213_ac51/0904m213_ac51-w2-int-3.fits"
    )
    s3 = TileArchive.from_spec("s3")
    assert s3.kind == "s3" and s3.root == IRSA_S3_URL and s3.storage_options == {"anon": True}
    assert s3.tile_url("0904m213", 1) == (
        "s3://nasa-irsa-wise/wise/allwise/images/p3am_cdd/"
        "09/0904/0904m213_ac51/0904m213_ac51-w1-int-3.fits"
    )
    moto = TileArchive.from_spec("s3://b/p/", endpoint_url="http://127.0.0.1:1")
    assert moto.root == "s3://b/p" and moto.storage_options["endpoint_url"] == "http://127.0.0.1:1"
    (tmp_path / "images" / "p3am_cdd").mkdir(parents=True)
    for spec in (f"local:{tmp_path}", str(tmp_path), f"file://{tmp_path}"):
        assert TileArchive.from_spec(spec).root == str(tmp_path / "images" / "p3am_cdd")
    with pytest.raises(ValueError, match="unknown archive spec"):
        TileArchive.from_spec("ftp://x")
    with pytest.raises(ValueError, match="s3:// archives only"):
        TileArchive.from_spec("irsa", endpoint_url="http://x")
    with pytest.raises(FileNotFoundError):
        TileArchive.from_spec(str(tmp_path / "nope"))


def test_a_failed_connection_is_an_outage_not_a_missing_tile() -> None:
    """fsspec's HTTP file system raises a bare FileNotFoundError for a refused connection too
    (the aiohttp error is its cause): that must be retried, not flagged BAND_MISSING."""
    archive = TileArchive.from_spec("http://127.0.0.1:9/p3am_cdd")  # nothing listens on 9
    url = archive.tile_url("0904m213", 1)
    with pytest.raises(OSError) as raw, fsspec.open(url, "rb") as f:
        f.read(10)
    assert isinstance(archive.classify_error(url, raw.value), TileFetchError), raw.value
    assert isinstance(archive.classify_error(url, FileNotFoundError(url)), TileMissing)


def test_archive_and_service_pickle(atlas_pair: AtlasPair, ibe: IrsaServer) -> None:
    archive = TileArchive.from_spec(ibe.ibe_url)
    service = _service()
    service.fetch([(archive.tile_url(A, 1), *atlas_pair.sources.loc[0, ["ra", "dec"]])])
    for obj in (archive, TileArchive.from_spec("s3"), service):
        clone = pickle.loads(pickle.dumps(obj))
        assert type(clone) is type(obj)
    assert pickle.loads(pickle.dumps(archive)) == archive
    assert pickle.loads(pickle.dumps(service)).config == service.config


def test_retry_policy_delays() -> None:
    policy = RetryPolicy(attempts=5, backoff_s=1.0, backoff_max_s=5.0, jitter=0.5)
    rng = random.Random(1)
    for retry, base in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (9, 5.0)):
        d = policy.delay(retry, rng)
        assert 0.5 * base <= d <= base
    assert policy.delay(1, rng, at_least=3.0) == 3.0
    assert policy.delay(1, rng, at_least=60.0) == 5.0  # a Retry-After is capped too
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


# -- opening tiles ------------------------------------------------------------------------------


def _copy_pair(atlas_pair: AtlasPair, tmp_path: Path) -> tuple[TileArchive, Path]:
    root = tmp_path / "p3am_cdd"
    shutil.copytree(atlas_pair.root, root)
    return TileArchive.from_spec(str(root)), root


def test_open_tile_local(atlas_pair: AtlasPair) -> None:
    archive = TileArchive.from_spec(str(atlas_pair.root))
    assert archive.exists(A, 1) and not archive.exists("0904m213", 1)
    with archive.open_tile(A, 2) as hdu:
        assert hdu.header["MAGZP"] == 19.5
        np.testing.assert_array_equal(hdu.section[10:20, 5:9], hdu.data[10:20, 5:9])
    with pytest.raises(TileMissing), archive.open_tile("0904m213", 1):
        pass


@pytest.mark.parametrize("fault", ["truncated", "garbage", "no_wcs", "no_magzp", "empty"])
def test_open_tile_refuses_bad_files(atlas_pair: AtlasPair, tmp_path: Path, fault: str) -> None:
    archive, _ = _copy_pair(atlas_pair, tmp_path)
    path = Path(archive.tile_url(A, 1))
    if fault == "truncated":
        path.write_bytes(path.read_bytes()[: 2880 * 20])
    elif fault == "garbage":
        path.write_bytes(b"this is not FITS" * 500)
    elif fault == "empty":
        path.write_bytes(b"")
    else:
        with fits.open(path, mode="update") as hdul:
            keys = ("CTYPE1", "CTYPE2") if fault == "no_wcs" else ("MAGZP",)
            for key in keys:
                del hdul[0].header[key]
    match = {"truncated": "truncated", "no_wcs": "WCS", "no_magzp": "MAGZP"}.get(fault, "FITS")
    with pytest.raises(TileCorrupt, match=match), archive.open_tile(A, 1):
        pass


def test_open_tile_http_reads_sections_only(atlas_pair: AtlasPair, ibe: IrsaServer) -> None:
    archive = TileArchive.from_spec(ibe.ibe_url, storage_options={"block_size": 2880 * 4})
    local = TileArchive.from_spec(str(atlas_pair.root))
    with archive.open_tile(B, 3) as hdu, local.open_tile(B, 3) as ref:
        np.testing.assert_array_equal(hdu.section[100:137, :], ref.data[100:137, :])
    assert ibe.stats.bytes_sent < Path(local.tile_url(B, 3)).stat().st_size / 2
    with pytest.raises(TileMissing), archive.open_tile("0904m213", 1):
        pass
    ibe.faults.configure(deny=True)
    with pytest.raises(ArchiveAccessDenied, match="access denied"), archive.open_tile(A, 1):
        pass


# -- S3 (moto) ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_pair(s3_server: str, atlas_pair: AtlasPair) -> str:
    from tests.fixtures.s3 import upload_tree

    upload_tree(s3_server, atlas_pair.root, "iic-archive-test", "images/p3am_cdd")
    return "s3://iic-archive-test/images/p3am_cdd"


def test_open_tile_s3(s3_server: str, s3_pair: str, atlas_pair: AtlasPair) -> None:
    archive = TileArchive.from_spec(s3_pair, endpoint_url=s3_server)
    assert archive.storage_options["anon"] is True and archive.exists(A, 1)
    local = TileArchive.from_spec(str(atlas_pair.root))
    with archive.open_tile(A, 1) as hdu, local.open_tile(A, 1) as ref:
        np.testing.assert_array_equal(hdu.section[390:400, 3:40], ref.data[390:400, 3:40])
    with pytest.raises(TileMissing), archive.open_tile("0904m213", 1):
        pass


def test_s3_access_denied_is_a_clear_error(
    s3_server: str, s3_pair: str, iam_enforced: None
) -> None:
    """With IAM enforced, moto refuses unknown keys (403): we say so, and what to check."""
    opts = {"key": "unknown", "secret": "unknown", "skip_instance_cache": True}
    archive = TileArchive.from_spec(s3_pair, endpoint_url=s3_server, storage_options=opts)
    assert "anon" not in archive.storage_options
    denied = pytest.raises(ArchiveAccessDenied, match=r"anonymous access .* credentials")
    with denied, archive.open_tile(A, 1):
        pass


# -- the IBE cutout service ---------------------------------------------------------------------


def test_cutouts_match_astropy(atlas_pair: AtlasPair, ibe: IrsaServer) -> None:
    archive = TileArchive.from_spec(ibe.ibe_url)
    src = atlas_pair.sources.set_index("case").loc["interior"]
    res = _service().fetch_one(archive.tile_url(A, 1), src.ra, src.dec)
    assert res.status == "ok" and res.attempts == 1 and res.data is not None
    with fits.open(archive.tile_url(A, 1).replace(ibe.ibe_url, str(atlas_pair.root))) as hdul:
        from astropy import units as u
        from astropy.coordinates import SkyCoord

        ref = Cutout2D(
            hdul[0].data,
            SkyCoord(src.ra, src.dec, unit="deg"),
            50 * u.arcsec,
            wcs=WCS(hdul[0].header),
        )
    np.testing.assert_array_equal(res.data, ref.data)
    x, y = WCS(res.header).world_to_pixel_values(src.ra, src.dec)
    np.testing.assert_allclose((x, y), ref.wcs.world_to_pixel_values(src.ra, src.dec), atol=1e-6)


@pytest.mark.parametrize("ctype", ["text/plain", "", "application/fits; charset=binary"])
def test_a_fits_answer_is_known_by_its_first_card(
    atlas_pair: AtlasPair, ibe: IrsaServer, ctype: str
) -> None:
    """IBE does not document its cutouts' Content-Type: a body that is FITS is taken as FITS."""
    ibe.cutout_content_type = ctype
    archive = TileArchive.from_spec(ibe.ibe_url)
    src = atlas_pair.sources.set_index("case").loc["interior"]
    res = _service().fetch_one(archive.tile_url(A, 1), src.ra, src.dec)
    assert res.status == "ok" and res.attempts == 1 and res.data is not None


@pytest.mark.parametrize("band", [1, 2, 3])
def test_a_cutout_without_magzp_takes_the_band_zero_point(
    atlas_pair: AtlasPair, ibe: IrsaServer, band: int
) -> None:
    """MAGZP is not promised in cutout headers: the band's Atlas zero point stands in."""
    ibe.cutout_drop_keys = ("MAGZP",)
    archive = TileArchive.from_spec(ibe.ibe_url)
    src = atlas_pair.sources.set_index("case").loc["interior"]
    res = _service().fetch_one(archive.tile_url(A, band), src.ra, src.dec)
    assert res.status == "ok" and res.attempts == 1 and res.header is not None
    assert res.header["MAGZP"] == {1: 20.5, 2: 19.5, 3: 18.0}[band]


def test_service_statuses_without_retry(atlas_pair: AtlasPair, ibe: IrsaServer) -> None:
    archive = TileArchive.from_spec(ibe.ibe_url)
    service = _service()
    off = service.fetch_one(archive.tile_url(A, 1), 10.0, 10.0)
    missing = service.fetch_one(archive.tile_url("0904m213", 1), 90.4, -21.3)
    assert (off.status, off.attempts) == ("off_tile", 1)
    assert (missing.status, missing.attempts) == ("missing", 1)
    assert ibe.stats.requests["cutout"] == 2


@pytest.mark.parametrize("fault", ["server_error", "truncate", "wrong_type", "timeout"])
def test_service_retries_then_fails(atlas_pair: AtlasPair, ibe: IrsaServer, fault: str) -> None:
    ibe.faults.configure(**{fault: 1.0}, sleep_s=0.6)
    archive = TileArchive.from_spec(ibe.ibe_url)
    src = atlas_pair.sources.iloc[0]
    res = _service(read_timeout_s=0.2).fetch_one(archive.tile_url(A, 1), src.ra, src.dec)
    assert res.status == "failed" and res.attempts == FAST.attempts and res.error
    assert ibe.stats.requests["cutout"] == FAST.attempts


def test_service_batch_survives_faults(atlas_pair: AtlasPair, ibe: IrsaServer) -> None:
    """Seeded 5xx / time-outs / truncation / wrong type on ~half the requests: all recovered."""
    ibe.faults.configure(
        server_error=0.15, timeout=0.1, truncate=0.1, wrong_type=0.1, sleep_s=0.4, seed=7
    )
    archive = TileArchive.from_spec(ibe.ibe_url)
    asks = [
        (archive.tile_url(t, b), r.ra, r.dec)
        for r in atlas_pair.sources.itertuples()
        for t in (A, B)
        for b in (1, 2)
    ]
    service = _service(
        retry=RetryPolicy(attempts=10, backoff_s=0.01, backoff_max_s=0.05),
        read_timeout_s=0.2,
        max_workers=6,
    )
    results = service.fetch(asks)
    assert len(results) == len(asks)
    assert {r.status for r in results} <= {"ok", "off_tile"}
    assert sum(ibe.faults.injected.values()) > 5
    ibe.faults.reset()
    clean = _service().fetch(asks)  # same answers as without faults, in the same order
    for got, ref in zip(results, clean, strict=True):
        assert got.status == ref.status
        if got.data is not None:
            np.testing.assert_array_equal(got.data, ref.data)


def test_service_per_host_limit(atlas_pair: AtlasPair, ibe: IrsaServer) -> None:
    ibe.faults.configure(timeout=1.0, sleep_s=0.05)  # every answer is slow, none too slow
    archive = TileArchive.from_spec(ibe.ibe_url)
    src = atlas_pair.sources.iloc[0]
    asks = [(archive.tile_url(A, 1), src.ra, src.dec)] * 16
    results = _service(per_host=2, max_workers=8).fetch(asks)
    assert all(r.status == "ok" for r in results)
    assert ibe.stats.max_in_flight == 2  # in parallel, but never more than the limit


def test_service_access_denied_raises(atlas_pair: AtlasPair, ibe: IrsaServer) -> None:
    ibe.faults.configure(deny=True)
    archive = TileArchive.from_spec(ibe.ibe_url)
    src = atlas_pair.sources.iloc[0]
    with pytest.raises(ArchiveAccessDenied, match="403"):
        _service().fetch([(archive.tile_url(A, 1), src.ra, src.dec)] * 3)


# -- SIA v2 -------------------------------------------------------------------------------------


def test_sia_lookup_lists_overlapping_tiles(atlas_pair: AtlasPair, ibe: IrsaServer) -> None:
    src = atlas_pair.sources.set_index("case")
    cases = ["interior", "overlap_edge", "interior_b"]
    ra = [*src.loc[cases, "ra"], 10.0, np.nan]
    dec = [*src.loc[cases, "dec"], 10.0, np.nan]
    found = sia_lookup(ra, dec, ibe.sia_url, bands=(1, 2, 3))
    assert list(found.columns) == ["source", "coadd_id", "band", "access_url", "separation_deg"]
    tiles = found.groupby("source")["coadd_id"].apply(lambda s: list(dict.fromkeys(s)))
    assert tiles.to_dict() == {0: [A], 1: [B, A], 2: [B]}  # overlap: nearest centre first
    assert set(found["band"]) == {1, 2, 3}
    assert all(u.endswith("-int-3.fits") for u in found["access_url"])  # no -unc- rows
    archive = TileArchive.from_spec(ibe.ibe_url)
    row = found.iloc[0]
    assert row["access_url"] == archive.tile_url(row["coadd_id"], int(row["band"]))


def test_sia_lookup_on_tiny_sky(tiny_sky: Any, irsa: IrsaServer) -> None:
    """A source of each written tile finds that tile, through pyvo, over HTTP."""
    import pandas as pd

    parts = sorted(Path(tiny_sky.catalog_url).glob("healpix_k0=*/healpix_k5=*/*.parquet"))
    rows = pd.concat([pd.read_parquet(p, columns=["ra", "dec", "coadd_id"]) for p in parts])
    rows["coadd_id"] = rows["coadd_id"].map(normalize_coadd_id)
    one = rows.drop_duplicates("coadd_id").reset_index(drop=True)
    assert set(one["coadd_id"]) <= set(tiny_sky.tiles)
    found = sia_lookup(one["ra"], one["dec"], irsa.sia_url)
    for i, cid in enumerate(one["coadd_id"]):
        assert cid in set(found.loc[found["source"] == i, "coadd_id"])
