"""iic_survey.inputs.tiles: the computed Atlas grid against the real tile list, WCS vs astropy."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from iic_survey.inputs import tile_header, tiles


@pytest.fixture(scope="module")
def reference(shared_data):
    """The real 18,240 tile centres (legacypipe's copy of the Atlas metadata)."""
    t = Table.read(shared_data / "wise-tiles.fits")
    return {
        "coadd_id": np.array(t["coadd_id"]).astype(str),
        "ra": np.array(t["ra"], dtype=float),
        "dec": np.array(t["dec"], dtype=float),
    }


def test_grid_reproduces_every_real_tile(reference):
    grid = tiles.tile_grid().set_index("coadd_id")
    assert len(grid) == 18_240 and grid.index.is_unique
    found = grid.reindex(reference["coadd_id"])
    matched = (
        np.isfinite(found["ra"].to_numpy())
        & (np.abs(found["ra"].to_numpy() - reference["ra"]) < 1e-4)
        & (np.abs(found["dec"].to_numpy() - reference["dec"]) < 1e-4)
    )
    rate = matched.mean()
    misses = reference["coadd_id"][~matched][:5]
    assert rate == 1.0, f"match rate {rate:.5f}; first misses: {misses}"
    # Closer than the 6-decimal rounding of the published centres.
    assert np.abs(found["ra"].to_numpy() - reference["ra"]).max() <= 1.01e-6
    assert np.abs(found["dec"].to_numpy() - reference["dec"]).max() <= 1.01e-6


def test_grid_structure():
    grid = tiles.tile_grid()
    rings = grid.groupby("dec").size()
    assert len(rings) == 119
    assert rings.loc[0.0] == 238 and rings.iloc[0] == 6 and rings.iloc[-1] == 6
    # Rings 5452" apart, mirror-symmetric about the equator.
    assert np.allclose(np.diff(rings.index.to_numpy()), 5452 / 3600, atol=2e-6)
    assert (rings.to_numpy() == rings.to_numpy()[::-1]).all()


def test_coadd_id_rule():
    # Explanatory Supplement example: RA and positive Dec truncated, negative Dec rounded away.
    assert tiles.coadd_id_of(304.13896, -13.63) == "3041m137"
    assert tiles.coadd_id_of(4.4999997, 48.462222) == "0044p484"
    assert tiles.coadd_id_of(0.0, 0.0) == "0000p000"
    assert tiles.atlas_id("0904m213") == "0904m213_ac51"
    assert tiles.atlas_id("0904m213_ac51") == "0904m213_ac51"
    with pytest.raises(ValueError, match="unknown Atlas tile"):
        tiles.atlas_id("0905m213")


def test_projection_matches_astropy():
    rng = np.random.default_rng(3)
    grid = tiles.tile_grid().sample(40, random_state=1)
    for cid, ra0, dec0 in zip(grid["coadd_id"], grid["ra"], grid["dec"], strict=True):
        wcs = tile_header.tile_wcs(cid)
        px = rng.uniform(1, 4095, (50, 2))
        ra, dec = wcs.pixel_to_world_values(px[:, 0] - 1, px[:, 1] - 1)
        x, y, front = tiles.world_to_tile_pixel(ra, dec, ra0, dec0)
        assert front.all()
        assert np.abs(x - px[:, 0]).max() < 1e-6 and np.abs(y - px[:, 1]).max() < 1e-6


def test_tiles_containing_agrees_with_a_brute_force_search(reference):
    rng = np.random.default_rng(5)
    n = 300
    ra = rng.uniform(0, 360, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    ra = np.concatenate([ra, [0.01, 359.99, 45.0, 200.0]])
    dec = np.concatenate([dec, [0.5, -0.7, 89.9, -89.99]])
    cand = tiles.tile_candidates(ra, dec)
    for i in range(ra.size):
        # Brute force: every real tile whose own astropy WCS puts the position on its pixels.
        near = np.degrees(
            np.arccos(
                np.clip(
                    np.sin(np.radians(dec[i])) * np.sin(np.radians(reference["dec"]))
                    + np.cos(np.radians(dec[i]))
                    * np.cos(np.radians(reference["dec"]))
                    * np.cos(np.radians(ra[i] - reference["ra"])),
                    -1,
                    1,
                )
            )
        )
        expected = set()
        for j in np.nonzero(near < 1.2)[0]:
            wcs = tile_header.tile_wcs(reference["coadd_id"][j])
            x, y = wcs.world_to_pixel_values(ra[i], dec[i])
            if max(abs(x + 1 - 2048), abs(y + 1 - 2048)) <= 2047.5:
                expected.add(reference["coadd_id"][j])
        got = cand[cand["source"] == i]
        assert set(got["coadd_id"]) == expected, (ra[i], dec[i])
        assert got["distance_px"].is_monotonic_decreasing
        assert len(expected) >= 1  # the grid covers the whole sky


def test_tiles_containing_scalar_and_best_tiles():
    found = tiles.tiles_containing(0.0, 0.0)
    assert found[0][0] == "0000p000_ac51" and found[0][1] == pytest.approx(2047.5)
    assert all(cid.endswith("_ac51") for cid, _ in found)
    best = tiles.best_tiles(np.array([0.0, 0.76]), np.array([0.0, 0.0]))
    assert list(best.index) == [0, 1]
    assert best["distance_px"].min() > 0
    with pytest.raises(ValueError):
        tiles.tile_candidates(np.array([np.nan]), np.array([0.0]))


def test_wcs_and_header_of_a_crop():
    cid = "0904m213_ac51"
    crop = tile_header.Crop(100, 200, 300, 250)
    hdr = tile_header.tile_header(cid, 2, crop)
    assert hdr["BUNIT"] == "DN" and hdr["MAGZP"] == 19.5 and hdr["MAGZPUNC"] > 0
    assert hdr["BAND"] == 2 and hdr["COADDID"] == cid
    assert (hdr["CTYPE1"], hdr["CTYPE2"]) == ("RA---SIN", "DEC--SIN")
    assert hdr["CDELT1"] == -0.000381944 and hdr["CDELT2"] == 0.000381944
    assert (hdr["NAXIS1"], hdr["NAXIS2"]) == (300, 250)
    assert (hdr["CRPIX1"], hdr["CRPIX2"]) == (1948.0, 1848.0)
    assert (hdr["CRVAL1"], hdr["CRVAL2"]) == tiles.tile_center(cid)
    full = tile_header.tile_wcs(cid)
    assert tuple(full.wcs.crpix) == (2048.0, 2048.0)
    # A position lands on the same full-tile pixel through the crop's header.
    cropped = WCS(fits.Header(hdr))
    ra, dec = full.pixel_to_world_values(150.0, 300.0)
    x, y = cropped.world_to_pixel_values(ra, dec)
    assert x + crop.x0 == pytest.approx(150.0, abs=1e-6)
    assert y + crop.y0 == pytest.approx(300.0, abs=1e-6)
    assert tile_header.tile_wcs(cid, crop=crop).wcs.crpix[0] == 1948.0
    for band, zp in ((1, 20.5), (3, 18.0), (4, 13.0)):
        assert tile_header.tile_header(cid, band)["MAGZP"] == zp


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"band": 5}, "unknown WISE band"),
        ({"band": 1, "crop": tile_header.Crop(4000, 0, 200, 10)}, "reaches past"),
        ({"band": 1, "crop": tile_header.Crop(-1, 0, 20, 10)}, "x0, y0 >= 0"),
    ],
)
def test_bad_header_requests(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tile_header.tile_header("0000p000", **kwargs)
