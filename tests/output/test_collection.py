"""The catalog as a HATS collection: margin, coverage, adaptive partitions, edges, LSDB."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from unittest import mock

import fsspec
import hats
import healpy as hp
import lsdb
import numpy as np
import pandas as pd
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from hats.io.validation import is_valid_catalog
from upath import UPath

from iic_survey.core import healpix
from iic_survey.output import commit, margin, partitions, reader, schema, staging, strays
from iic_survey.output import finalize as output_finalize
from iic_survey.output.validate import validate_catalog
from iic_survey.testing.catalog import ORDER, catalog_files, fake_results, write_catalog

RADIUS = 6.0  # arcsec: the crossmatch radius, inside the 10" margin
rng = np.random.default_rng(15)


def _offset(ra: np.ndarray, dec: np.ndarray, max_arcsec: float) -> tuple[np.ndarray, np.ndarray]:
    """Each position moved by up to ``max_arcsec`` in a random direction."""
    c = SkyCoord(ra * u.deg, dec * u.deg)
    moved = c.directional_offset_by(
        rng.uniform(0, 360, len(ra)) * u.deg, rng.uniform(0.2, max_arcsec, len(ra)) * u.arcsec
    )
    return moved.ra.deg % 360, moved.dec.deg


def _edge_points(order: int, pixels: list[int], per_edge: int) -> tuple[np.ndarray, np.ndarray]:
    """Points on the edges and at the corners of ``pixels`` (the corners are the first of each)."""
    b = np.concatenate(
        [hp.boundaries(2**order, p, step=per_edge, nest=True) for p in pixels], axis=1
    )
    ra, dec = hp.vec2ang(b.T, lonlat=True)
    return ra % 360, dec


@pytest.fixture(scope="module")
def edge_rows() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Our rows and another catalog's sources, both within arcseconds of order-3 pixel edges."""
    centre = (150.0, 20.0)
    pixels = healpix.cone_pixels(*centre, 4.0, ORDER).tolist()
    ra, dec = _edge_points(ORDER, pixels, per_edge=12)
    ours, _ = fake_results(len(ra), seed=3, centre=centre, radius_deg=10)
    ours["ra"], ours["dec"] = _offset(ra, dec, 4.0)
    # rows everywhere around: LSDB's inner crossmatch looks only where both catalogs have a
    # partition, so a source in sky our catalog does not cover would go unmatched, margin or not
    bulk, _ = fake_results(3000, seed=4, centre=centre, radius_deg=25)
    # rows 9.1-9.9" from an edge point (so some lie 9-10" from the far pixel): a margin that
    # shrank from 10" to 9" loses them (issue 15 found that shrink uncaught without them)
    band, _ = fake_results(len(ra), seed=5, centre=centre, radius_deg=10)
    far = SkyCoord(ra * u.deg, dec * u.deg).directional_offset_by(
        np.random.default_rng(26).uniform(0, 360, len(ra)) * u.deg,
        np.random.default_rng(27).uniform(9.1, 9.9, len(ra)) * u.arcsec,
    )
    band["ra"], band["dec"] = far.ra.deg % 360, far.dec.deg
    ours = pd.concat([ours, bulk, band], ignore_index=True)
    ours = ours.drop_duplicates("cntr", ignore_index=True)
    ora, odec = _offset(np.concatenate([ra, ra]), np.concatenate([dec, dec]), 5.0)
    other = pd.DataFrame({"id": np.arange(len(ora)), "ra": ora, "dec": odec})
    return ours, other


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory, edge_rows) -> str:
    out = str(tmp_path_factory.mktemp("coll") / "catalog")
    write_catalog(out, edge_rows[0])
    assert margin.build_margin(out, 10.0) > 0
    return out


def _pairs(left: pd.DataFrame, right: pd.DataFrame, radius: float) -> set[tuple[int, int]]:
    lc = SkyCoord(left["ra"].to_numpy() * u.deg, left["dec"].to_numpy() * u.deg)
    rc = SkyCoord(right["ra"].to_numpy() * u.deg, right["dec"].to_numpy() * u.deg)
    i, j, _, _ = rc.search_around_sky(lc, radius * u.arcsec)
    return set(zip(left["id"].to_numpy()[i].tolist(), right["cntr"].to_numpy()[j].tolist(),
                   strict=True))  # fmt: skip


