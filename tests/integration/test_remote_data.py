"""First light on the real archive: every fact the offline stand-ins assume, checked at the source.

Run with network before a sky-wide run (about a minute; skipped offline)::

    scripts/test.sh --remote-data -m remote_data

The offline suite replays IRSA's services with stand-ins (a moto S3 bucket, an IRSA-like HTTP
server, a SkyServer stand-in) built on what we believe the real ones do. These tests ask the
real ones, through the package's own clients and the URLs they are configured with
(:data:`~iic_survey.inputs.catalog.IRSA_ALLWISE_URL`, :data:`~iic_survey.inputs.archive.
IRSA_IBE_URL`, :data:`~iic_survey.inputs.ibe.IRSA_SIA_URL`, astroquery's SkyServer), at one
known place: the Atlas tile ``1497p015`` (COSMOS). Each failure names what was found, so a
changed archive says how it changed.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
import requests
from astropy.wcs import WCS

from iic_survey.core import healpix
from iic_survey.inputs import allwise_schema, archive, ibe, partitions, storage, tiles
from iic_survey.inputs import catalog as cat
from iic_survey.inputs.tile_header import MAGZP, tile_header, tile_wcs
from iic_survey.training import sdss

pytestmark = pytest.mark.remote_data

COADD = "1497p015"
"""An Atlas tile in COSMOS; its centre is (149.748462, 1.514444)."""
RA, DEC = 149.80, 1.55
"""A position well inside it (about 170" from its centre)."""
BAND = 1


def _types(schema: pa.Schema, names) -> dict[str, str]:
    return {n: str(schema.field(n).type) for n in names if n in schema.names}


@pytest.fixture(scope="module")
def store() -> partitions.PartitionFiles:
    """The real catalog's files, through the package's own S3 filesystem (anonymous)."""
    fs, root = storage.make_filesystem(cat.IRSA_ALLWISE_URL, anon=True)
    return partitions.PartitionFiles(cat.IRSA_ALLWISE_URL, fs, root.rstrip("/"))


@pytest.fixture(scope="module")
def irsa() -> archive.TileArchive:
    return archive.TileArchive.from_spec("irsa")


# ---------------------------------------------------------------------------------------------
# The AllWISE catalog on S3


def test_real_partition_footer_has_our_schema_partition_keys_and_row_groups(store) -> None:
    k5 = int(healpix.pixel_of(np.array([RA]), np.array([DEC]), partitions.CATALOG_ORDER)[0])
    rels = store.list_pixel(k5)
    assert len(rels) >= 1, (
        f"no file under healpix_k5={k5} ({store.url}): layout {partitions.LAYOUT}"
    )
    assert all(partitions.parse_path(r, store.url) == k5 for r in rels), rels
    md = store.footer(rels[0])
    schema = md.schema.to_arrow_schema()
    kinds = allwise_schema.COLUMN_KINDS
    found = _types(schema, allwise_schema.PIPELINE_COLUMNS)
    missing = [c for c in allwise_schema.PIPELINE_COLUMNS if c not in schema.names]
    assert not missing, f"{rels[0]} lacks {missing}; it has {schema.names}"
    # our own check, as a run does it before any work
    try:
        allwise_schema.check_schema(schema, allwise_schema.PIPELINE_COLUMNS, rels[0])
    except allwise_schema.CatalogSchemaError as exc:
        pytest.fail(f"{exc}; found {found}, expected kinds {kinds}")
    # hive keys: in the path; in the file too, they must be integers (partition_schema checks)
    in_file = _types(schema, partitions.PARTITION_COLUMNS)
    try:
        partitions.partition_schema(schema)
    except allwise_schema.CatalogSchemaError as exc:
        pytest.fail(f"partition columns in the file: {in_file}: {exc}")
    # row groups: row counts add up, and dec has min/max statistics (the cone prunes by them)
    groups = [md.row_group(i) for i in range(md.num_row_groups)]
    assert md.num_row_groups >= 1 and sum(g.num_rows for g in groups) == md.num_rows, (
        f"{md.num_row_groups} row groups, {[g.num_rows for g in groups]} rows, {md.num_rows} total"
    )
    paths = [groups[0].column(j).path_in_schema for j in range(groups[0].num_columns)]
    dec_i = paths.index("dec")  # the Parquet column, not the Arrow field, index
    stats = [g.column(dec_i).statistics for g in groups]
    assert all(s is not None and s.has_min_max for s in stats), (
        f"dec statistics per row group: {stats[:3]}"
    )
    lo, hi = min(s.min for s in stats), max(s.max for s in stats)
    assert lo <= DEC <= hi, f"dec statistics span {lo}..{hi} in pixel {k5}, which holds {DEC}"


def test_real_catalog_opens_from_its_common_metadata_not_the_whole_metadata(store) -> None:
    listed = store.filesystem.ls(store.root, detail=False)
    names = {p.rstrip("/").rsplit("/", 1)[-1] for p in listed}
    # open_catalog reads the schema from _common_metadata when there is one; without it, it
    # would fetch _metadata whole (hundreds of MB)
    assert "_common_metadata" in names and "_metadata" in names, f"top level: {sorted(names)[:20]}"
    common = store.footer_file("_common_metadata").schema.to_arrow_schema()
    c = cat.open_catalog(cat.IRSA_ALLWISE_URL, anon=True, require=allwise_schema.PIPELINE_COLUMNS)
    assert c.schema.names[: len(common.names)] == common.names


def test_real_metadata_size_head_only(store) -> None:
    info = store.filesystem.info(f"{store.root}/_metadata")  # a HEAD request, no body
    size = int(info["size"])
    # The index is built by scanning it in windows (footer_bytes.scan_metadata), sized for
    # IRSA's ~0.6 GB; a file far off that means another layout or another release.
    assert 0.2e9 < size < 3e9, f"_metadata is {size / 1e9:.3f} GB ({info})"


# ---------------------------------------------------------------------------------------------
# Atlas tiles over IBE


def test_real_atlas_tile_header_has_the_keywords_we_read(irsa) -> None:
    url = irsa.tile_url(COADD, BAND)
    with irsa.open_tile(COADD, BAND) as hdu:  # our client: validated, read lazily
        header = hdu.header.copy()
        patch = np.asarray(hdu.section[2000:2010, 2000:2010], dtype=np.float32)
    ours = tile_header(COADD, BAND)
    found = {k: header.get(k) for k in ours if k not in ("SIMPLE", "COMMENT", "HISTORY")}
    exact = ["BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "CTYPE1", "CTYPE2", "BUNIT"]
    wrong = {k: (header.get(k), ours[k]) for k in exact if header.get(k) != ours[k]}
    assert not wrong, f"{url}: (found, assumed) {wrong}; header has {found}"
    near = ["CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2", "CDELT1", "CDELT2", "MAGZP"]
    off = {
        k: (header.get(k), ours[k])
        for k in near
        if header.get(k) is None or not math.isclose(float(header[k]), ours[k], abs_tol=1e-6)
    }
    assert not off, f"{url}: (found, assumed) {off}"
    assert float(header["MAGZP"]) == MAGZP[BAND]
    geometry = archive.tile_geometry(header, url)
    # the WCS we compute from the tile id puts positions where the tile's own WCS does
    x, y = np.array([10.0, 2047.0, 4000.0]), np.array([20.0, 2047.0, 3900.0])
    world = geometry.wcs.pixel_to_world_values(x, y)
    xx, yy = tile_wcs(COADD).world_to_pixel_values(*world)
    assert np.allclose(xx, x, atol=0.01) and np.allclose(yy, y, atol=0.01), (xx - x, yy - y)
    assert patch.shape == (10, 10) and np.isfinite(patch).all(), patch


def test_real_atlas_tile_answers_ranged_reads(irsa) -> None:
    url = irsa.tile_url(COADD, BAND)
    head = requests.head(url, timeout=60, allow_redirects=True)
    size = int(head.headers.get("Content-Length", -1))
    data_bytes = tiles.TILE_NPIX**2 * 4
    assert size >= data_bytes and size % 2880 == 0, f"{url}: {size} bytes ({dict(head.headers)})"
    r = requests.get(url, headers={"Range": "bytes=0-2879"}, timeout=60)
    assert r.status_code == 206 and len(r.content) == 2880, (
        f"{url}: a Range request got HTTP {r.status_code}, {len(r.content)} bytes, "
        f"Accept-Ranges {head.headers.get('Accept-Ranges')!r}"
    )
    assert r.content.startswith(b"SIMPLE  ="), r.content[:80]
    tail = requests.get(url, headers={"Range": f"bytes={size - 2880}-{size - 1}"}, timeout=60)
    assert tail.status_code == 206 and len(tail.content) == 2880, tail.status_code


def test_real_ibe_cutout_is_fits_with_the_tiles_pixels(irsa) -> None:
    image = irsa.tile_url(COADD, BAND)
    service = ibe.CutoutService(ibe.ServiceConfig(size_arcsec=50.0))
    raw = requests.get(service.cutout_url(image, RA, DEC), timeout=60)
    ctype = raw.headers.get("Content-Type", "")
    assert raw.status_code == 200 and raw.content.startswith(b"SIMPLE  ="), (
        f"cutout: HTTP {raw.status_code}, Content-Type {ctype!r}, starts {raw.content[:40]!r}"
    )
    got = service.fetch_one(image, RA, DEC)  # our client
    assert got.status == "ok", f"{got.status}: {got.error} (Content-Type {ctype!r})"
    assert got.data.ndim == 2 and 30 <= min(got.data.shape) <= 40, got.data.shape
    assert float(got.header["MAGZP"]) == MAGZP[BAND], got.header.get("MAGZP")
    # the cutout is the tile's pixels, from the place its WCS says
    cut = WCS(got.header, naxis=2)
    ra0, dec0 = cut.pixel_to_world_values(0.0, 0.0)
    x0, y0 = tile_wcs(COADD).world_to_pixel_values(ra0, dec0)
    ix, iy = round(float(x0)), round(float(y0))
    assert abs(x0 - ix) < 0.01 and abs(y0 - iy) < 0.01, (x0, y0)
    ny, nx = got.data.shape
    with irsa.open_tile(COADD, BAND) as hdu:
        tile_part = np.asarray(hdu.section[iy : iy + ny, ix : ix + nx], dtype=np.float32)
    np.testing.assert_array_equal(got.data, tile_part, err_msg=f"cutout vs tile at ({ix}, {iy})")


def test_real_sia_query_picks_the_tile_for_each_band() -> None:
    rows = ibe.sia_lookup(RA, DEC, bands=(1, 2, 3))
    assert set(rows["band"]) == {1, 2, 3}, f"SIA rows picked: {rows.to_dict('records')}"
    best = rows[rows["coadd_id"] == rows["coadd_id"].iloc[0]]
    assert best["coadd_id"].iloc[0] == f"{COADD}_ac51", rows[["coadd_id", "band"]].to_dict()
    for band, url in zip(best["band"], best["access_url"], strict=True):
        assert url.endswith(archive.tile_key(COADD, int(band))), url
    assert tiles.best_tiles([RA], [DEC])["coadd_id"].iloc[0] == COADD


# ---------------------------------------------------------------------------------------------
# SDSS SkyServer


def test_real_skyserver_answers_the_label_query_with_our_columns_and_types() -> None:
    cfg = sdss.SDSSConfig(ra_range=(180.0, 180.1), stripe_deg=0.1, timeout_s=120)
    raw = sdss._astroquery_sql(sdss.sdss_sql(180.0, 180.1), cfg)  # the parse a run uses
    cols = {c: str(raw[c].dtype) for c in raw.columns}
    assert list(raw.columns) == ["specobjid", "ra", "dec", "class", "z"], cols
    assert len(raw) > 0, "no spectra in RA 180-180.1 (SkyServer answered an empty table)"
    assert raw["specobjid"].dtype.kind in "iu" and raw["ra"].dtype.kind == "f", cols
    assert raw["dec"].dtype.kind == "f" and raw["z"].dtype.kind == "f", cols
    classes = set(raw["class"].astype(str).str.strip())
    assert classes <= set(sdss.SDSS_CLASSES), f"classes {classes}"
    out = sdss.fetch_sdss(cfg)
    assert out["specobjid"].dtype == np.uint64 and len(out) == raw["specobjid"].nunique()
