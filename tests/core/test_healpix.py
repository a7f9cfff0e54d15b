"""HEALPix helpers (iic_survey.core.healpix), checked by routes that do not go through healpy.

``healpix.pixel_of`` calls healpy, so agreeing with healpy alone would prove little: it is also
checked against cdshealpix (CDS's independent Rust implementation, a dependency of hats) and
against pixel indices worked out by hand from the nested scheme's definition.
"""

from __future__ import annotations

import healpy as hp
import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import Latitude, Longitude, SkyCoord
from cdshealpix import nested as cds

from iic_survey.core import healpix

RNG = np.random.default_rng(7)
RA = RNG.uniform(0, 360, 500)
DEC = np.degrees(np.arcsin(RNG.uniform(-1, 1, 500)))


@pytest.mark.parametrize("order", [0, 3, 5, 8, 12, 29])
def test_pixel_of_matches_healpy(order):
    expected = hp.ang2pix(2**order, RA, DEC, nest=True, lonlat=True)
    np.testing.assert_array_equal(healpix.pixel_of(RA, DEC, order), expected)


@pytest.mark.parametrize("order", [0, 1, 5, 9, 12, 29])
def test_pixel_of_matches_cdshealpix(order):
    expected = cds.lonlat_to_healpix(Longitude(RA, u.deg), Latitude(DEC, u.deg), order)
    np.testing.assert_array_equal(healpix.pixel_of(RA, DEC, order), expected.astype(np.int64))


# Order 0: the twelve base pixels' centres. North cap 0-3 at lat asin(2/3) = 41.81 deg, centred
# on lon 45, 135, 225, 315; equator 4-7 on lon 0, 90, 180, 270; south cap 8-11 like the north.
BASE_CENTRES = [(45.0 + 90 * i, 41.81) for i in range(4)]
BASE_CENTRES += [(90.0 * i, 0.0) for i in range(4)]
BASE_CENTRES += [(45.0 + 90 * i, -41.81) for i in range(4)]

# Order 5 (nside 32), nested: pixel = base * 32**2 + interleave(x, y), x in the even bits. So
# the sub-pixel in a base pixel's south corner is base * 1024 + 0, the north corner's is
# base * 1024 + 1023, the east corner's (x = 31, y = 0) + 0b0101010101 = 341, the west's + 682.
ORDER5_CORNERS = [
    ((0.0, -41.0), 4 * 1024),  # base 4 (lon 0), just above its south corner (0, -41.81)
    ((0.0, 41.0), 4 * 1024 + 1023),  # base 4, just below its north corner
    ((180.0, -41.0), 6 * 1024),  # base 6 (lon 180), south corner
    ((180.0, 41.0), 6 * 1024 + 1023),  # base 6, north corner
    ((44.5, 0.0), 4 * 1024 + 341),  # base 4, east corner (45, 0)
    ((315.5, 0.0), 4 * 1024 + 682),  # base 4, west corner (-45, 0)
    ((45.0, 89.5), 0 * 1024 + 1023),  # base 0: its north corner is the pole
    ((45.0, 0.5), 0),  # base 0, south corner (45, 0)
    ((135.0, -89.5), 9 * 1024),  # base 9: its south corner is the south pole
    ((225.0, -0.5), 10 * 1024 + 1023),  # base 10, north corner (225, 0)
]


def test_pixel_of_hand_computed_nested_indices():
    ra, dec = np.array(BASE_CENTRES).T
    assert healpix.pixel_of(ra, dec, 0).tolist() == list(range(12))
    (ra, dec), want = np.array([p for p, _ in ORDER5_CORNERS]).T, [w for _, w in ORDER5_CORNERS]
    assert healpix.pixel_of(ra, dec, 5).tolist() == want
    # order 29 refines them: the top 10 bits below the base pixel are the order-5 index
    assert (healpix.pixel_of(ra, dec, 29) >> (2 * 24)).tolist() == want
    assert healpix.npix(5) == 12 * 1024 and healpix.nside(5) == 32


def test_healpix_29_is_int64_and_refines_order_5():
    h29 = healpix.healpix_29(RA, DEC)
    assert h29.dtype == np.int64
    np.testing.assert_array_equal(h29 >> (2 * 24), healpix.pixel_of(RA, DEC, 5))


def test_parent_and_children_are_inverse():
    p5 = healpix.pixel_of(RA, DEC, 5)
    p7 = healpix.pixel_of(RA, DEC, 7)
    np.testing.assert_array_equal(healpix.parent(p7, 7, 5), p5)
    for pix in p5[:20]:
        kids = healpix.children(int(pix), 5, 7)
        assert len(kids) == 16
        np.testing.assert_array_equal(healpix.parent(kids, 7, 5), np.full(16, pix))


def test_to_order_round_trip():
    pix = np.array([5, 100, 12287])
    deeper = healpix.to_order(pix, 5, 6)
    assert len(deeper) == 12
    np.testing.assert_array_equal(healpix.to_order(deeper, 6, 5), pix)


def test_cone_pixels_cover_every_point_in_the_cone():
    ra0, dec0, radius = 150.0, 2.0, 1.5
    center = SkyCoord(ra0, dec0, unit="deg")
    inside = center.separation(SkyCoord(RA, DEC, unit="deg")).deg < radius
    extra_ra = ra0 + RNG.uniform(-1, 1, 400)
    extra_dec = dec0 + RNG.uniform(-1, 1, 400)
    sel = center.separation(SkyCoord(extra_ra, extra_dec, unit="deg")).deg < radius
    pts_ra = np.concatenate([RA[inside], extra_ra[sel]])
    pts_dec = np.concatenate([DEC[inside], extra_dec[sel]])
    cover = set(healpix.cone_pixels(ra0, dec0, radius, 6).tolist())
    assert set(healpix.pixel_of(pts_ra, pts_dec, 6).tolist()) <= cover


def test_hats_path_uses_directory_blocks_of_ten_thousand():
    assert healpix.hats_path(6, 12345) == "Norder=6/Dir=10000/Npix=12345.parquet"
    assert healpix.hats_path(0, 3) == "Norder=0/Dir=0/Npix=3.parquet"


@pytest.mark.parametrize("order", [-1, 30, 2.5, True, "5"])
def test_bad_orders_are_refused(order):
    with pytest.raises(ValueError, match="order"):
        healpix.check_order(order)


def test_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match="NaN or out of range"):
        healpix.pixel_of([np.nan], [0.0], 5)
    with pytest.raises(ValueError, match="out of range"):
        healpix.pixel_of([10.0], [95.0], 5)
    with pytest.raises(ValueError, match="pixel index out of range"):
        healpix.hats_path(0, 12)
    with pytest.raises(ValueError, match="deeper"):
        healpix.parent(1, 3, 5)