@pytest.mark.slow
def test_crossmatch_finds_every_pair_a_brute_force_match_finds(collection: str, edge_rows) -> None:
    ours, other_df = edge_rows
    ours_cat = lsdb.open_catalog(collection, columns=["cntr", "ra", "dec", "class"])
    assert ours_cat.margin is not None
    assert ours_cat.margin.hc_structure.catalog_info.margin_threshold == 10.0
    other = lsdb.from_dataframe(other_df, catalog_name="other", lowest_order=2, highest_order=4,
                                partition_rows=150)  # fmt: skip
    assert len(other.get_healpix_pixels()) > 4  # several partitions on the other side too
    expected = _pairs(other_df, ours, RADIUS)
    shift = 2 * (29 - ORDER)
    h29 = healpix.healpix_29(ours["ra"].to_numpy(), ours["dec"].to_numpy())
    opix = healpix.pixel_of(other_df["ra"].to_numpy(), other_df["dec"].to_numpy(), ORDER)
    owner = dict(zip(ours["cntr"], h29 >> shift, strict=True))
    assert set(opix.tolist()) <= set(owner.values())  # we cover every other source's pixel
    across = {(i, c) for i, c in expected if owner[c] != opix[i]}
    assert len(across) > 50  # many pairs straddle a partition edge or a corner

    got = other.crossmatch(ours_cat, radius_arcsec=RADIUS, n_neighbors=50,
                           require_right_margin=True).compute()  # fmt: skip
    found = set(zip(got["id_other"].tolist(), got["cntr_iic_allwise"].tolist(), strict=True))
    assert found == expected
    # without the margin, the pairs across edges are lost: the test can fail
    bare = lsdb.open_catalog(f"{collection}/{schema.MAIN}", columns=["cntr", "ra", "dec"])
    lost = other.crossmatch(bare, radius_arcsec=RADIUS, n_neighbors=50).compute()
    assert len(lost) < len(expected)


def test_collection_main_and_margin_are_strictly_valid(collection: str, edge_rows) -> None:
    assert is_valid_catalog(collection, strict=True)
    assert is_valid_catalog(f"{collection}/{schema.MAIN}", strict=True)
    name = schema.margin_name(10.0)
    assert is_valid_catalog(f"{collection}/{name}", strict=True)
    coll = hats.read_hats(collection)
    assert coll.collection_properties.default_margin == name
    info = hats.read_hats(f"{collection}/{name}").catalog_info
    assert info.catalog_type == "margin" and info.margin_threshold == 10.0
    assert info.primary_catalog == schema.MAIN
    main = hats.read_hats(f"{collection}/{schema.MAIN}")
    assert main.catalog_info.total_rows == len(edge_rows[0])
    for key in ("hats_cols_default", "hats_skymap_order", "hats_estsize", "bib_reference",
                "prov_progenitor", "creator_did", "hats_cols_sort", "iic_run_args"):  # fmt: skip
        assert key in (Path(collection) / schema.MAIN / "hats.properties").read_text(), key
    assert main.moc is not None and 0 < main.catalog_info.moc_sky_fraction < 0.05
    assert validate_catalog(collection) == []


def test_margin_holds_exactly_the_rows_near_each_partition(collection: str, edge_rows) -> None:
    """Against an independent astropy distance to a finely sampled pixel boundary."""
    ours = edge_rows[0]
    shift = 2 * (29 - ORDER)
    h29 = healpix.healpix_29(ours["ra"].to_numpy(), ours["dec"].to_numpy())
    coords = SkyCoord(ours["ra"].to_numpy() * u.deg, ours["dec"].to_numpy() * u.deg)
    name = schema.margin_name(10.0)
    in_band = 0  # rows 9-10" from a pixel they are not in: a 9" margin would lose them
    for pixel in np.unique(h29 >> shift).tolist():
        ra, dec = _edge_points(ORDER, [pixel], per_edge=3000)
        edge = SkyCoord(ra * u.deg, dec * u.deg)
        outside = np.flatnonzero((h29 >> shift) != pixel)
        _, sep, _ = coords[outside].match_to_catalog_sky(edge)
        want = set(ours["cntr"].to_numpy()[outside[sep.arcsec <= 10.0]].tolist())
        in_band += int(((sep.arcsec > 9.05) & (sep.arcsec <= 9.95)).sum())
        f = Path(collection) / name / "dataset" / healpix.hats_path(ORDER, pixel)
        got = set(pd.read_parquet(f)["cntr"].tolist()) if f.exists() else set()
        assert got == want, pixel
    assert in_band >= 10, in_band


def test_margin_build_resumes_after_a_crash(tmp_path: Path, edge_rows) -> None:
    clean, crashed = str(tmp_path / "clean"), str(tmp_path / "crashed")
    for out in (clean, crashed):
        write_catalog(out, edge_rows[0])
    margin.build_margin(clean, 10.0)
    calls = []

    def dies_midway(fn, args):
        for a in args:
            if len(calls) == len(args) // 2:
                raise RuntimeError("simulated crash during the margin")
            calls.append(fn(*a))
        return calls

    with pytest.raises(RuntimeError, match="simulated crash"):
        margin.build_margin(crashed, 10.0, map_fn=dies_midway)
    assert not (Path(crashed) / schema.margin_name(10.0) / "hats.properties").exists()
    margin.build_margin(crashed, 10.0)
    assert catalog_files(crashed) == catalog_files(clean)


