"""Queries (pixel pruning, exact cones), LSDB and pandas access, FITS / VOTable export."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import fsspec
import lsdb
import numpy as np
import pandas as pd
import pytest
from upath import UPath

from iic_survey.core import healpix
from iic_survey.core.constants import CLASSES
from iic_survey.output import export as output_export
from iic_survey.output import reader as export
from iic_survey.output import schema
from iic_survey.testing.catalog import ORDER, fake_results, write_catalog


@pytest.fixture(scope="module")
def results() -> tuple[pd.DataFrame, pd.DataFrame]:
    return fake_results(3000, seed=2)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory, results) -> str:
    out = str(tmp_path_factory.mktemp("exp") / "catalog")
    write_catalog(out, results[0])
    return out


def _opened_pixel_files(catalog: str, **query) -> tuple[pd.DataFrame, list[str]]:
    fs = fsspec.filesystem("file")
    with mock.patch.object(fs, "open", wraps=fs.open) as spy:
        # a file:// UPath reads through ``fs``, which the spy watches
        df = export.read(UPath(f"file://{catalog}"), **query)
    opened = [str(c.args[0]) for c in spy.call_args_list if "Npix=" in str(c.args[0])]
    return df, opened


def test_cone_matches_astropy_and_prunes_files(catalog: str, results) -> None:
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    df = results[0]
    ra0, dec0, r = 152.0, 22.0, 3.0
    got, opened = _opened_pixel_files(catalog, cone=(ra0, dec0, r))
    sep = SkyCoord(df["ra"], df["dec"], unit="deg").separation(SkyCoord(ra0, dec0, unit="deg"))
    expected = set(df.loc[sep < r * u.deg, "cntr"])
    assert len(expected) > 50
    assert set(got["cntr"]) == expected
    n_files = len(export.partitions(catalog))
    near = set(healpix.cone_pixels(ra0, dec0, r, ORDER).tolist())
    assert 0 < len(opened) < n_files
    assert len(opened) == len([p for _, p in export.partitions(catalog) if p in near])


def test_filters_columns_and_pixels(catalog: str, results) -> None:
    df = results[0]
    got = export.read(catalog, columns=["cntr", "p_quasar"], classes=["quasar"], min_confidence=0.8)
    want = df[(df["class"] == "quasar") & (df["confidence"] >= 0.8)]
    assert list(got.columns) == ["cntr", "p_quasar"]
    assert set(got["cntr"]) == set(want["cntr"])

    # a deeper order than the catalog's: only one file opened, rows filtered exactly
    h5 = healpix.pixel_of(df["ra"].to_numpy(), df["dec"].to_numpy(), ORDER + 2)
    some = np.unique(h5)[:3]
    got, opened = _opened_pixel_files(catalog, pixels=(ORDER + 2, some.tolist()))
    assert set(got["cntr"]) == set(df.loc[np.isin(h5, some), "cntr"])
    assert len(opened) == len(np.unique(healpix.parent(some, ORDER + 2, ORDER)))
    # a shallower order: every catalog pixel inside it
    h1 = healpix.pixel_of(df["ra"].to_numpy(), df["dec"].to_numpy(), ORDER - 1)
    got = export.read(catalog, columns=["cntr"], pixels=(ORDER - 1, [int(h1[0])]))
    assert set(got["cntr"]) == set(df.loc[h1 == h1[0], "cntr"])

    empty = export.read(catalog, cone=(10.0, -60.0, 1.0))
    assert len(empty) == 0 and list(empty.columns) == schema.OUTPUT_SCHEMA.names
    assert list(empty["class"].cat.categories) == list(CLASSES)


def test_read_refuses_unknown_names(catalog: str) -> None:
    with pytest.raises(ValueError, match="did you mean 'p_star'"):
        export.read(catalog, columns=["p_stars"])
    with pytest.raises(ValueError, match="did you mean 'quasar'"):
        export.read(catalog, classes=["quasars"])
    with pytest.raises(FileNotFoundError, match="not an iic_survey catalog"):
        export.read(str(Path(catalog).parent / "nothing"))


@pytest.mark.slow
def test_lsdb_opens_the_catalog_and_cone_searches(catalog: str, results) -> None:
    ra0, dec0, r = 148.0, 18.0, 2.5
    cat = lsdb.open_catalog(catalog)
    got = cat.cone_search(ra0, dec0, r * 3600).compute()
    ours = export.read(catalog, cone=(ra0, dec0, r))
    assert len(ours) > 20
    assert sorted(got["cntr"]) == sorted(ours["cntr"])
    assert set(got.columns) >= {"p_galaxy", "class", "is_outlier"}
    # the README's form: a column projection and a row filter pushed down to Parquet
    q = lsdb.open_catalog(
        catalog, columns=["cntr", "ra", "dec", "p_quasar"], filters=[("class", "==", "quasar")]
    )
    got = q.cone_search(ra0, dec0, radius_arcsec=r * 3600).compute()
    assert sorted(got["cntr"]) == sorted(ours.loc[ours["class"] == "quasar", "cntr"])


@pytest.mark.parametrize("suffix", [".fits", ".vot"])
def test_export_keeps_units_and_descriptions(tmp_path: Path, catalog: str, suffix: str) -> None:
    from astropy.table import Table

    dest = tmp_path / f"quasars{suffix}"
    output_export.export(catalog, str(dest), classes=["quasar", "star"], cone=(150.0, 20.0, 5.0))
    back = Table.read(dest)
    rows = export.read(catalog, classes=["quasar", "star"], cone=(150.0, 20.0, 5.0))
    assert len(back) == len(rows) > 0
    assert back["ra"].unit == "deg" and back["w1mpro"].unit == "mag"
    for name in ("ra", "p_quasar", "class", "quality_flags", "is_outlier"):
        # XML may re-wrap the DESCRIPTION text: compare words
        assert back[name].description.split() == schema.COLUMN_DOCS[name]["description"].split()
    np.testing.assert_allclose(np.asarray(back["ra"]), rows["ra"])
    assert [str(c) for c in back["class"]] == rows["class"].astype(str).tolist()
    assert np.asarray(back["cntr"]).tolist() == rows["cntr"].tolist()
    with pytest.raises(FileExistsError):
        output_export.export(catalog, str(dest))
    if suffix == ".fits":
        from astropy.io import fits

        header = fits.getheader(dest, 1)
        i = back.colnames.index("p_star") + 1
        assert header[f"TCOMM{i}"].startswith("Calibrated star probability")


def test_export_masks_nulls_and_refuses_bad_requests(tmp_path: Path, results) -> None:
    from astropy.table import Table

    df = results[0].iloc[:200].copy()
    df["class"] = pd.Categorical(df["class"], categories=list(CLASSES))
    dest = tmp_path / "sel.xml"
    output_export.export(df, str(dest))
    back = Table.read(dest)
    null = df["p_star"].isna().to_numpy()
    assert null.any()
    assert np.array_equal(np.ma.getmaskarray(back["p_star"]), null)
    with pytest.raises(ValueError, match="format"):
        output_export.export(df, str(tmp_path / "sel.csv"))
    with pytest.raises(ValueError, match="max_rows"):
        output_export.export(df, str(tmp_path / "big.fits"), max_rows=10)
    with pytest.raises(TypeError, match="catalog path"):
        output_export.export(df, str(tmp_path / "q.fits"), classes=["star"])


def test_cli_and_summary(tmp_path: Path, catalog: str, results) -> None:
    dest = tmp_path / "q.fits"
    assert (
        output_export.cli([catalog, str(dest), "--class", "quasar", "--columns", "cntr,ra,dec"])
        == 0
    )
    from astropy.table import Table

    back = Table.read(dest)
    assert back.colnames == ["cntr", "ra", "dec"]
    assert len(back) == int((results[0]["class"] == "quasar").sum())
    text = export.summary_text(catalog)
    assert f"rows: {len(results[0])}" in text
    assert "quasar" in text and "W3_UNDETECTED" in text


def test_every_column_has_a_valid_ucd() -> None:
    from astropy.io.votable.ucd import check_ucd

    assert set(schema.UCDS) == set(schema.OUTPUT_SCHEMA.names)
    for name, ucd in schema.UCDS.items():
        assert check_ucd(ucd, check_controlled_vocabulary=True), (name, ucd)
        assert schema.OUTPUT_SCHEMA.field(name).metadata[b"ucd"] == ucd.encode()
    mains = [n for n, u in schema.UCDS.items() if "meta.main" in u.split(";")]
    assert mains == ["cntr", "ra", "dec"]  # one main id, one main position


# what a VO tool asks for by UCD, and the column it must get
_BY_UCD = {
    "pos.eq.ra;meta.main": "ra",
    "pos.eq.dec;meta.main": "dec",
    "meta.id;meta.main": "cntr",
    "phot.mag;em.IR.3-4um": "w1mpro",
    "phot.mag;em.IR.4-8um": "w2mpro",
    "src.class": "class",
}


def test_votable_is_valid_with_ucds_and_coosys(tmp_path: Path, catalog: str) -> None:
    import io
    import warnings

    from astropy.io import votable

    dest = tmp_path / "sel.vot"
    output_export.export(catalog, str(dest), cone=(150.0, 20.0, 3.0))
    out = io.StringIO()
    assert votable.validate(str(dest), output=out, xmllint=False), out.getvalue()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any VOTable spec warning fails the test
        vot = votable.parse(str(dest), verify="exception")
    fields = vot.get_first_table().fields
    by_ucd = {f.ucd: f.name for f in fields}
    for ucd, name in _BY_UCD.items():
        assert by_ucd[ucd] == name
    probs = sorted(f.name for f in fields if f.ucd and "stat.probability" in f.ucd.split(";"))
    assert probs == ["confidence", "p_galaxy", "p_quasar", "p_star"]
    (coosys,) = vot.resources[0].coordinate_systems
    assert (coosys.system, coosys.equinox, coosys.epoch) == ("ICRS", "J2000", "J2000")
    assert {f.name: f.ref for f in fields if f.ref} == {"ra": coosys.ID, "dec": coosys.ID}
    # and the values found by UCD are the catalog's
    table = vot.get_first_table().to_table()
    ra = next(table[c] for c in table.colnames if table[c].meta.get("ucd") == "pos.eq.ra;meta.main")
    rows = export.read(catalog, cone=(150.0, 20.0, 3.0))
    np.testing.assert_array_equal(np.asarray(ra), rows["ra"].to_numpy())


def test_fits_has_tucd_and_frame(tmp_path: Path, catalog: str) -> None:
    from astropy.io import fits

    dest = tmp_path / "sel.fits"
    output_export.export(catalog, str(dest), cone=(150.0, 20.0, 3.0))
    header = fits.getheader(dest, 1)
    by_ucd = {header[f"TUCD{i}"]: header[f"TTYPE{i}"] for i in range(1, header["TFIELDS"] + 1)}
    for ucd, name in _BY_UCD.items():
        assert by_ucd[ucd] == name
    assert header["RADESYS"] == "ICRS" and header["EQUINOX"] == 2000.0
    # FITS verification: the keywords are standard-conforming
    with fits.open(dest) as hdul:
        hdul.verify("exception")
