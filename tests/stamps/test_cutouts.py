"""iic_survey.stamps cutouts and cutter: stamp geometry vs astropy, edge tiles, flags, bad input."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.nddata import Cutout2D
from astropy.wcs import WCS

from iic_survey.core.flags import QualityFlag as Q
from iic_survey.inputs.archive import TileArchive, normalize_coadd_id
from iic_survey.inputs.errors import ArchiveAccessDenied
from iic_survey.inputs.ibe import ServiceConfig
from iic_survey.inputs.retry import RetryPolicy
from iic_survey.stamps import cutter
from iic_survey.stamps.cutouts import CutoutConfig, Stamps, cut_stamps
from iic_survey.stamps.cutter import cut_sources
from tests.fixtures.irsa import AtlasPair, IrsaServer

A, B = "1512p000_ac51", "1527p000_ac51"
FAST = RetryPolicy(attempts=3, backoff_s=0.01, backoff_max_s=0.02)
CFG = CutoutConfig(retry=FAST)
EDGE = {"top_edge", "corner"}  # no tile in the archive holds their whole stamp


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


@pytest.fixture
def local(atlas_pair: AtlasPair) -> TileArchive:
    return TileArchive.from_spec(str(atlas_pair.root))


@pytest.fixture
def copied(atlas_pair: AtlasPair, tmp_path: Path) -> TileArchive:
    """A private copy of the pair, for tests that damage files."""
    shutil.copytree(atlas_pair.root, tmp_path / "p3am_cdd")
    return TileArchive.from_spec(str(tmp_path / "p3am_cdd"))


def _flags(stamps: Stamps, i: int) -> Q:
    return Q(int(stamps.flags[i]))


def _reference(archive: TileArchive, cid: str, band: int, ra: float, dec: float) -> np.ndarray:
    """The stamp by astropy's Cutout2D on the tile (37 px, NaN-filled past the edge)."""
    with fits.open(archive.tile_url(cid, band)) as hdul:
        wcs = WCS(hdul[0].header)
        xy = wcs.world_to_pixel_values(ra, dec)
        cut = Cutout2D(hdul[0].data.astype(np.float32), xy, 37, mode="partial", fill_value=np.nan)
        return np.asarray(cut.data)


# -- config and the pure cutter -----------------------------------------------------------------


def test_config_checks() -> None:
    assert CutoutConfig().size_px == 37  # 50" / 1.375"
    assert CutoutConfig(size_arcsec=44.0).size_px == 33  # 32 px rounds up to odd
    with pytest.raises(ValueError, match="did you mean 'tiles'"):
        CutoutConfig(method="tile")
    with pytest.raises(ValueError, match="bands"):
        CutoutConfig(bands=(1, 1, 2))
    with pytest.raises(ValueError):
        CutoutConfig(max_workers=0)


def test_cut_stamps_matches_cutout2d() -> None:
    rng = np.random.default_rng(3)
    image = rng.normal(size=(120, 90)).astype(np.float32)
    x = rng.uniform(-30, 120, 300)
    y = rng.uniform(-30, 150, 300)
    stamps, off, offset = cut_stamps(image, x, y, 37)
    for i in range(len(x)):
        try:
            ref = Cutout2D(image, (x[i], y[i]), 37, mode="partial", fill_value=np.nan).data
        except Exception:  # no overlap at all
            ref = np.full((37, 37), np.nan)
        np.testing.assert_array_equal(stamps[i], ref)
        assert off[i] == bool(np.isnan(ref).any())
    assert np.all(np.abs(offset) <= 0.5)
    np.testing.assert_allclose(offset[:, 0], x - np.round(x), atol=1e-5)
    rows = cut_stamps(image[40:100], x, y, 37, row0=40, shape=image.shape)
    inside = (y >= 58) & (y < 81)  # stamps whose rows all lie in 40..99
    np.testing.assert_array_equal(rows[0][inside], stamps[inside])


# -- tile mode on the overlapping pair ----------------------------------------------------------