def test_cone_search_opens_only_partitions_the_coverage_map_keeps(tmp_path, monkeypatch) -> None:
    """Rows fill only the east half of one pixel: a cone in its empty west half opens nothing."""
    pixel = int(healpix.pixel_of(np.array([150.0]), np.array([20.0]), ORDER)[0])
    ra, dec = hp.pix2ang(2**9, healpix.children(pixel, ORDER, 9), nest=True, lonlat=True)
    east = ra > np.median(ra)
    rows, _ = fake_results(int(east.sum()), seed=5)
    rows["ra"], rows["dec"] = ra[east], dec[east]
    out = str(tmp_path / "c")
    write_catalog(out, rows)
    west = np.flatnonzero(~east)[len(np.flatnonzero(~east)) // 2]
    hit = np.flatnonzero(east)[0]
    fs = fsspec.filesystem("file")
    url = UPath(f"file://{out}")  # a file:// UPath reads through ``fs``, which the spy watches
    opened = []
    with mock.patch.object(fs, "open", wraps=fs.open) as spy:
        assert len(reader.read(url, cone=(ra[west], dec[west], 0.02))) == 0
        opened.append([c.args[0] for c in spy.call_args_list if "Npix=" in str(c.args[0])])
        spy.reset_mock()
        assert len(reader.read(url, cone=(ra[hit], dec[hit], 0.02))) >= 1
        opened.append([c.args[0] for c in spy.call_args_list if "Npix=" in str(c.args[0])])
    assert opened[0] == [] and len(opened[1]) == 1
    # LSDB 0.11 keeps every partition a cone overlaps (its MOC is intersected, not used to drop
    # partitions), but the catalog's MOC from point_map.fits says the west cone is empty
    cat = lsdb.open_catalog(out)
    assert cat.hc_structure.moc is not None
    west_cone = cat.cone_search(ra[west], dec[west], 0.02 * 3600)
    assert west_cone.hc_structure.moc.empty and len(west_cone.compute()) == 0


@pytest.mark.parametrize("crash_in_merge", [False, True])
def test_rows_across_an_edge_go_where_their_position_says(
    tmp_path: Path, monkeypatch, crash_in_merge: bool
) -> None:
    """The stray rule: staged in P, positioned in Q (planned or not) -> in Q's partition, once.

    With ``crash_in_merge`` the first finalize dies after rewriting Q's file, before Q's marker:
    the next finalize merges again and still keeps each row once."""
    rows, _ = fake_results(600, seed=6, centre=(150.0, 20.0), radius_deg=5)
    pix = healpix.pixel_of(rows["ra"].to_numpy(), rows["dec"].to_numpy(), ORDER)
    p = int(np.bincount(pix).argmax())
    rows = rows[pix == p].reset_index(drop=True)
    ring = hp.get_all_neighbours(2**ORDER, p, nest=True)
    q_planned = int(ring[0])  # a neighbour with its own rows
    q_empty = int(ring[4])  # a neighbour no run classifies
    extra, _ = fake_results(40, seed=7)
    qra, qdec = hp.pix2ang(2**ORDER, q_planned, nest=True, lonlat=True)
    extra["ra"], extra["dec"] = _offset(np.full(40, qra), np.full(40, qdec), 3000)
    extra = extra[
        healpix.pixel_of(extra["ra"].to_numpy(), extra["dec"].to_numpy(), ORDER) == q_planned
    ]
    # two rows of P sit exactly on P's corners with the neighbours, on the far side
    for i, q in ((0, q_planned), (1, q_empty)):
        vra, vdec = _edge_points(ORDER, [q], per_edge=40)
        on_p = healpix.pixel_of(vra, vdec, ORDER) == q
        near = np.argmin(
            np.abs(vra[on_p] - rows.loc[i, "ra"]) + np.abs(vdec[on_p] - rows.loc[i, "dec"])
        )
        rows.loc[i, ["ra", "dec"]] = vra[on_p][near], vdec[on_p][near]
    out = str(tmp_path / "c")
    staging.prepare_output(out, {"healpix_order": ORDER})
    staging.write_plan(out, ORDER, {p: len(rows), q_planned: len(extra)})
    staging.write_part(out, ORDER, p, "a", rows)
    staging.write_part(out, ORDER, q_planned, "b", extra)
    commit.commit_pixel(out, ORDER, p, len(rows))
    commit.commit_pixel(out, ORDER, q_planned, len(extra))
    if crash_in_merge:
        real = strays.write_atomic

        def dies(path, data):
            if "/_done/" in path.path:
                raise OSError("simulated crash in the merge")
            real(path, data)

        monkeypatch.setattr(strays, "write_atomic", dies)
        with pytest.raises(OSError, match="crash in the merge"):
            output_finalize.finalize(out)
        monkeypatch.setattr(strays, "write_atomic", real)
    output_finalize.finalize(out)
    output_finalize.finalize(out)  # again: the merge is done once
    assert validate_catalog(out) == []
    assert is_valid_catalog(f"{out}/{schema.MAIN}", strict=True)
    back = pd.read_parquet(f"{out}/{schema.MAIN}/dataset")
    assert len(back) == len(rows) + len(extra) and back["cntr"].is_unique
    h29 = healpix.healpix_29(back["ra"].to_numpy(), back["dec"].to_numpy())
    assert (back["_healpix_29"].to_numpy() == h29).all()
    where = dict(
        zip(back["cntr"], back["_healpix_29"].to_numpy() >> (2 * (29 - ORDER)), strict=True)
    )
    parts = {px.pixel for px in hats.read_hats(f"{out}/{schema.MAIN}").get_healpix_pixels()}
    assert parts == {p, q_planned, q_empty}
    assert where[rows.loc[0, "cntr"]] == q_planned and where[rows.loc[1, "cntr"]] == q_empty


def test_dense_pixels_are_split_and_a_crash_mid_split_resumes(tmp_path: Path, monkeypatch) -> None:
    rows, _ = fake_results(4000, seed=8, centre=(150.0, 20.0), radius_deg=6)
    args = {"max_rows_per_partition": 300}
    clean = str(tmp_path / "clean")
    counts = write_catalog(clean, rows, run_args=args)
    cat = hats.read_hats(f"{clean}/{schema.MAIN}")
    got = {(px.order, px.pixel) for px in cat.get_healpix_pixels()}
    assert {(ORDER, p) for p, n in counts.items() if n <= 300} <= got  # small pixels stay whole
    assert not {(ORDER, p) for p, n in counts.items() if n > 300} & got  # dense ones are split
    orders = {k for k, _ in got}
    assert max(orders) > ORDER and cat.catalog_info.hats_max_rows <= 300
    assert cat.catalog_info.total_rows == len(rows)
    assert is_valid_catalog(clean, strict=True) and validate_catalog(clean) == []
    back = pd.read_parquet(f"{clean}/{schema.MAIN}/dataset")
    assert sorted(back["cntr"]) == sorted(rows["cntr"])
    # the same rows with a crash after the second partition file of the densest pixel
    crashed = str(tmp_path / "crashed")
    dense = max(counts, key=counts.get)
    real, written = commit.write_atomic, []

    def dies(path, data):
        if f"/{schema.MAIN}/dataset/" in path.path and len(written) == 2:
            raise OSError("simulated crash mid-split")
        written.append(path)
        real(path, data)

    monkeypatch.setattr(commit, "write_atomic", dies)
    with pytest.raises(OSError, match="mid-split"):
        write_catalog(crashed, rows.assign(_p=healpix.pixel_of(rows["ra"], rows["dec"], ORDER))
                      .sort_values("_p", key=lambda s: s != dense).drop(columns="_p"),
                      run_args=args)  # fmt: skip
    monkeypatch.setattr(commit, "write_atomic", real)
    assert not commit.is_finished(crashed, ORDER, dense)
    assert len(list((Path(crashed) / schema.MAIN / "dataset").rglob("Npix=*.parquet"))) == 2
    assert any("without marker" in p for p in validate_catalog(crashed))
    write_catalog(crashed, rows, run_args=args)  # the rerun: stages and commits again
    assert catalog_files(crashed).keys() == catalog_files(clean).keys()
    assert catalog_files(crashed) == catalog_files(clean)
    assert (
        json.loads((Path(clean) / "_run.json").read_text())["args"]["max_rows_per_partition"] == 300
    )


def test_split_is_contiguous_and_bounded() -> None:
    h29 = np.sort(rng.integers(5 << 52, 6 << 52, 10_000))
    parts = partitions.split(h29, 3, 5, 1000)
    assert parts[0][2] == 0 and parts[-1][3] == len(h29)
    assert all(a[3] == b[2] for a, b in itertools.pairwise(parts))
    assert all(hi - lo <= 1000 for _, _, lo, hi in parts)
    for k, p, lo, hi in parts:
        assert np.all(h29[lo:hi] >> (2 * (29 - k)) == p)
    deep = partitions.split(np.full(50, 5 << 52), 3, 5, 10)  # one position: stops at order 9
    assert deep == [(9, 5 << 12, 0, 50)]
    with pytest.raises(ValueError, match=">= 1"):
        partitions.split(h29, 3, 5, 0)
