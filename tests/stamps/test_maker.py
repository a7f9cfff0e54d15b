"""StampMaker: the one path from catalog rows to model inputs (training and the sky pipeline)."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from iic_survey.core.flags import QualityFlag
from iic_survey.inputs.allwise_schema import PIPELINE_COLUMNS
from iic_survey.inputs.archive import TileArchive
from iic_survey.inputs.catalog import open_catalog
from iic_survey.inputs.errors import ArchiveAccessDenied
from iic_survey.inputs.ibe import ServiceConfig
from iic_survey.inputs.retry import RetryPolicy
from iic_survey.stamps.cutouts import CutoutConfig
from iic_survey.stamps.cutter import cut_sources
from iic_survey.stamps.features import FEATURE_NAMES
from iic_survey.stamps.maker import StampMaker, column_array
from iic_survey.stamps.rgb import RGBParams, make_rgb


@pytest.fixture(scope="module")
def rows(tiny_sky) -> pd.DataFrame:
    """A few hundred catalog rows of the tiny sky, as the pipeline reads them."""
    cat = open_catalog(tiny_sky.catalog_url)
    df = cat.read_pixel(int(tiny_sky.pixels[0]), 5, columns=PIPELINE_COLUMNS)
    return df.head(150).reset_index(drop=True)


@pytest.fixture(scope="module")
def made(tiny_sky, rows) -> dict[str, np.ndarray]:
    return StampMaker.from_spec(tiny_sky.images_url)(rows)


def test_adds_three_columns_and_keeps_rows(rows, made):
    n = len(rows)
    assert set(made) == set(rows.columns) | {"image", "features", "quality_flags"}
    assert made["image"].shape == (n, 3, 80, 80) and made["image"].dtype == np.float32
    assert made["features"].shape == (n, len(FEATURE_NAMES))
    assert made["features"].dtype == np.float32
    assert made["quality_flags"].shape == (n,) and made["quality_flags"].dtype == np.uint32
    np.testing.assert_array_equal(made["cntr"], rows["cntr"].to_numpy())
    np.testing.assert_array_equal(made["ra"], rows["ra"].to_numpy())
    assert list(made["designation"]) == rows["designation"].tolist()
    assert np.isfinite(made["image"]).all()


def test_same_as_cutouts_then_rgb(tiny_sky, rows, made):
    """The composition is exactly cut_sources -> make_rgb, with every flag kept."""
    cut = cut_sources(rows, TileArchive.from_spec(tiny_sky.images_url), CutoutConfig())
    images, rgb_flags = make_rgb(cut.stamps, RGBParams())
    np.testing.assert_array_equal(made["image"], images)
    expected = cut.flags | rgb_flags
    assert ((made["quality_flags"] & expected) == expected).all()


def test_w3_undetected_from_catalog(rows, made):
    """Independent rule: W3 SNR < 2, or no W3 uncertainty (an upper limit)."""
    snr = pd.to_numeric(rows["w3snr"]).to_numpy(np.float64, na_value=np.nan)
    sig = pd.to_numeric(rows["w3sigmpro"]).to_numpy(np.float64, na_value=np.nan)
    with np.errstate(invalid="ignore"):
        undetected = ~(snr >= 2) | ~np.isfinite(sig)
    flagged = (made["quality_flags"] & int(QualityFlag.W3_UNDETECTED)) != 0
    np.testing.assert_array_equal(flagged, undetected)
    assert undetected.any() and not undetected.all()  # the fixture exercises both branches


def test_row_order_follows_the_input(tiny_sky, rows, made):
    """Tiles are read grouped, but rows come back in input order whatever it is."""
    perm = np.random.default_rng(1).permutation(len(rows))
    shuffled = StampMaker.from_spec(tiny_sky.images_url)(rows.iloc[perm])
    np.testing.assert_array_equal(shuffled["cntr"], made["cntr"][perm])
    np.testing.assert_array_equal(shuffled["image"], made["image"][perm])
    np.testing.assert_array_equal(shuffled["quality_flags"], made["quality_flags"][perm])


def test_prior_flags_are_merged(tiny_sky, rows, made):
    batch = rows.head(5).assign(quality_flags=int(QualityFlag.BAD_INPUT))
    out = StampMaker.from_spec(tiny_sky.images_url)(batch)
    np.testing.assert_array_equal(
        out["quality_flags"], made["quality_flags"][:5] | int(QualityFlag.BAD_INPUT)
    )


def test_bad_coordinates_are_flagged_not_dropped(tiny_sky, rows):
    batch = rows.head(4).copy()
    batch.loc[1, "ra"] = np.nan
    out = StampMaker.from_spec(tiny_sky.images_url)(batch)
    assert len(out["cntr"]) == 4
    assert out["quality_flags"][1] & int(QualityFlag.BAD_COORDINATES)
    assert not out["quality_flags"][0] & int(QualityFlag.BAD_COORDINATES)


def test_rgb_params_from_a_model_dict_and_pickling(tiny_sky, rows):
    params = RGBParams(clip_sigma=2.5)
    maker = StampMaker.from_spec(tiny_sky.images_url, rgb_params=params.to_dict())
    assert maker.rgb == params
    clone = pickle.loads(pickle.dumps(maker))  # Ray ships it to tasks
    assert clone == maker
    np.testing.assert_array_equal(clone(rows.head(3))["image"], maker(rows.head(3))["image"])


def test_empty_batch(tiny_sky, rows):
    out = StampMaker.from_spec(tiny_sky.images_url)(rows.head(0))
    assert out["image"].shape == (0, 3, 80, 80)
    assert out["features"].shape[0] == 0 and len(out["cntr"]) == 0


def test_service_mode_needs_http(tiny_sky):
    with pytest.raises(ValueError, match="HTTP"):
        StampMaker.from_spec(tiny_sky.images_url, cutout=CutoutConfig(method="service"))
    with pytest.raises(TypeError, match="TileArchive"):
        StampMaker("local:/nowhere")  # type: ignore[arg-type]


def test_service_mode_over_http(irsa, rows):
    """Per-source IBE cutouts: one request per source and band, same output shape."""
    maker = StampMaker.from_spec(irsa.ibe_url, cutout=CutoutConfig(method="service"))
    out = maker(rows.head(6))
    assert out["image"].shape == (6, 3, 80, 80)
    assert not (out["quality_flags"] & int(QualityFlag.FETCH_FAILED)).any()


def test_service_mode_faults_are_flags_denial_raises(irsa, rows):
    irsa.faults.configure(server_error=1.0)
    retry = RetryPolicy(attempts=2, backoff_s=0.0)
    cut = CutoutConfig(method="service", service=ServiceConfig(retry=retry))
    out = StampMaker.from_spec(irsa.ibe_url, cutout=cut)(rows.head(3))
    assert (out["quality_flags"] & int(QualityFlag.FETCH_FAILED)).all()
    irsa.faults.configure(server_error=0.0, deny=True)
    with pytest.raises(ArchiveAccessDenied):
        StampMaker.from_spec(irsa.ibe_url, cutout=cut)(rows.head(2))


def test_column_array_types():
    s = pd.Series([1, None, 3], dtype="Int64")
    a = column_array(s)
    assert a.dtype == object and a[1] is None and a[0] == 1
    assert column_array(pd.Series([1, 2], dtype="Int64")).dtype == np.int64
    f = column_array(pd.Series([1.5, None], dtype="Float64"))
    assert f.dtype == np.float64 and np.isnan(f[1])
    t = column_array(pd.Series(["a", None], dtype="string"))
    assert t.dtype == object and t[0] == "a" and t[1] is None
    assert column_array(pd.Series([1.0, 2.0])).dtype == np.float64