def test_positions_agree_with_astropy_wcs(atlas_pair: AtlasPair, local: TileArchive) -> None:
    src = atlas_pair.sources
    out = cut_sources(src, local, CFG)
    assert out.stamps.shape == (len(src), 3, 37, 37) and out.stamps.dtype == np.float32
    assert out.flags.dtype == np.uint32
    assert list(out.tile) == list(src["best_tile"])
    for i, row in enumerate(src.itertuples()):
        wcs = WCS(fits.getheader(local.tile_url(out.tile[i], 1)))
        x, y = wcs.world_to_pixel_values(row.ra, row.dec)
        np.testing.assert_allclose(out.offset[i], (x - np.round(x), y - np.round(y)), atol=1e-4)
        centre = wcs.pixel_to_world(np.round(x), np.round(y))
        sep = centre.separation(wcs.pixel_to_world(x, y)).arcsec
        assert sep <= 0.5 * np.sqrt(2) * 1.375 + 1e-6
        for b in range(3):  # the same pixels as astropy's own cutout
            np.testing.assert_array_equal(
                out.stamps[i, b], _reference(local, out.tile[i], b + 1, row.ra, row.dec)
            )
        peak = np.unravel_index(np.nanargmax(out.stamps[i, 0]), (37, 37))
        assert peak == (18, 18)  # the source sits on the centre pixel
        assert bool(_flags(out, i) & Q.OFF_EDGE) == (row.case in EDGE)


def test_catalog_wx_wy_agree(atlas_pair: AtlasPair, local: TileArchive) -> None:
    """wx, wy (1-based, catalogued tile) = astropy's 0-based position + 1."""
    src = atlas_pair.sources
    out = cut_sources(src, local, CutoutConfig(use_neighbours=False))
    assert list(out.tile) == [c + "_ac51" for c in src["coadd_id"]]
    np.testing.assert_allclose(out.offset[:, 0], src.wx - 1 - np.round(src.wx - 1), atol=1e-4)
    np.testing.assert_allclose(out.offset[:, 1], src.wy - 1 - np.round(src.wy - 1), atol=1e-4)


def test_edge_source_moves_to_neighbour(atlas_pair: AtlasPair, local: TileArchive) -> None:
    src = atlas_pair.sources.set_index("case")
    one = src.loc[["overlap_edge"]].reset_index()
    moved = cut_sources(one, local, CFG)
    kept = cut_sources(one, local, CutoutConfig(use_neighbours=False))
    assert moved.tile[0] == B and kept.tile[0] == A
    assert moved.flags[0] == 0 and _flags(kept, 0) == Q.OFF_EDGE | Q.NAN_PIXELS
    assert np.isnan(kept.stamps[0]).any() and not np.isnan(moved.stamps[0]).any()


def test_off_edge_padding(atlas_pair: AtlasPair, local: TileArchive) -> None:
    src = atlas_pair.sources.set_index("case")
    out = cut_sources(src.loc[["top_edge", "corner"]].reset_index(), local, CFG)
    assert _flags(out, 0) == _flags(out, 1) == Q.OFF_EDGE | Q.NAN_PIXELS
    top = out.stamps[0, 0]  # 5 px below the top row: the stamp's top 13 rows are off the tile
    assert np.isnan(top[-13:]).all() and not np.isnan(top[:-13]).any()


def test_rows_keep_their_order(atlas_pair: AtlasPair, local: TileArchive) -> None:
    src = atlas_pair.sources
    out = cut_sources(src, local, CFG)
    order = np.random.default_rng(0).permutation(len(src))
    shuffled = cut_sources(src.iloc[order].reset_index(drop=True), local, CFG)
    np.testing.assert_array_equal(shuffled.stamps, out.stamps[order])
    np.testing.assert_array_equal(shuffled.flags, out.flags[order])


