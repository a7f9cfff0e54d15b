"""``python -m iic_survey cutouts`` and :func:`source_cutouts`: the stamps and RGB images of any
sources, checked against what the pipeline cut and made for the same rows."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from iic_survey.__main__ import main
from iic_survey.inputs.allwise_schema import PIPELINE_COLUMNS
from iic_survey.inputs.archive import TileArchive
from iic_survey.inputs.catalog import open_catalog
from iic_survey.output import index
from iic_survey.report.cutouts import INDEX_FILE, source_cutouts
from iic_survey.stamps.cutter import cut_sources
from iic_survey.stamps.maker import StampMaker
from iic_survey.testing.catalog import fake_results, write_catalog


@pytest.fixture(scope="module")
def sky_rows(tiny_sky) -> pd.DataFrame:
    """Input catalog rows as the pipeline reads them (with their AllWISE coadd_id)."""
    cat = open_catalog(tiny_sky.catalog_url)
    rows = cat.read_pixel(int(cat.pixels()[0]), 5, columns=PIPELINE_COLUMNS)
    return rows.sample(6, random_state=3).reset_index(drop=True)


def test_cutouts_are_the_pipelines_stamps_and_images(tiny_sky, sky_rows, tmp_path: Path) -> None:
    made = StampMaker.from_spec(tiny_sky.images_url)(sky_rows)  # what the pipeline gives the model
    cut = cut_sources(sky_rows, TileArchive.from_spec(tiny_sky.images_url))
    # as from the output catalog: no coadd_id, the tile is found again
    rows = sky_rows[["cntr", "designation", "ra", "dec"]]
    table = source_cutouts(rows, tiny_sky.images_url, tmp_path)
    assert table["status"].tolist() == ["ok"] * len(rows)
    assert table["tile"].tolist() == [str(t) for t in cut.tile]
    for i, cntr in enumerate(rows["cntr"]):
        np.testing.assert_array_equal(fits.getdata(tmp_path / f"{cntr}_rgb.fits"), made["image"][i])
        png = plt_read(tmp_path / f"{cntr}_rgb.png")
        assert png.shape[:2] == (80, 80)
        for j, band in enumerate((1, 2, 3)):
            with fits.open(tmp_path / f"{cntr}_w{band}.fits") as hdul:
                np.testing.assert_array_equal(hdul[0].data, cut.stamps[i, j])
                wcs = WCS(hdul[0].header)
            # the source lies at the stamp's centre pixel plus the cutter's offset
            x, y = wcs.world_to_pixel_values(rows["ra"][i], rows["dec"][i])
            h = cut.stamps.shape[-1] // 2
            np.testing.assert_allclose([x - h, y - h], cut.offset[i], atol=1e-4)
    listed = pd.read_csv(tmp_path / INDEX_FILE)
    assert listed["cntr"].tolist() == rows["cntr"].tolist()


def plt_read(path: Path) -> np.ndarray:
    import matplotlib.image

    return matplotlib.image.imread(path)


def test_a_source_without_tiles_gets_a_row_saying_so(tiny_sky, sky_rows, tmp_path) -> None:
    images = tmp_path / "images"
    shutil.copytree(tiny_sky.images_url, images)
    cut = cut_sources(sky_rows, TileArchive.from_spec(str(images)))
    gone = str(cut.tile[0])
    for f in images.rglob(f"*{gone}*"):  # every band of the first source's tile
        if f.is_file():
            f.unlink()
    rows = sky_rows[["cntr", "designation", "ra", "dec"]]
    table = source_cutouts(rows, str(images), tmp_path / "out")
    assert table["status"][0].startswith("tiles missing")
    ok = table[table["status"] == "ok"]
    assert len(ok) > 0
    for cntr in ok["cntr"]:
        assert (tmp_path / "out" / f"{cntr}_w1.fits").is_file()
    assert not (tmp_path / "out" / f"{rows['cntr'][0]}_w1.fits").exists()


def test_cli_cuts_from_the_archive_in_run_json(tiny_sky, sky_rows, tmp_path) -> None:
    df = fake_results(len(sky_rows), seed=4)[0]
    for c in ("cntr", "designation", "ra", "dec"):
        df[c] = sky_rows[c].to_numpy()
    catalog = str(tmp_path / "catalog")
    write_catalog(catalog, df, run_args={"images": tiny_sky.images_url})
    index.build_indexes(catalog)
    ids = tmp_path / "ids.csv"
    pd.DataFrame({"designation": [df["designation"][1]]}).to_csv(ids, index=False)
    out = tmp_path / "cut"
    code = main(["cutouts", catalog, "--cntr", str(df["cntr"][0]), "5", "--from-file", str(ids),
                 "--out", str(out)])  # fmt: skip
    assert code == 1  # cntr 5 is not in the catalog
    listed = pd.read_csv(out / INDEX_FILE)
    assert listed["status"].tolist() == ["ok", "ok", "not in the catalog"]
    assert sorted(listed["cntr"][:2]) == sorted(df["cntr"][:2])
    assert (out / f"{df['cntr'][1]}_rgb.png").is_file()
