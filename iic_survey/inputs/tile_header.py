"""What an Atlas tile's FITS header says: its WCS, zero points and identity, computed from its id.

Built on the tile grid of :mod:`iic_survey.inputs.tiles`: :func:`tile_wcs` gives a tile's
celestial WCS (SIN, north up, 1.375"/px), optionally moved to a :class:`Crop` of the tile, and
:func:`tile_header` a realistic AllWISE "int-3" intensity header for one tile and band (WCS,
``MAGZP``/``MAGZPUNC`` from :data:`MAGZP`, band, wavelength, ``COADDID``, the centre in
ecliptic and Galactic coordinates). The synthetic sky writes its tiles with these headers, so
the pipeline reads them exactly as it reads IRSA's.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

from astropy.io import fits
from astropy.wcs import WCS

from iic_survey.inputs.tiles import CDELT_DEG, CRPIX_FULL, TILE_NPIX, atlas_id, tile_center

MAGZP: dict[int, float] = {1: 20.5, 2: 19.5, 3: 18.0, 4: 13.0}
"""Photometric zero points (m_Vega = MAGZP - 2.5 log10(DN)) of the AllWISE Atlas images."""
MAGZPUNC: dict[int, float] = {1: 0.006, 2: 0.007, 3: 0.012, 4: 0.012}
"""Zero point uncertainties (mag), as in the Atlas headers."""
WAVELENGTH_UM: dict[int, float] = {1: 3.368, 2: 4.618, 3: 12.082, 4: 22.194}
"""Isophotal wavelengths of the WISE bands."""


class Crop(NamedTuple):
    """A rectangular part of a tile: 0-based offsets of its first pixel and its size.

    The crop holds full-tile pixels ``x0 + 1 .. x0 + nx`` and ``y0 + 1 .. y0 + ny`` (1-based),
    so a position at full-tile pixel ``x`` is at ``x - x0`` on the cropped image.
    """

    x0: int
    y0: int
    nx: int
    ny: int


def tile_wcs(
    coadd_id: str, shape: tuple[int, int] = (TILE_NPIX, TILE_NPIX), crop: Crop | None = None
) -> WCS:
    """The celestial WCS of a tile image, as the Atlas headers define it.

    Parameters
    ----------
    coadd_id
        Tile id, with or without ``_ac51``.
    shape
        (ny, nx) of an image centred on the tile centre (reference pixel 0.5 * (n + 1)); the
        default is the full tile. Ignored when ``crop`` is given.
    crop
        A part of the full tile: the reference pixel moves to ``2048 - x0, 2048 - y0``.
    """
    return WCS(_wcs_cards(coadd_id, shape, crop))


def _wcs_cards(coadd_id: str, shape: tuple[int, int], crop: Crop | None) -> fits.Header:
    ra0, dec0 = tile_center(coadd_id)
    if crop is not None:
        crop = check_crop(crop)
        nx, ny = crop.nx, crop.ny
        crpix1, crpix2 = CRPIX_FULL - crop.x0, CRPIX_FULL - crop.y0
    else:
        ny, nx = (int(shape[0]), int(shape[1]))
        if nx < 1 or ny < 1:
            raise ValueError(f"image shape must be positive, got {shape}")
        crpix1, crpix2 = 0.5 * (nx + 1), 0.5 * (ny + 1)
    hdr = fits.Header()
    hdr["NAXIS"] = 2
    hdr["NAXIS1"] = nx
    hdr["NAXIS2"] = ny
    hdr["CTYPE1"] = ("RA---SIN", "Projection type for axis 1")
    hdr["CTYPE2"] = ("DEC--SIN", "Projection type for axis 2")
    hdr["CRVAL1"] = (ra0, "[deg] RA at CRPIX1,CRPIX2 for EQUINOX")
    hdr["CRVAL2"] = (dec0, "[deg] Dec at CRPIX1,CRPIX2 for EQUINOX")
    hdr["EQUINOX"] = (2000.0, "[yr] Equatorial coordinates definition")
    hdr["CRPIX1"] = (crpix1, "Axis 1 reference pixel at CRVAL1,CRVAL2")
    hdr["CRPIX2"] = (crpix2, "Axis 2 reference pixel at CRVAL1,CRVAL2")
    hdr["CDELT1"] = (-CDELT_DEG, "[deg/pix] Axis 1 pixel scale at CRPIX1,CRPIX2")
    hdr["CDELT2"] = (CDELT_DEG, "[deg/pix] Axis 2 pixel scale at CRPIX1,CRPIX2")
    hdr["CROTA2"] = (0.0, "[deg] Image twist: +axis2 W of N, J2000.0")
    return hdr


def check_crop(crop: Crop | tuple[int, int, int, int]) -> Crop:
    """Return ``crop`` as a :class:`Crop`, or raise if it does not lie inside the tile."""
    c = Crop(*(int(v) for v in crop))
    if c.nx < 1 or c.ny < 1 or c.x0 < 0 or c.y0 < 0:
        raise ValueError(f"crop must have x0, y0 >= 0 and a positive size, got {tuple(c)}")
    if c.x0 + c.nx > TILE_NPIX or c.y0 + c.ny > TILE_NPIX:
        raise ValueError(f"crop {tuple(c)} reaches past the {TILE_NPIX}-pixel tile")
    return c


def tile_header(coadd_id: str, band: int, crop: Crop | None = None) -> fits.Header:
    """A realistic AllWISE Atlas intensity ("int-3") header for one tile and band.

    Carries the WCS (moved to the crop when one is given), BUNIT 'DN', MAGZP/MAGZPUNC, BAND,
    WAVELEN, COADDID and the tile centre in ecliptic and Galactic coordinates, as the real
    headers do; a cropped image also records the crop in CROPX0/CROPY0 (0-based offsets).
    """
    if band not in MAGZP:
        raise ValueError(f"unknown WISE band {band!r}: expected one of 1, 2, 3, 4")
    cid = atlas_id(coadd_id)
    ra0, dec0 = tile_center(cid)
    wcs = _wcs_cards(cid, (TILE_NPIX, TILE_NPIX), crop)
    hdr = fits.Header()
    hdr["SIMPLE"] = (True, "file does conform to FITS standard")
    hdr["BITPIX"] = (-32, "number of bits per data pixel")
    hdr["NAXIS"] = (2, "number of data axes")
    hdr["NAXIS1"] = (wcs["NAXIS1"], "length of data axis 1")
    hdr["NAXIS2"] = (wcs["NAXIS2"], "length of data axis 2")
    hdr["FILETYPE"] = ("intensity image", "product description")
    hdr["ORIGIN"] = ("WISE Science Data Center", "data origin")
    hdr["TELESCOP"] = ("WISE", "telescope used to acquire data")
    hdr["INSTRUME"] = ("WISE", "instrument")
    hdr["WRELEASE"] = ("AllWISE", "data release")
    hdr["BAND"] = (band, "wavelength band number")
    hdr["WAVELEN"] = (WAVELENGTH_UM[band], "[microns] effective wavelength of band")
    hdr["COADDID"] = (cid, "atlas-image identifier")
    hdr["MAGZP"] = (MAGZP[band], "[mag] relative photometric zero point")
    hdr["MAGZPUNC"] = (MAGZPUNC[band], "[mag] 1-sigma error on zero point")
    hdr["BUNIT"] = ("DN", "image pixel units")
    for key in ("CTYPE1", "CTYPE2", "EQUINOX", "CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2"):
        hdr[key] = (wcs[key], wcs.comments[key])
    for key in ("CDELT1", "CDELT2", "CROTA2"):
        hdr[key] = (wcs[key], wcs.comments[key])
    elon, elat, glon, glat = _ecl_gal(ra0, dec0)
    hdr["ELON"] = (round(elon, 6), "[deg] ecliptic longitude at CRPIX1,CRPIX2")
    hdr["ELAT"] = (round(elat, 6), "[deg] ecliptic latitude at CRPIX1,CRPIX2")
    hdr["GLON"] = (round(glon, 6), "[deg] Galactic longitude at CRPIX1,CRPIX2")
    hdr["GLAT"] = (round(glat, 6), "[deg] Galactic latitude at CRPIX1,CRPIX2")
    if crop is not None:
        c = check_crop(crop)
        hdr["CROPX0"] = (c.x0, "0-based x offset of this crop in the full tile")
        hdr["CROPY0"] = (c.y0, "0-based y offset of this crop in the full tile")
    return hdr


@functools.lru_cache(maxsize=4096)
def _ecl_gal(ra: float, dec: float) -> tuple[float, float, float, float]:
    from astropy import units as u
    from astropy.coordinates import BarycentricMeanEcliptic, SkyCoord

    c = SkyCoord(ra * u.deg, dec * u.deg, frame="icrs")
    e = c.transform_to(BarycentricMeanEcliptic())
    g = c.galactic
    return (
        float(e.lon.deg),
        float(e.lat.deg),
        float(g.l.deg),
        float(g.b.deg),
    )