def test_one_read_per_tile_and_band(
    atlas_pair: AtlasPair, local: TileArchive, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[tuple[str, int]] = []
    real = cutter._Cutter._read_band

    def counting(self: object, cid: str, band: int, rows: np.ndarray) -> object:
        reads.append((cid, band))
        return real(self, cid, band, rows)  # type: ignore[arg-type]

    monkeypatch.setattr(cutter._Cutter, "_read_band", counting)
    many = pd.concat([atlas_pair.sources] * 20, ignore_index=True)
    cut_sources(many, local, CFG)
    assert sorted(reads) == sorted((t, b) for t in (A, B) for b in (1, 2, 3))


@pytest.mark.parametrize("kind", ["http", "s3"])
def test_remote_archives_give_the_same_stamps(
    atlas_pair: AtlasPair,
    local: TileArchive,
    ibe: IrsaServer,
    kind: str,
    request: pytest.FixtureRequest,
) -> None:
    if kind == "http":
        remote = TileArchive.from_spec(ibe.ibe_url)
    else:
        from tests.fixtures.s3 import upload_tree

        endpoint = request.getfixturevalue("s3_server")
        upload_tree(endpoint, atlas_pair.root, "iic-cutouts-test", "p3am_cdd")
        remote = TileArchive.from_spec("s3://iic-cutouts-test/p3am_cdd", endpoint_url=endpoint)
    # merge_gap_rows=0: sources far apart in y are read as separate row windows
    for gap in (512, 0):
        cfg = CutoutConfig(retry=FAST, merge_gap_rows=gap)
        got, ref = (
            cut_sources(atlas_pair.sources, remote, cfg),
            cut_sources(atlas_pair.sources, local, cfg),
        )
        np.testing.assert_array_equal(got.stamps, ref.stamps)
        np.testing.assert_array_equal(got.flags, ref.flags)
        assert list(got.tile) == list(ref.tile)


def test_remote_reads_retry_network_faults(
    atlas_pair: AtlasPair, ibe: IrsaServer, local: TileArchive
) -> None:
    remote = TileArchive.from_spec(ibe.ibe_url)
    ref = cut_sources(atlas_pair.sources, local, CFG)
    ibe.faults.configure(server_error=0.3, seed=5, targets=("file",))
    cfg = CutoutConfig(retry=RetryPolicy(attempts=12, backoff_s=0.01, backoff_max_s=0.02))
    got = cut_sources(atlas_pair.sources, remote, cfg)
    assert ibe.faults.injected["server_error"] > 0
    np.testing.assert_array_equal(got.stamps, ref.stamps)
    for fault in ("server_error", "truncate", "wrong_type"):
        ibe.faults.reset()
        ibe.faults.configure(**{fault: 1.0}, targets=("file",))
        failed = cut_sources(atlas_pair.sources, remote, CFG)  # never raises: flags every row
        assert all(_flags(failed, i) & Q.FETCH_FAILED for i in range(len(failed))), fault


# -- the IBE cutout service ---------------------------------------------------------------------


def test_service_mode_matches_tiles(
    atlas_pair: AtlasPair, local: TileArchive, ibe: IrsaServer
) -> None:
    src = atlas_pair.sources
    ref = cut_sources(src, local, CutoutConfig(use_neighbours=False))
    svc = ServiceConfig(retry=FAST)
    out = cut_sources(
        src, TileArchive.from_spec(ibe.ibe_url), CutoutConfig(method="service", service=svc)
    )
    np.testing.assert_array_equal(out.stamps, ref.stamps)
    np.testing.assert_array_equal(out.flags, ref.flags)
    assert ibe.stats.requests["cutout"] == 3 * len(src) and not ibe.stats.requests["file"]
    ibe.faults.configure(server_error=1.0)
    failed = cut_sources(
        src, TileArchive.from_spec(ibe.ibe_url), CutoutConfig(method="service", service=svc)
    )
    assert all(_flags(failed, i) & Q.FETCH_FAILED for i in range(len(src)))
    with pytest.raises(ValueError, match="HTTP"):
        cut_sources(src, local, CutoutConfig(method="service"))


# -- positions without coadd_id -----------------------------------------------------------------


def test_positions_only_grid_and_sia(
    atlas_pair: AtlasPair, local: TileArchive, ibe: IrsaServer
) -> None:
    src = atlas_pair.sources.copy()
    # without a catalogued tile, the tile holding the source furthest from its edge is taken
    src.loc[src.case == "overlap_mid", "coadd_id"] = B[:8]
    ref = cut_sources(src, local, CFG)
    bare = src[["ra", "dec"]]
    by_grid = cut_sources(bare, local, CFG)
    by_sia = cut_sources(bare, local, CutoutConfig(tile_lookup="sia", sia_url=ibe.sia_url))
    for got in (by_grid, by_sia):
        np.testing.assert_array_equal(got.stamps, ref.stamps)
        np.testing.assert_array_equal(got.flags, ref.flags)
    assert ibe.stats.requests["sia"] == len(src)
    none = cut_sources(bare, local, CutoutConfig(tile_lookup="none"))
    assert all(_flags(none, i) == Q.BAND_MISSING | Q.NAN_PIXELS for i in range(len(src)))
    down = CutoutConfig(tile_lookup="sia", sia_url=ibe.base_url + "/nothing-here")
    failed = cut_sources(bare, local, down)  # the service fails: rows flagged, no exception
    assert all(_flags(failed, i) == Q.FETCH_FAILED | Q.NAN_PIXELS for i in range(len(src)))


def test_empty_or_malformed_coadd_id_means_look_up(
    atlas_pair: AtlasPair, local: TileArchive
) -> None:
    src = atlas_pair.sources.iloc[:4].copy()
    ref = cut_sources(src[["ra", "dec"]], local, CFG)
    src["coadd_id"] = pd.Series([None, np.nan, "", "not-a-tile"], dtype=object)
    out = cut_sources(src, local, CFG)
    np.testing.assert_array_equal(out.stamps, ref.stamps)
    assert list(out.tile) == list(ref.tile) and all(out.tile)


# -- bad input ----------------------------------------------------------------------------------


def test_missing_columns_is_a_clear_error(local: TileArchive) -> None:
    with pytest.raises(ValueError, match=r"needs columns \['dec'\]"):
        cut_sources(pd.DataFrame({"ra": [1.0]}), local)


def test_empty_batch(local: TileArchive) -> None:
    out = cut_sources(pd.DataFrame({"ra": [], "dec": []}), local)
    assert out.stamps.shape == (0, 3, 37, 37) and len(out.flags) == 0


def test_bad_coordinates_are_flagged(atlas_pair: AtlasPair, local: TileArchive) -> None:
    good = atlas_pair.sources.iloc[:1]
    bad = pd.DataFrame(
        {"ra": [np.nan, 400.0, 10.0, "x"], "dec": [0.0, 0.0, -91.0, 1.0], "coadd_id": [A[:8]] * 4}
    )
    df = pd.concat([good, bad, good], ignore_index=True)
    out = cut_sources(df, local, CFG)
    assert len(out) == 6
    for i in range(1, 5):
        assert _flags(out, i) == Q.BAD_COORDINATES | Q.NAN_PIXELS and out.tile[i] == ""
        assert np.isnan(out.stamps[i]).all()
    assert out.flags[0] == out.flags[5] == 0
    np.testing.assert_array_equal(out.stamps[0], out.stamps[5])


def test_missing_tile_is_flagged_and_warned_once(
    atlas_pair: AtlasPair, local: TileArchive, caplog: pytest.LogCaptureFixture
) -> None:
    df = atlas_pair.sources.iloc[:2].copy()
    df = pd.concat(
        [df, pd.DataFrame({"ra": [90.4] * 3, "dec": [-21.3] * 3, "coadd_id": ["0904m213"] * 3})],
        ignore_index=True,
    )
    with caplog.at_level(logging.WARNING, logger="iic_survey.stamps"):
        out = cut_sources(df, local, CFG)
    assert out.flags[0] == out.flags[1] == 0
    for i in (2, 3, 4):
        assert _flags(out, i) == Q.BAND_MISSING | Q.NAN_PIXELS
    assert sum("0904m213_ac51" in r.message for r in caplog.records) <= 1


@pytest.mark.parametrize("damage", ["truncate", "garbage", "no_wcs", "no_magzp", "remove"])
def test_damaged_band_is_flagged(
    atlas_pair: AtlasPair, copied: TileArchive, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    """One band of tile B is damaged: B's rows lose that band (flag), nothing else changes."""
    path = Path(copied.tile_url(B, 2))
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: 2880 * 30])
    elif damage == "garbage":
        path.write_bytes(b"\0garbage" * 1000)
    elif damage == "remove":
        path.unlink()
    else:
        with fits.open(path, mode="update") as hdul:
            for key in ("CTYPE1", "CTYPE2") if damage == "no_wcs" else ("MAGZP",):
                del hdul[0].header[key]
    src = atlas_pair.sources
    ref = cut_sources(src, TileArchive.from_spec(str(atlas_pair.root)), CFG)
    with caplog.at_level(logging.WARNING, logger="iic_survey.stamps"):
        out = cut_sources(src, copied, CFG)
    on_b = np.asarray(ref.tile == B)
    want = Q.BAND_MISSING if damage == "remove" else Q.FETCH_FAILED
    for i in range(len(src)):
        if on_b[i]:
            assert _flags(out, i) == want | Q.NAN_PIXELS
            assert np.isnan(out.stamps[i, 1]).all()
            np.testing.assert_array_equal(out.stamps[i, [0, 2]], ref.stamps[i, [0, 2]])
        else:
            assert out.flags[i] == ref.flags[i]
            np.testing.assert_array_equal(out.stamps[i], ref.stamps[i])
    assert any(B in r.message and "W2" in r.message for r in caplog.records)


