"""Labelled training sets: keyed-hash splits and balancing, SDSS paging, the crossmatch."""

from __future__ import annotations

import hashlib
import http.server
import json
import pathlib
import re
import threading
import urllib.parse
from collections.abc import Iterator
from typing import ClassVar

import astroquery
import numpy as np
import pandas as pd
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord

from iic_survey.core import hashing, healpix
from iic_survey.core.constants import CLASSES
from iic_survey.training import crossmatch, labels, sdss, splits, trainingset
from tests.fixtures.jobs import load_job

# ---------------------------------------------------------------------------------------------
# Splits and balancing


def _splitmix64(x: int, key: int) -> int:
    """Reference splitmix64 of ``x + golden * (key + 1)``, one Python int at a time."""
    mask = 2**64 - 1
    z = (x + 0x9E3779B97F4A7C15 * (key + 1)) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def test_hash_unit_is_splitmix64_of_the_id_under_a_key():
    # The reference itself: the first two outputs of splitmix64 seeded with 0 (Vigna's
    # splitmix64.c), which are our hash of id 0 under keys 0 and 1.
    assert [_splitmix64(0, 0), _splitmix64(0, 1)] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4]
    ids = np.array([0, 1, -5, 2**62, 2**63 - 1, -(2**63)], dtype=np.int64)
    for key in (0, 7, 2**64 - 1, "k", "iic-split-v1"):
        k = key
        if isinstance(key, str):
            k = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
        want = [_splitmix64(int(i) & (2**64 - 1), k) for i in ids]
        assert hashing.keyed_hash(ids, key).tolist() == want
        u_ = hashing.hash_unit(ids, key)
        assert u_.tolist() == [(h >> 11) / 2**53 for h in want]
        assert np.all((u_ >= 0) & (u_ < 1))


def test_split_is_deterministic_order_free_and_8_1_1():
    rng = np.random.default_rng(1)
    cntr = rng.choice(10**12, 20_000, replace=False).astype(np.int64)
    ra, dec = rng.uniform(0, 360, cntr.size), rng.uniform(-60, 60, cntr.size)
    split = splits.assign_split(cntr, ra, dec)
    perm = rng.permutation(cntr.size)
    assert np.array_equal(splits.assign_split(cntr[perm], ra[perm], dec[perm]), split[perm])
    frac = pd.Series(split).value_counts(normalize=True)
    assert frac["train"] == pytest.approx(0.8, abs=0.01)
    assert frac["val"] == pytest.approx(0.1, abs=0.01)
    assert frac["test"] == pytest.approx(0.1, abs=0.01)
    # Pinned values: the split of a source must never change between machines or releases.
    pinned = splits.assign_split(np.arange(1, 13), np.zeros(12), np.zeros(12))
    assert list(pinned) == [
        "train",
        "train",
        "test",
        "train",
        "test",
        "val",
        "train",
        "val",
        "train",
        "train",
        "train",
        "train",
    ]
    other = splits.assign_split(cntr, ra, dec, splits.SplitConfig(key="another"))
    assert (other != split).mean() > 0.2


def test_blocked_split_keeps_each_healpix_pixel_in_one_split():
    rng = np.random.default_rng(2)
    ra, dec = rng.uniform(10, 12, 5000), rng.uniform(-1, 1, 5000)
    cntr = np.arange(5000, dtype=np.int64)
    split = splits.assign_split(cntr, ra, dec, splits.SplitConfig(block_order=8))
    pix = healpix.pixel_of(ra, dec, 8)
    per_pixel = pd.DataFrame({"pix": pix, "split": split}).groupby("pix")["split"].nunique()
    assert per_pixel.max() == 1
    assert set(split) == set(splits.SPLITS)


def test_split_config_checks_itself():
    with pytest.raises(ValueError, match="sum"):
        splits.SplitConfig(fractions=(0.8, 0.1, 0.2))
    with pytest.raises(ValueError):
        splits.SplitConfig(block_order=30)


