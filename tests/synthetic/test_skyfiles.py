"""iic_survey.synthetic: the synthetic sky's layout, formats, geometry, realism and errors.

Geometry is checked against independent calculations (healpy for the partitions, astropy WCS of
each written file for wx/wy); realism by what a classifier or a photometrist would see.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pathlib
import re

import healpy as hp
import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.stats import sigma_clipped_stats
from astropy.wcs import WCS

from iic_survey.core.constants import CLASSES
from iic_survey.inputs import tile_header, tiles
from iic_survey.synthetic import catalog, rendering, skyfiles
from tests.fixtures.jobs import load_job

log = logging.getLogger(__name__)

PART = re.compile(r"^healpix_k0=(\d+)/healpix_k5=(\d+)/part0\.snappy\.parquet$")


@pytest.fixture(scope="module")
def sky_df(tiny_sky) -> pd.DataFrame:
    """The tiny sky's catalog (read through _metadata, as IRSA's tutorial does) with its truth."""
    dataset = pads.parquet_dataset(f"{tiny_sky.catalog_url}/_metadata", partitioning="hive")
    cat = dataset.to_table().to_pandas()
    truth = skyfiles.read_truth(tiny_sky.root)
    return cat.merge(truth, on="cntr", how="left", validate="one_to_one")


def _image(tiny_sky, coadd_id: str, band: int) -> tuple[np.ndarray, fits.Header]:
    path = f"{tiny_sky.images_url}/{skyfiles.tile_relpath(coadd_id, band)}"
    with fits.open(path) as hdul:
        return hdul[0].data.astype(np.float64), hdul[0].header


# -- layout and formats ------------------------------------------------------------------------


def test_layout_is_the_archives(tiny_sky):
    root = pathlib.Path(tiny_sky.root)
    cat_root = root / "catalogs/p3as_psd/healpix_k5/wise-allwise.parquet"
    assert tiny_sky.catalog_url == str(cat_root)
    assert tiny_sky.images_url == str(root / "images/p3am_cdd")
    parts = sorted(str(p.relative_to(cat_root)) for p in cat_root.rglob("*.parquet"))
    assert parts and all(PART.match(p) for p in parts)
    for p in parts:
        k0, k5 = map(int, PART.match(p).groups())
        assert k0 == k5 // 1024
    assert sorted(int(PART.match(p).group(2)) for p in parts) == list(tiny_sky.pixels)
    assert (cat_root / "_metadata").is_file() and (cat_root / "_common_metadata").is_file()
    assert (root / "truth.parquet").is_file() and (root / "sky.json").is_file()
    fits_files = sorted(str(p.relative_to(root)) for p in root.rglob("*.fits"))
    expected = sorted(
        f"images/p3am_cdd/{c[:2]}/{c[:4]}/{c}/{c}-w{b}-int-3.fits"
        for c in tiny_sky.tiles
        for b in (1, 2, 3)
    )
    assert fits_files == expected
    assert len(tiny_sky.tiles) >= 4 and len(tiny_sky.pixels) >= 4  # straddles both grids


def test_metadata_opens_as_irsas_tutorial_does(tiny_sky):
    dataset = pads.parquet_dataset(f"{tiny_sky.catalog_url}/_metadata", partitioning="hive")
    assert dataset.count_rows() == tiny_sky.n_sources
    pixel = tiny_sky.pixels[0]
    some = dataset.to_table(filter=pc.field("healpix_k5").isin([pixel])).to_pandas()
    part = pq.read_table(
        f"{tiny_sky.catalog_url}/healpix_k0={pixel // 1024}/healpix_k5={pixel}/part0.snappy.parquet"
    ).to_pandas()
    assert len(some) == len(part) > 0 and set(some["cntr"]) == set(part["cntr"])
    md = pq.read_metadata(f"{tiny_sky.catalog_url}/_metadata")
    paths = {md.row_group(i).column(0).file_path for i in range(md.num_row_groups)}
    assert all(PART.match(p) for p in paths) and len(paths) == len(tiny_sky.pixels)
    assert md.num_rows == tiny_sky.n_sources


def test_schema_dtypes_units_and_descriptions(tiny_sky, sky_df):
    schema = pq.read_schema(f"{tiny_sky.catalog_url}/_common_metadata")
    assert "healpix_k5" not in schema.names  # partition columns live in the paths only
    for f in schema:
        assert f.metadata and f.metadata[b"description"], f.name
    assert schema.field("ra").metadata[b"unit"] == b"deg"
    assert schema.field("w1mpro").metadata[b"unit"] == b"mag"
    assert schema.field("wx").metadata[b"unit"] == b"pix"
    types = {f.name: str(f.type) for f in schema}
    for name in ("cntr", "ext_flg", "nb", "na"):
        assert types[name] == "int64"
    for name in ("designation", "cc_flags", "ph_qual", "var_flg", "coadd_id"):
        assert types[name] == "string"
    for b in (1, 2, 3, 4):
        for kind in ("mpro", "sigmpro", "snr", "rchi2"):
            assert types[f"w{b}{kind}"] == "double"
    for name in ("ra", "dec", "glon", "glat", "wx", "wy"):
        assert types[name] == "double"
    assert "class" not in schema.names  # truth is kept apart
    assert sky_df["cntr"].is_unique
    assert sky_df["cc_flags"].str.len().eq(4).all() and sky_df["ph_qual"].str.len().eq(4).all()
    assert sky_df["ph_qual"].str.fullmatch("[ABCU]{4}").all()
    assert sky_df["coadd_id"].str.fullmatch(r"\d{4}[pm]\d{3}_ac51").all()
    # Upper limits: null sigmpro and 'U', detections: a sigma and A/B/C.
    upper = sky_df["ph_qual"].str[2] == "U"
    assert sky_df.loc[upper, "w3sigmpro"].isna().all()
    assert sky_df.loc[~upper, "w3sigmpro"].notna().all()


def test_partitions_match_healpy(sky_df):
    k5 = hp.ang2pix(32, sky_df["ra"], sky_df["dec"], nest=True, lonlat=True)
    assert (sky_df["healpix_k5"].to_numpy() == k5).all()
    assert (sky_df["healpix_k0"].to_numpy() == k5 // 1024).all()


def test_positions_names_and_galactic_coordinates(sky_df):
    c = SkyCoord(sky_df["ra"].to_numpy() * u.deg, sky_df["dec"].to_numpy() * u.deg)
    g = c.galactic
    assert np.allclose(sky_df["glon"], g.l.deg, atol=1e-9)
    assert np.allclose(sky_df["glat"], g.b.deg, atol=1e-9)
    assert catalog.designations(np.array([148.81342]), np.array([69.07427])) == [
        "J095515.22+690427.3"
    ]
    names = sky_df["designation"]
    assert names.str.fullmatch(r"J\d{6}\.\d{2}[+-]\d{6}\.\d").all()
    # Names are truncated positions: parsing one back lands within 0.2" of the source.
    back = SkyCoord(
        [f"{n[1:3]}h{n[3:5]}m{n[5:10]}s {n[10:13]}d{n[13:15]}m{n[15:]}s" for n in names[:50]]
    )
    assert c[:50].separation(back).arcsec.max() < 0.2


def test_wx_wy_agree_with_each_files_wcs(tiny_sky, sky_df):
    best = tiles.best_tiles(sky_df["ra"].to_numpy(), sky_df["dec"].to_numpy())
    assert (tiles.AC51 + best["coadd_id"]).size == len(sky_df)
    assert ((best["coadd_id"] + tiles.AC51).to_numpy() == sky_df["coadd_id"].to_numpy()).all()
    for cid, rows in sky_df.groupby("coadd_id"):
        img, hdr = _image(tiny_sky, cid, 1)
        x, y = WCS(hdr).world_to_pixel_values(rows["ra"].to_numpy(), rows["dec"].to_numpy())
        assert np.abs(x + 1 - rows["wx"].to_numpy()).max() < 0.01
        assert np.abs(y + 1 - rows["wy"].to_numpy()).max() < 0.01
        assert (rows["wx"] >= 1).all() and (rows["wx"] <= img.shape[1]).all()
        assert (rows["wy"] >= 1).all() and (rows["wy"] <= img.shape[0]).all()
        for b in (2, 3):
            other, h2 = _image(tiny_sky, cid, b)
            assert other.shape == img.shape
            assert all(h2[k] == hdr[k] for k in ("CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2"))


def test_headers(tiny_sky):
    for cid in tiny_sky.tiles:
        for band, zp in ((1, 20.5), (2, 19.5), (3, 18.0)):
            _, hdr = _image(tiny_sky, cid, band)
            assert hdr["BITPIX"] == -32 and hdr["BUNIT"] == "DN" and hdr["MAGZP"] == zp
            assert hdr["BAND"] == band and hdr["COADDID"] == cid
            assert (hdr["CTYPE1"], hdr["CTYPE2"]) == ("RA---SIN", "DEC--SIN")
            assert hdr["CRPIX1"] == 2048.0 - hdr["CROPX0"]
            assert (hdr["CRVAL1"], hdr["CRVAL2"]) == tiles.tile_center(cid)


def test_sources_in_tile_overlaps_are_in_every_tile(tiny_sky, sky_df):
    bright = sky_df[(sky_df["w1_true"] < 13.5) & (sky_df["shape"] == "point")]
    cand = tiles.tile_candidates(bright["ra_true"].to_numpy(), bright["dec_true"].to_numpy(), 25)
    cand = cand[cand["coadd_id"].isin([t[:8] for t in tiny_sky.tiles])]
    shared = cand.groupby("source").filter(lambda g: len(g) >= 2)
    assert shared["source"].nunique() >= 3
    peaks: dict[int, list[float]] = {}
    for cid, rows in shared.groupby("coadd_id"):
        img, hdr = _image(tiny_sky, cid, 1)
        bg = np.nanmedian(img)
        x = rows["x"].to_numpy() - hdr["CROPX0"] - 1
        y = rows["y"].to_numpy() - hdr["CROPY0"] - 1
        for s, xi, yi in zip(rows["source"], x, y, strict=True):
            box = img[round(yi) - 1 : round(yi) + 2, round(xi) - 1 : round(xi) + 2]
            peaks.setdefault(int(s), []).append(float(np.nanmax(box) - bg))
    for values in peaks.values():
        assert min(values) > 10 * rendering.BAND_MODELS[1].noise_dn
        assert max(values) / min(values) < 1.3


# -- realism -----------------------------------------------------------------------------------


def test_truth_is_separate_and_complete(tiny_sky, sky_df):
    truth = skyfiles.read_truth(tiny_sky.root)
    assert truth["cntr"].is_unique and set(truth["cntr"]) == set(sky_df["cntr"])
    assert set(truth["class"]) == set(CLASSES)
    assert len(truth) == tiny_sky.n_sources == 2000
    assert skyfiles.SkyManifest.load(tiny_sky.root) == tiny_sky
    doc = json.loads((pathlib.Path(tiny_sky.root) / "sky.json").read_text())
    assert skyfiles.SkyConfig.from_dict(doc["config"]) == skyfiles.tiny_config()
    # Every kind of trouble the cutout code must survive is present.
    for col in ("empty_centre", "hidden_companion", "saturated", "near_bright_star"):
        assert truth[col].any(), col
    assert (truth["offset_arcsec"] > 0).any() and truth["extended"].any()
    assert (sky_df["nb"] > 1).any() and (sky_df["ext_flg"] > 0).any()
    assert sky_df["cc_flags"].str.contains("H").any()


def _colour_features(df: pd.DataFrame) -> np.ndarray:
    w3det = (df["ph_qual"].str[2] != "U").to_numpy()
    return np.c_[df["w1mpro"] - df["w2mpro"], df["w2mpro"] - df["w3mpro"], df["w1mpro"], w3det]


def _w1_sizes(tiny_sky, df: pd.DataFrame) -> np.ndarray:
    """Gaussian-weighted second moment (px^2) of the W1 light around each source."""
    yy, xx = np.mgrid[-6:7, -6:7]
    w = np.exp(-(xx**2 + yy**2) / (2 * 2.5**2))
    out = np.zeros(len(df))
    for cid, rows in df.groupby("coadd_id"):
        img, _ = _image(tiny_sky, cid, 1)
        img -= np.nanmedian(img)
        for i, x, y in zip(rows.index, rows["wx"], rows["wy"], strict=True):
            ix, iy = round(x - 1), round(y - 1)
            st = np.nan_to_num(img[iy - 6 : iy + 7, ix - 6 : ix + 7])
            f = (st * w).sum() if st.shape == w.shape else 0.0
            out[df.index.get_loc(i)] = (st * w * (xx**2 + yy**2)).sum() / f if f > 0 else 0.0
    return out


def test_colours_alone_are_not_enough_and_images_help(tiny_sky, sky_df):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.tree import DecisionTreeClassifier

    y = sky_df["class"].astype(str).to_numpy()
    colours = _colour_features(sky_df)
    # The best cut on one colour (up to three thresholds) is far from separating the classes.
    single = {}
    for name, col in (("W1-W2", colours[:, :1]), ("W2-W3", colours[:, 1:2])):
        tree = DecisionTreeClassifier(max_depth=2).fit(col, y)
        single[name] = balanced_accuracy_score(y, tree.predict(col))
    log.info("best single colour cut, balanced accuracy: %s", single)
    assert max(single.values()) < 0.85, single
    # Morphology measured on the images carries information the catalog colours do not.
    sizes = _w1_sizes(tiny_sky, sky_df)
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    forest = RandomForestClassifier(80, min_samples_leaf=5, random_state=0, n_jobs=1)
    acc_c = balanced_accuracy_score(y, cross_val_predict(forest, colours, y, cv=cv))
    acc_m = balanced_accuracy_score(y, cross_val_predict(forest, np.c_[colours, sizes], y, cv=cv))
    log.info("colours %.3f, colours + W1 size %.3f", acc_c, acc_m)
    assert acc_c < 0.9 and acc_m > acc_c + 0.02
    bright = sky_df["w1snr"].to_numpy() > 30
    med = pd.Series(sizes[bright]).groupby(y[bright]).median()
    assert med["galaxy"] > 1.3 * med["star"] and med["quasar"] < 1.2 * med["star"]


def test_catalog_photometry_matches_the_images(tiny_sky, sky_df):
    c = SkyCoord(sky_df["ra_true"].to_numpy() * u.deg, sky_df["dec_true"].to_numpy() * u.deg)
    _, sep, _ = c.match_to_catalog_sky(c, nthneighbor=2)
    ok = (
        (sky_df["class"] == "star")
        & sky_df["w1_true"].between(9, 13)
        & (sep.arcsec > 25)
        & ~sky_df["hidden_companion"]
        & (sky_df["offset_arcsec"] == 0)
        & ~sky_df["near_bright_star"]
    )
    stars = sky_df[ok]
    assert len(stars) >= 8
    diffs = []
    for cid, rows in stars.groupby("coadd_id"):
        img, _ = _image(tiny_sky, cid, 1)
        yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
        for x, y, mag in zip(rows["wx"], rows["wy"], rows["w1mpro"], strict=True):
            r = np.hypot(xx - (x - 1), yy - (y - 1))
            bg = sigma_clipped_stats(img[(r > 20) & (r < 30)], sigma=2.5)[1]
            flux = np.nansum(img[r <= 12] - bg)
            diffs.append(tile_header.MAGZP[1] - 2.5 * np.log10(flux) - mag)
    diffs = np.abs(np.array(diffs))
    log.info("aperture - w1mpro: median %.3f, max %.3f mag", np.median(diffs), diffs.max())
    assert np.median(diffs) < 0.06 and np.mean(diffs < 0.2) >= 0.9


def test_w3_is_shallow_and_noisy(tiny_sky, sky_df):
    upper = sky_df["ph_qual"].str.split("", expand=True).iloc[:, 1:5] == "U"
    assert upper[3].mean() > 0.5 > 3 * upper[1].mean()
    img1, _ = _image(tiny_sky, tiny_sky.tiles[0], 1)
    img3, _ = _image(tiny_sky, tiny_sky.tiles[0], 3)
    # In magnitudes, W3's pixel noise is ~5 mag brighter than W1's.
    n1 = sigma_clipped_stats(img1[np.isfinite(img1)])[2] * 10 ** (
        0.4 * (20.5 - tile_header.MAGZP[1])
    )
    n3 = sigma_clipped_stats(img3[np.isfinite(img3)])[2] * 10 ** (
        0.4 * (20.5 - tile_header.MAGZP[3])
    )
    assert n3 > 30 * n1


def test_artefacts(tiny_sky, sky_df):
    # Failure class 4: listed as detected, but nothing like the listed flux at the position.
    empty = sky_df[sky_df["empty_centre"] & ~sky_df["near_bright_star"]]
    assert len(empty) >= 5 and (empty["w1snr"] >= 2).all()
    found = []
    yy, xx = np.mgrid[-10:11, -10:11]
    r = np.hypot(xx, yy)
    for cid, rows in empty.groupby("coadd_id"):
        img, _ = _image(tiny_sky, cid, 1)
        for x, y, mag in zip(rows["wx"], rows["wy"], rows["w1mpro"], strict=True):
            ix, iy = round(x - 1), round(y - 1)
            st = img[iy - 10 : iy + 11, ix - 10 : ix + 11]
            if st.shape != r.shape:
                continue
            excess = np.nansum(st[r <= 2.5] - np.nanmedian(st[(r > 6) & (r <= 10)]))
            listed = 10 ** (-0.4 * (mag - tile_header.MAGZP[1])) * 0.5  # ~half the PSF in r <= 2.5
            found.append(excess / listed)
    assert len(found) >= 5 and np.mean(np.array(found) < 0.4) >= 0.75, found
    # Saturated stars have flat tops; some image has a NaN patch.
    sat = sky_df[sky_df["saturated"]]
    assert len(sat) >= 1
    flat = 0
    for cid in sat["coadd_id"].unique():
        img, _ = _image(tiny_sky, cid, 1)
        top = np.nanmax(img)
        flat += int(np.sum(img == top) >= 4)
    assert flat >= 1
    nan_images = sum(
        bool(np.isnan(_image(tiny_sky, cid, b)[0]).any())
        for cid in tiny_sky.tiles
        for b in (1, 2, 3)
    )
    assert nan_images >= 1


# -- determinism and bad input ---------------------------------------------------------------

SMALL = {"n_sources": 300, "fields": ((226.072, -0.752),), "field_size_deg": 0.12}


def _digest(root) -> dict[str, str]:
    root = pathlib.Path(root)
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes(tmp_path):
    a = skyfiles.write_sky(tmp_path / "a", skyfiles.SkyConfig(seed=7, **SMALL))
    b = skyfiles.write_sky(tmp_path / "b", skyfiles.SkyConfig(seed=7, **SMALL))
    c = skyfiles.write_sky(tmp_path / "c", skyfiles.SkyConfig(seed=8, **SMALL))
    assert _digest(a.root) == _digest(b.root)
    assert _digest(a.root) != _digest(c.root)
    assert a.n_sources == 300 and not list(tmp_path.glob(".*partial*"))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bands": (1, 2, 5)}, "unknown WISE band"),
        ({"bands": (1, 2)}, r"bands must be \(1, 2, 3\)"),
        ({"seed": -1}, "seed must be in"),
        ({"seed": 2**32}, "seed must be in"),
        ({"seed": 1.5}, "seed must be an integer"),
        ({"field_size_deg": 0.0}, "field_size_deg"),
        ({"field_size_deg": 3.0}, "field_size_deg"),
        ({"n_sources": 5}, "n_sources must be in"),
        ({"n_sources": 2_000_000}, "denser than any WISE sky"),
        ({"class_fractions": (0.5, 0.5, 0.5)}, "class_fractions"),
        ({"fields": ((10.0, 95.0),)}, r"\|dec\| <= 80"),
        ({"fields": ()}, "at least one"),
        ({"fields": ((226.072, -0.752), (226.5, -0.5))}, "share Atlas tile"),
    ],
)
def test_bad_configs_name_the_problem(kwargs, match):
    with pytest.raises(ValueError, match=match):
        skyfiles.SkyConfig(**kwargs)


def test_roots_that_are_not_skies_are_refused(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    cfg = skyfiles.SkyConfig(**SMALL)
    with pytest.raises(FileExistsError, match="holds no synthetic sky"):
        skyfiles.write_sky(other, cfg)
    with pytest.raises(FileExistsError, match="holds no synthetic sky"):
        skyfiles.write_sky(other, cfg, overwrite=True)
    assert (other / "notes.txt").read_text() == "mine"
    sky = skyfiles.write_sky(tmp_path / "sky", cfg)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        skyfiles.write_sky(sky.root, cfg)
    again = skyfiles.write_sky(sky.root, skyfiles.SkyConfig(seed=3, **SMALL), overwrite=True)
    assert again.config.seed == 3 and skyfiles.SkyManifest.load(sky.root).config.seed == 3
    with pytest.raises(FileNotFoundError, match="no synthetic sky"):
        skyfiles.SkyManifest.load(other)


def test_make_sky_job(repo_root, tmp_path, capsys):
    job = load_job(repo_root / "jobs" / "make_sky.py", "make_sky")
    root = tmp_path / "sky"
    args = [str(root), "--n-sources", "200", "--fields", "226.072,-0.752", "--field-size", "0.1"]
    assert job.main([*args, "--bands", "1,2,3,4", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert "wrote 200 sources" in out and str(root) in out
    manifest = skyfiles.SkyManifest.load(root)
    assert manifest.config.bands == (1, 2, 3, 4) and manifest.config.seed == 2
    assert len(list(root.rglob("*-w4-int-3.fits"))) == len(manifest.tiles)
    assert job.main(args) == 2  # exists, no --overwrite
    assert "overwrite" in capsys.readouterr().err
    assert job.main([str(tmp_path / "x"), "--bands", "1,2,7"]) == 2
    assert "unknown WISE band" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_sky_is_small(tmp_path):
    """Its size; its CPU time is logged, not asserted (benchmarks/RESULTS.md measures speed)."""
    import time

    start = time.process_time()
    manifest = skyfiles.write_sky(tmp_path / "demo", skyfiles.SkyConfig())
    cpu = time.process_time() - start
    size = sum(p.stat().st_size for p in pathlib.Path(manifest.root).rglob("*"))
    log.info("demo sky: %d sources, %.1f s CPU, %.1f MB", manifest.n_sources, cpu, size / 1e6)
    assert manifest.n_sources == 10_000 and len(manifest.pixels) >= 8
    assert size < 150e6