def test_damaged_w1_falls_back_to_neighbour_or_flags(
    atlas_pair: AtlasPair, copied: TileArchive
) -> None:
    """B's W1 header is unreadable: its overlap source moves back to A; B-only sources flag."""
    Path(copied.tile_url(B, 1)).write_bytes(b"not fits" * 400)
    src = atlas_pair.sources.set_index("case")
    out = cut_sources(src.loc[["overlap_edge", "interior_b"]].reset_index(), copied, CFG)
    assert out.tile[0] == A and _flags(out, 0) == Q.OFF_EDGE | Q.NAN_PIXELS
    assert out.tile[1] == "" and _flags(out, 1) == Q.FETCH_FAILED | Q.NAN_PIXELS


def test_access_denied_raises(atlas_pair: AtlasPair, ibe: IrsaServer) -> None:
    ibe.faults.configure(deny=True, targets=("file", "cutout"))
    with pytest.raises(ArchiveAccessDenied):
        cut_sources(atlas_pair.sources, TileArchive.from_spec(ibe.ibe_url), CFG)


# -- content flags ------------------------------------------------------------------------------


def test_blank_and_saturated(atlas_pair: AtlasPair, copied: TileArchive) -> None:
    """W3 of tile A zero-filled -> BLANK; a clipped (flat-topped) W1 core -> SATURATED."""
    with fits.open(copied.tile_url(A, 3), mode="update") as hdul:
        hdul[0].data[:] = 0.0
    src = atlas_pair.sources.set_index("case")
    b_row = src.loc["interior_b"]
    with fits.open(copied.tile_url(B, 1), mode="update") as hdul:
        x, y = (
            round(float(v)) for v in WCS(hdul[0].header).world_to_pixel_values(b_row.ra, b_row.dec)
        )
        core = hdul[0].data[y - 3 : y + 4, x - 3 : x + 4]
        np.minimum(core, 300.0, out=core)
    df = src.loc[["interior", "interior_b", "overlap_mid"]].reset_index()
    df["w1mpro"] = [12.0, 12.0, 7.5]
    out = cut_sources(df, copied, CFG)
    assert _flags(out, 0) == Q.BLANK
    assert _flags(out, 1) == Q.SATURATED
    assert _flags(out, 2) == Q.BLANK | Q.SATURATED  # on A too; w1mpro says saturated


