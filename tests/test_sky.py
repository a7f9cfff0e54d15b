"""HEALPix helpers, checked against healpy and astropy computed independently."""

from __future__ import annotations

import healpy as hp
import numpy as np
import pytest
from astropy.coordinates import SkyCoord

from iic_survey.core import sky

RNG = np.random.default_rng(7)
RA = RNG.uniform(0, 360, 500)
DEC = np.degrees(np.arcsin(RNG.uniform(-1, 1, 500)))


@pytest.mark.parametrize("order", [0, 3, 5, 8, 12, 29])
def test_pixel_of_matches_healpy(order):
    expected = hp.ang2pix(2**order, RA, DEC, nest=True, lonlat=True)
    np.testing.assert_array_equal(sky.pixel_of(RA, DEC, order), expected)


def test_healpix_29_is_int64_and_refines_order_5():
    h29 = sky.healpix_29(RA, DEC)
    assert h29.dtype == np.int64
    np.testing.assert_array_equal(h29 >> (2 * 24), sky.pixel_of(RA, DEC, 5))


def test_parent_and_children_are_inverse():
    p5 = sky.pixel_of(RA, DEC, 5)
    p7 = sky.pixel_of(RA, DEC, 7)
    np.testing.assert_array_equal(sky.parent(p7, 7, 5), p5)
    for pix in p5[:20]:
        kids = sky.children(int(pix), 5, 7)
        assert len(kids) == 16
        np.testing.assert_array_equal(sky.parent(kids, 7, 5), np.full(16, pix))


def test_to_order_round_trip():
    pix = np.array([5, 100, 12287])
    deeper = sky.to_order(pix, 5, 6)
    assert len(deeper) == 12
    np.testing.assert_array_equal(sky.to_order(deeper, 6, 5), pix)


def test_cone_pixels_cover_every_point_in_the_cone():
    ra0, dec0, radius = 150.0, 2.0, 1.5
    center = SkyCoord(ra0, dec0, unit="deg")
    inside = center.separation(SkyCoord(RA, DEC, unit="deg")).deg < radius
    extra_ra = ra0 + RNG.uniform(-1, 1, 400)
    extra_dec = dec0 + RNG.uniform(-1, 1, 400)
    sel = center.separation(SkyCoord(extra_ra, extra_dec, unit="deg")).deg < radius
    pts_ra = np.concatenate([RA[inside], extra_ra[sel]])
    pts_dec = np.concatenate([DEC[inside], extra_dec[sel]])
    cover = set(sky.cone_pixels(ra0, dec0, radius, 6).tolist())
    assert set(sky.pixel_of(pts_ra, pts_dec, 6).tolist()) <= cover


def test_hats_path_uses_directory_blocks_of_ten_thousand():
    assert sky.hats_path(6, 12345) == "Norder=6/Dir=10000/Npix=12345.parquet"
    assert sky.hats_path(0, 3) == "Norder=0/Dir=0/Npix=3.parquet"


@pytest.mark.parametrize("order", [-1, 30, 2.5, True, "5"])
def test_bad_orders_are_refused(order):
    with pytest.raises(ValueError, match="order"):
        sky.check_order(order)


def test_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match="NaN or out of range"):
        sky.pixel_of([np.nan], [0.0], 5)
    with pytest.raises(ValueError, match="out of range"):
        sky.pixel_of([10.0], [95.0], 5)
    with pytest.raises(ValueError, match="pixel index out of range"):
        sky.hats_path(0, 12)
    with pytest.raises(ValueError, match="deeper"):
        sky.parent(1, 3, 5)