def _labelled(n_per_class: dict[str, int], seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    cls = np.concatenate([[c] * n for c, n in n_per_class.items()])
    cntr = rng.choice(10**9, cls.size, replace=False).astype(np.int64)
    return pd.DataFrame({"cntr": cntr, "class": cls})


def test_balance_to_rarest_class_and_to_targets():
    df = _labelled({"galaxy": 500, "quasar": 120, "star": 300})
    out = splits.balance(df)
    assert out["class"].value_counts().to_dict() == dict.fromkeys(CLASSES, 120)
    out = splits.balance(df, {"galaxy": 50, "quasar": 40, "star": 30})
    assert out["class"].value_counts().to_dict() == {"galaxy": 50, "quasar": 40, "star": 30}
    # Row order does not matter, and a smaller target keeps a subset of a larger one.
    shuffled = df.sample(frac=1, random_state=3)
    assert set(splits.balance(shuffled, 60)["cntr"]) == set(splits.balance(df, 60)["cntr"])
    assert set(splits.balance(df, 30)["cntr"]) <= set(splits.balance(df, 60)["cntr"])


def test_balance_keeps_all_of_a_short_class_and_rejects_bad_input(caplog):
    df = _labelled({"galaxy": 10, "quasar": 5, "star": 10})
    out = splits.balance(df, 8)
    assert out["class"].value_counts().to_dict() == {"galaxy": 8, "quasar": 5, "star": 8}
    assert "fewer than" in caplog.text
    with pytest.raises(ValueError, match="did you mean 'quasar'"):
        splits.balance(df, {"quasars": 3})
    with pytest.raises(ValueError, match="no labelled sources"):
        splits.balance(df[df["class"] != "star"])


def test_paper_counts_match_table_1():
    assert labels.PAPER_COUNTS == {"galaxy": 7298, "quasar": 7215, "star": 7223}


# ---------------------------------------------------------------------------------------------
# Crossmatch


class MemoryCatalog:
    """The two catalog methods the crossmatch uses, over an in-memory table; counts reads."""

    def __init__(self, df: pd.DataFrame, order: int = 5) -> None:
        self.df = df.assign(_pix=healpix.pixel_of(df["ra"], df["dec"], order))
        self.order = order
        self.reads: list[int] = []

    def pixels(self, order: int = 5) -> np.ndarray:
        return np.unique(self.df["_pix"].to_numpy())

    def read_pixel(self, pixel: int, order: int, columns: list[str] | None = None) -> pd.DataFrame:
        self.reads.append(int(pixel))
        rows = self.df[self.df["_pix"] == pixel].drop(columns="_pix")
        return rows[columns] if columns else rows


def _offset(ra, dec, sep_arcsec, pa_deg):
    c = SkyCoord(ra * u.deg, dec * u.deg).directional_offset_by(
        pa_deg * u.deg, sep_arcsec * u.arcsec
    )
    return c.ra.deg, c.dec.deg


def test_crossmatch_agrees_with_an_independent_astropy_separation():
    rng = np.random.default_rng(5)
    # Sources around an order-5 pixel corner, so matches straddle pixel edges.
    c_ra, c_dec = healpix.pixel_center(4000, 5)
    n = 3000
    cat = pd.DataFrame(
        {
            "cntr": np.arange(1, n + 1, dtype=np.int64) * 7,
            "ra": c_ra + rng.uniform(-2.5, 2.5, n),
            "dec": c_dec + rng.uniform(-2.5, 2.5, n),
            "w1mpro": rng.uniform(10, 16, n),
        }
    )
    pick = rng.choice(n, 800, replace=False)
    sep = rng.uniform(0, 4.0, pick.size)  # some beyond the 2.5" radius
    lra, ldec = _offset(
        cat["ra"].to_numpy()[pick], cat["dec"].to_numpy()[pick], sep, rng.uniform(0, 360, pick.size)
    )
    spectra = pd.DataFrame(
        {
            "specobjid": np.arange(pick.size, dtype=np.uint64) + 100,
            "ra": lra,
            "dec": ldec,
            "class": rng.choice(CLASSES, pick.size),
            "z": rng.uniform(0, 2, pick.size),
        }
    )
    catalog = MemoryCatalog(cat)
    out = crossmatch.crossmatch(spectra, catalog, radius_arcsec=2.5, columns=["w1mpro"])
    assert len(catalog.reads) == len(set(catalog.reads))  # each pixel read once

    # Independent answer: brute-force nearest source by SkyCoord.separation.
    cc = SkyCoord(cat["ra"].to_numpy() * u.deg, cat["dec"].to_numpy() * u.deg)
    expect = {}
    for i in range(len(spectra)):
        s = SkyCoord(spectra["ra"][i] * u.deg, spectra["dec"][i] * u.deg).separation(cc).arcsec
        j = int(np.argmin(s))
        if s[j] <= 2.5 and (cat["cntr"][j] not in expect or s[j] < expect[cat["cntr"][j]][1]):
            expect[int(cat["cntr"][j])] = (int(spectra["specobjid"][i]), float(s[j]))
    got = {int(r.cntr): (int(r.specobjid), float(r.sep_arcsec)) for r in out.itertuples()}
    assert got.keys() == expect.keys()
    for k, (sid, s) in expect.items():
        assert got[k][0] == sid
        assert got[k][1] == pytest.approx(s, abs=1e-6)
    assert {"label_ra", "label_dec", "class", "z", "w1mpro"} <= set(out.columns)
    assert out["cntr"].is_unique


def test_crossmatch_finds_a_counterpart_across_a_pixel_edge():
    # A catalog source just inside pixel A, its spectrum just inside neighbour B.
    ra0, dec0 = healpix.pixel_center(4000, 5)
    lo = healpix.pixel_of(np.array([ra0]), np.array([dec0]), 5)[0]
    ra = ra0
    # Walk east until the pixel changes, then put the pair on both sides of the edge.
    step = 0.5 / 3600
    while healpix.pixel_of(np.array([ra + step]), np.array([dec0]), 5)[0] == lo:
        ra += step
    cat = pd.DataFrame({"cntr": [1], "ra": [ra], "dec": [dec0]})
    spec = pd.DataFrame({"ra": [ra + 1.5 / 3600], "dec": [dec0], "class": ["star"]})
    assert healpix.pixel_of(spec["ra"], spec["dec"], 5)[0] != lo
    out = crossmatch.crossmatch(spec, MemoryCatalog(cat), radius_arcsec=2.5)
    assert list(out["cntr"]) == [1]


def test_pixels_near_covers_every_pixel_a_match_circle_touches():
    import healpy as hp

    rng = np.random.default_rng(9)
    ra, dec = rng.uniform(0, 360, 400), rng.uniform(-89, 89, 400)
    r = 60.0  # arcsec: large, so many circles straddle edges at order 8
    rows, pix = crossmatch.pixels_near(ra, dec, r, order=8)
    for i in range(len(ra)):
        vec = hp.ang2vec(ra[i], dec[i], lonlat=True)
        exact = set(hp.query_disc(256, vec, np.radians(r / 3600), nest=True, inclusive=False))
        assert exact <= set(pix[rows == i])


# ---------------------------------------------------------------------------------------------
# SDSS: a local stand-in for SkyServer's SQL search, driven through astroquery


class SkyServerStandIn(http.server.BaseHTTPRequestHandler):
    """Answers ``x_results.aspx?cmd=<sql>&format=csv`` like SkyServer: a ``#Table1`` CSV,
    silently truncated at ``cap`` rows; rows are those of ``table`` inside the query's stripe."""

    table: pd.DataFrame = pd.DataFrame()
    cap: int = 500_000
    body: bytes | None = None
    """When set, the answer to every query, byte for byte (a real SkyServer body, say)."""
    queries: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        url = urllib.parse.urlparse(self.path)
        q = urllib.parse.parse_qs(url.query)
        sql_search = url.path.endswith("/dr17/en/tools/search/x_results.aspx")
        if not sql_search or q.get("format") != ["csv"]:
            self.send_error(404)
            return
        sql = q["cmd"][0]
        type(self).queries.append(sql)
        lo, hi = sdss.stripe_of_sql(sql)
        body = self.body
        if body is None:
            t = self.table
            rows = t[(t["ra"] >= lo) & (t["ra"] < hi)].head(self.cap)
            body = ("#Table1\n" + rows.to_csv(index=False)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def skyserver() -> Iterator[type[SkyServerStandIn]]:
    """A SkyServer stand-in on 127.0.0.1, with astroquery pointed at it."""
    from astroquery.sdss import conf

    handler = type("Handler", (SkyServerStandIn,), {"queries": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with conf.set_temp("skyserver_baseurl", f"http://127.0.0.1:{server.server_port}"):
            yield handler
    finally:
        server.shutdown()
        server.server_close()


def _spectra(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "specobjid": (rng.choice(10**15, n, replace=False) + 2**62).astype(np.uint64),
            "ra": rng.uniform(0, 40, n),
            "dec": rng.uniform(-5, 5, n),
            "class": rng.choice(["GALAXY", "QSO", "STAR"], n),
            "z": rng.uniform(0, 3, n),
        }
    )


def test_fetch_sdss_pages_by_ra_and_halves_full_stripes(skyserver):
    table = _spectra(900)
    skyserver.table, skyserver.cap = table, 200
    cfg = sdss.SDSSConfig(ra_range=(0.0, 40.0), stripe_deg=10.0, row_cap=200)
    out = sdss.fetch_sdss(cfg)
    assert len(out) == len(table)
    assert set(out["specobjid"]) == set(table["specobjid"])  # uint64 ids survive
    assert out["specobjid"].dtype == np.uint64
    assert set(out["class"]) == set(CLASSES)
    assert len(skyserver.queries) > 4  # full stripes were split and asked again
    assert all("s.zWarning = 0" in q for q in skyserver.queries)


def test_fetch_sdss_refuses_to_bisect_forever(skyserver):
    table = _spectra(50).assign(ra=1.0)  # 50 rows at one RA: no stripe gets under the cap
    skyserver.table, skyserver.cap = table, 10
    cfg = sdss.SDSSConfig(ra_range=(0.0, 2.0), stripe_deg=2.0, row_cap=10, min_stripe_deg=0.1)
    with pytest.raises(RuntimeError, match="still returns"):
        sdss.fetch_sdss(cfg)


def test_sdss_sql_is_the_documented_query_with_a_stripe():
    sql = sdss.sdss_sql(10, 20)
    assert sql.startswith(
        "SELECT s.specobjid, s.ra, s.dec, s.class, s.z FROM SpecObj s WHERE "
        "s.zWarning = 0 AND s.class IN ('GALAXY','QSO','STAR')"
    )
    assert sdss.stripe_of_sql(sql) == (10.0, 20.0)


@pytest.mark.remote_data
def test_real_skyserver_answers_one_small_stripe():
    cfg = sdss.SDSSConfig(ra_range=(180.0, 180.05), stripe_deg=0.05, timeout_s=120)
    out = sdss.fetch_sdss(cfg)
    assert len(out) > 0
    assert set(out["class"]) <= set(CLASSES)
    assert out["ra"].between(180.0, 180.05).all()


# ---------------------------------------------------------------------------------------------
# The SkyServer response generated from the tiny synthetic sky (tests/data/sdss), in the form of
# a real SkyServer body (astroquery's own test data holds real ones)

SDSS_DATA = pathlib.Path(__file__).parents[1] / "data" / "sdss"
GENERATED_CSV = SDSS_DATA / "specobj_generated_from_tiny_sky.csv"
REAL_SKYSERVER = pathlib.Path(astroquery.__file__).parent / "sdss" / "tests" / "data"
"""Real SkyServer CSV bodies astroquery ships for its own tests (``xid_sp.txt``: a
``SpecObj`` join, one row; ``xid_im.txt``: a ``PhotoObj`` query, 18 rows)."""


def _csv_form(body: str) -> dict[str, object]:
    """The form of a SkyServer CSV body, its values aside: what a parser relies on."""
    lines = body.split("\n")
    header, rows = lines[1].split(","), [r for r in lines[2:] if r]
    ident = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
    return {
        "first_line": lines[0],
        "header_is_names": all(ident.match(h) for h in header),
        "fields_per_row": sorted({len(r.split(",")) for r in rows}) == [len(header)],
        "quoted": '"' in body,
        "carriage_returns": "\r" in body,
        "blank_lines": "" in lines[2:-1],
        "ends_with_newline": body.endswith("\n") and not body.endswith("\n\n"),
        "rows": len(rows) >= 1,
    }


@pytest.mark.parametrize("name", ["xid_sp.txt", "xid_im.txt"])
def test_skyserver_path_parses_a_real_skyserver_body(skyserver, name):
    real = (REAL_SKYSERVER / name).read_text()
    skyserver.body = real.encode()
    got = sdss._astroquery_sql(sdss.sdss_sql(0, 10), sdss.SDSSConfig())
    header = real.split("\n")[1].split(",")
    want = pd.read_csv(REAL_SKYSERVER / name, skiprows=1)
    assert list(got.columns) == header
    assert len(got) == len(want) == len(real.strip().split("\n")) - 2
    kind = {"u": "i"}  # astroquery reads ids as uint64 (specobjids overflow int64), pandas int64
    for col in header:
        assert kind.get(got[col].dtype.kind, got[col].dtype.kind) == want[col].dtype.kind, col
    np.testing.assert_array_equal(got["objid"].astype("int64"), want["objid"])
    np.testing.assert_allclose(got["ra"], want["ra"], rtol=0, atol=1e-11)
    if name == "xid_sp.txt":
        assert int(got["specobjid"][0]) == 845594848269461504
        assert got["z"][0] == pytest.approx(0.04559058) and got["instrument"][0] == "SDSS"


def test_generated_response_has_the_form_of_a_real_skyserver_body(skyserver):
    real = _csv_form((REAL_SKYSERVER / "xid_sp.txt").read_text())
    assert real["first_line"] == "#Table1" and real["header_is_names"], real
    ours = GENERATED_CSV.read_text()
    assert _csv_form(ours) == real
    # and our parsing path reads it as it reads the real one: every row, uint64 ids intact
    skyserver.body = ours.encode()
    got = sdss._astroquery_sql(sdss.sdss_sql(0, 10), sdss.SDSSConfig())
    want = pd.read_csv(GENERATED_CSV, skiprows=1, dtype={"specobjid": "uint64"})
    assert list(got.columns) == ["specobjid", "ra", "dec", "class", "z"]
    assert got["specobjid"].astype("uint64").tolist() == want["specobjid"].tolist()
    assert got["class"].astype(str).tolist() == want["class"].tolist()


@pytest.fixture
def generated_sdss(skyserver, tiny_sky):
    """The stand-in SkyServer replaying the response generated from the tiny sky; what the
    tests expect of it."""
    from tests.data.sdss.make_generated_response import read_sky, sky_fingerprint

    expect = json.loads((SDSS_DATA / "specobj_generated_from_tiny_sky.json").read_text())
    rows, _ = read_sky(tiny_sky.root)
    if sky_fingerprint(rows) != expect["sky"]["fingerprint"]:
        pytest.fail("the tiny sky changed: rerun tests/data/sdss/make_generated_response.py")
    skyserver.table = pd.read_csv(GENERATED_CSV, skiprows=1, dtype={"specobjid": "uint64"})
    return expect


def test_generated_spectra_crossmatch_onto_their_sources(generated_sdss, skyserver, tiny_sky):
    from iic_survey.inputs.catalog import open_catalog

    spectra = sdss.fetch_sdss(sdss.SDSSConfig(stripe_deg=60.0))
    assert len(spectra) == len(skyserver.table)
    out = crossmatch.crossmatch(spectra, open_catalog(tiny_sky.catalog_url), radius_arcsec=2.5)
    got = dict(zip(out["specobjid"].astype(str), out["cntr"].astype(int), strict=True))
    for sid, cntr in generated_sdss["match"].items():
        if cntr < 0:
            assert sid not in got, f"blank-sky spectrum {sid} matched {got.get(sid)}"
        else:
            assert got.get(sid) == cntr, f"spectrum {sid}: expected cntr {cntr}"
    # A repeat spectrum never displaces the nearer one of the same source.
    expected_cntrs = {c for c in generated_sdss["match"].values() if c >= 0}
    assert not [s for s in generated_sdss["repeats"] if got.get(s) in expected_cntrs]
    truth = __import__("iic_survey.synthetic.skyfiles", fromlist=["x"]).read_truth(tiny_sky.root)
    cls = dict(zip(truth["cntr"], truth["class"], strict=True))
    assert all(
        cls[c] == k
        for c, k in zip(out["cntr"], out["class"], strict=True)
        if str(c) in map(str, expected_cntrs)
    )


@pytest.mark.slow
def test_build_training_set_from_generated_sdss_spectra(generated_sdss, tiny_sky, tmp_path):
    cfg = labels.TrainingSetConfig(
        source="sdss",
        catalog=tiny_sky.catalog_url,
        images=tiny_sky.root,
        sdss=sdss.SDSSConfig(stripe_deg=90.0),
        chunk_rows=100,
    )
    man = labels.build_training_set(cfg, str(tmp_path / "ts"))
    per_class = {c: sum(man["counts"][s][c] for s in splits.SPLITS) for c in CLASSES}
    assert len(set(per_class.values())) == 1 or man["dropped"] > 0
    assert sum(per_class.values()) >= 3 * 100
    test = trainingset.read_split(str(tmp_path / "ts"), "train")
    assert test["image"].shape[1:] == (3, 80, 80)
    assert {"specobjid", "z", "sep_arcsec", "label"} <= set(test)
    assert np.all(test["sep_arcsec"] <= 2.5)


def _build_job(repo_root):
    return load_job(repo_root / "jobs" / "build_training_set.py", "build_training_set")


@pytest.mark.slow
def test_build_job_labels_the_synthetic_sky_balanced_split_and_deterministic(
    repo_root, tiny_sky, tmp_path, capsys
):
    from iic_survey.synthetic import skyfiles

    job = _build_job(repo_root)
    out = tmp_path / "ts"
    assert (
        job.main(
            ["--sky", tiny_sky.root, "--out", str(out), "--per-class", "150", "--chunk-rows", "256"]
        )
        == 0
    )
    assert '"training_set"' in capsys.readouterr().out
    man = trainingset.read_manifest(str(out))
    per_class = {c: sum(man["counts"][s][c] for s in splits.SPLITS) for c in CLASSES}
    assert all(140 <= n <= 150 for n in per_class.values()), per_class  # minus dropped rows
    whole = pd.read_parquet(out)
    truth = skyfiles.read_truth(tiny_sky.root).set_index("cntr")["class"]
    assert (whole["class"].to_numpy() == truth.loc[whole["cntr"]].to_numpy()).all()
    assert (whole["label"].to_numpy() == splits.class_index(whole["class"])).all()
    assert whole["cntr"].is_unique
    # The split column is exactly the keyed hash of cntr.
    expect = splits.assign_split(whole["cntr"], whole["ra"], whole["dec"])
    assert (whole["split"].astype(str).to_numpy() == expect).all()
    img = trainingset.read_split(str(out), "train", columns=["image", "features", "quality_flags"])
    assert img["image"].shape[1:] == (3, 80, 80) and np.isfinite(img["image"]).all()
    assert img["features"].shape[1] == len(man["feature_names"])
    assert man["rgb"] and man["feature_names"]
    # Existing output is refused; --overwrite rebuilds the same rows.
    with pytest.raises(FileExistsError):
        job.main(["--sky", tiny_sky.root, "--out", str(out), "--per-class", "150"])
    assert (
        job.main(["--sky", tiny_sky.root, "--out", str(out), "--per-class", "150", "--overwrite"])
        == 0
    )
    again = pd.read_parquet(out)
    assert set(again["cntr"]) == set(whole["cntr"])


@pytest.mark.slow
def test_ensure_builds_a_missing_training_set_once(tiny_sky, tmp_path, monkeypatch):
    calls = []
    real = labels.build_training_set
    monkeypatch.setattr(
        labels, "build_training_set", lambda *a, **k: calls.append(a) or real(*a, **k)
    )
    man = labels.ensure_synthetic_training_set(str(tmp_path / "ts"), tiny_sky.root, per_class=20)
    assert sum(sum(c.values()) for c in man["counts"].values()) <= 60 and len(calls) == 1
    again = labels.ensure_synthetic_training_set(str(tmp_path / "ts"), tiny_sky.root)
    assert again["counts"] == man["counts"] and len(calls) == 1  # found, not rebuilt