# -- the tiny synthetic sky ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def sky_rows(tiny_sky: Any) -> pd.DataFrame:
    parts = sorted(Path(tiny_sky.catalog_url).glob("healpix_k0=*/healpix_k5=*/*.parquet"))
    cols = ["cntr", "ra", "dec", "coadd_id", "wx", "wy", "w1mpro"]
    return pd.concat([pd.read_parquet(p, columns=cols) for p in parts], ignore_index=True)


def test_tiny_sky_every_source(tiny_sky: Any, sky_rows: pd.DataFrame) -> None:
    """All sources cut, none lost; catalog wx, wy agree with astropy's WCS on the same file."""
    out = cut_sources(sky_rows, TileArchive.from_spec(tiny_sky.root))
    assert len(out) == len(sky_rows) == tiny_sky.n_sources
    lost = Q.FETCH_FAILED | Q.BAND_MISSING | Q.BAD_COORDINATES
    assert not np.any(out.flags & int(lost))
    same = out.tile == sky_rows["coadd_id"].map(normalize_coadd_id).to_numpy()
    assert same.mean() > 0.95
    wx, wy = sky_rows["wx"].to_numpy() - 1, sky_rows["wy"].to_numpy() - 1
    np.testing.assert_allclose(out.offset[same, 0], (wx - np.round(wx))[same], atol=1e-3)
    np.testing.assert_allclose(out.offset[same, 1], (wy - np.round(wy))[same], atol=1e-3)
    assert np.any(out.flags & int(Q.SATURATED))  # the sky has flat-topped bright stars


def test_tiny_sky_remote_and_service_agree(
    tiny_sky: Any, sky_rows: pd.DataFrame, irsa: IrsaServer, s3_sky: str, s3_server: str
) -> None:
    rows = sky_rows.sample(60, random_state=1).reset_index(drop=True)
    ref = cut_sources(rows, TileArchive.from_spec(tiny_sky.root), CFG)
    for archive in (
        TileArchive.from_spec(irsa.ibe_url),
        TileArchive.from_spec(f"{s3_sky}/images/p3am_cdd", endpoint_url=s3_server),
    ):
        got = cut_sources(rows, archive, CFG)
        np.testing.assert_array_equal(got.stamps, ref.stamps)
        np.testing.assert_array_equal(got.flags, ref.flags)
    svc = cut_sources(
        rows.head(12),
        TileArchive.from_spec(irsa.ibe_url),
        CutoutConfig(method="service", use_neighbours=False),
    )
    kept = cut_sources(
        rows.head(12), TileArchive.from_spec(tiny_sky.root), CutoutConfig(use_neighbours=False)
    )
    np.testing.assert_array_equal(svc.stamps, kept.stamps)
