"""iic_survey.stamps.rgb and features: the stamp -> image transform, its flags, catalog features.

The transform is checked against an independent, slow, per-stamp implementation of the
documented algorithm (numpy median/percentile for the clipped background, torch's
``F.interpolate(align_corners=False)`` for the resize).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from iic_survey.core.flags import NOT_CLEAN, clean, unclassifiable
from iic_survey.core.flags import QualityFlag as Q
from iic_survey.stamps import features, rgb

S = 37
YY, XX = np.mgrid[:S, :S]
NOISE = np.array([0.65, 0.9, 11.0])  # DN per pixel, about AllWISE's W1, W2, W3


def psf(x0: float = 18.0, y0: float = 18.0, sigma: float = 2.0) -> np.ndarray:
    return np.exp(-((XX - x0) ** 2 + (YY - y0) ** 2) / (2 * sigma**2))


def stamps(
    n: int, seed: int = 0, amp: float | list[float] | np.ndarray = 100.0, bg: float = 5.0
) -> np.ndarray:
    """Gaussian noise + background + a central source in every band, float32 DN."""
    rng = np.random.default_rng(seed)
    amp = np.broadcast_to(np.asarray(amp, dtype=float), (n,))[:, None, None, None]
    x = rng.normal(size=(n, 3, S, S)) * NOISE[None, :, None, None] + bg
    return (x + amp * np.array([1.0, 0.8, 3.0])[None, :, None, None] * psf()).astype(np.float32)


def has(flags: np.ndarray, bit: Q) -> np.ndarray:
    return (flags & int(bit)) != 0


# ---------------------------------------------------------------------------------------------
# An independent reference


def ref_stats(v: np.ndarray, k: float, iters: int) -> tuple[float, float]:
    v = v[np.isfinite(v)].astype(np.float64)
    keep = v
    for it in range(iters + 1):
        med = float(np.median(keep))
        q16, q84 = np.percentile(keep, [100 * rgb._Q16, 100 * rgb._Q84])
        sig = float(q84 - q16) / 2
        if it == iters:
            break
        new = v[(v >= med - k * sig) & (v <= med + k * sig)]
        if len(new) == len(keep):
            break
        keep = new
    return med, sig


def ref_make_rgb(x: np.ndarray, p: rgb.RGBParams) -> np.ndarray:
    x = x.astype(np.float64).copy()
    ring = np.ones((S, S), bool)
    ring[p.border_px : -p.border_px, p.border_px : -p.border_px] = False
    for i in range(len(x)):
        for b in range(3):
            bg, _ = ref_stats(x[i, b][ring], p.clip_sigma, p.clip_iters)
            band = x[i, b]
            band[~np.isfinite(band)] = bg
            x[i, b] = np.arcsinh((band - bg) / p.softening_dn[b]) / math.asinh(p.full_scale)
    t = F.interpolate(
        torch.from_numpy(x), size=(p.out_size, p.out_size), mode="bilinear", align_corners=False
    )
    return t.numpy()


# ---------------------------------------------------------------------------------------------
# The transform


def test_matches_independent_reference() -> None:
    x = stamps(6, amp=[0, 10, 100, 1000, 5000, 50])
    x[1, 0, :4, :] += 40.0  # a neighbour in the border, to be clipped
    x[2, 1, 10:14, 3:6] = np.nan  # masked pixels, to be filled with the background
    p = rgb.RGBParams()
    got, _ = rgb.make_rgb(x, p)
    np.testing.assert_allclose(got, ref_make_rgb(x, p), rtol=0, atol=2e-6)


@pytest.mark.parametrize(("size_in", "size_out"), [(37, 80), (36, 80), (20, 80), (37, 16), (5, 7)])
def test_resize_matches_torch(size_in: int, size_out: int) -> None:
    x = np.random.default_rng(1).normal(size=(4, 3, size_in, size_in)).astype(np.float32)
    ours = rgb.resize_bilinear(x, size_out, scale=0.5)
    ref = (
        0.5
        * F.interpolate(
            torch.from_numpy(x), size=(size_out, size_out), mode="bilinear", align_corners=False
        ).numpy()
    )
    assert ours.shape == (4, 3, size_out, size_out) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)
    assert np.allclose(rgb.bilinear_matrix(size_in, size_out).sum(axis=1), 1.0)


def test_shapes_dtype_and_chunking() -> None:
    x = stamps(300)  # more than one chunk
    img, flags = rgb.make_rgb(x)
    assert img.shape == (300, 3, 80, 80) and img.dtype == np.float32 and img.flags.c_contiguous
    assert flags.shape == (300,) and flags.dtype == np.uint32
    assert np.isfinite(img).all()
    one, _ = rgb.make_rgb(x[299:300])
    np.testing.assert_array_equal(one[0], img[299])  # a batch of one is not squeezed
    img0, flags0 = rgb.make_rgb(np.zeros((0, 3, S, S), np.float32))
    assert img0.shape == (0, 3, 80, 80) and flags0.shape == (0,)
    ints, _ = rgb.make_rgb(np.round(x[:3] * 10).astype(np.int32))
    assert np.isfinite(ints).all()


def test_out_buffer() -> None:
    x = stamps(5)
    buf = np.full((5, 3, 80, 80), np.nan, np.float32)
    img, _ = rgb.make_rgb(x, out=buf)
    assert img is buf and np.isfinite(buf).all()
    np.testing.assert_array_equal(buf, rgb.make_rgb(x)[0])
    with pytest.raises(ValueError, match="out must be"):
        rgb.make_rgb(x, out=np.empty((5, 3, 80, 80), np.float64))


def test_channel_order_and_stretch() -> None:
    x = np.random.default_rng(2).normal(size=(3, 3, S, S)).astype(np.float32) * 0.01
    for band in range(3):
        x[band, band] += 500 * psf()  # source only in one band
    img, _ = rgb.make_rgb(x)
    centre = img[:, :, 39:41, 39:41].mean(axis=(2, 3))  # (stamp, channel)
    assert (np.argmax(centre, axis=1) == [0, 1, 2]).all()  # W1, W2, W3 -> channels 0, 1, 2
    bright = rgb.make_rgb(stamps(3, amp=[10, 100, 1000]))[0][:, 0, 39:41, 39:41].mean(axis=(1, 2))
    assert bright[0] < bright[1] < bright[2] < 1.3  # monotone, compressed
    noise = rgb.make_rgb(stamps(1, amp=0))[0]
    assert abs(float(noise.mean())) < 0.02  # background maps to zero


def test_background_ignores_a_bright_neighbour_in_the_border() -> None:
    x = stamps(1, amp=0).astype(np.float64)
    x[0, :, 0:2, 5:15] += 1e4  # a saturated neighbour on the border
    bg, sig = rgb._background(x.astype(np.float32), rgb.RGBParams())
    assert (np.abs(bg[0] - 5.0) < 0.3 * NOISE).all(), bg[0]
    np.testing.assert_allclose(sig[0], NOISE, rtol=0.2)


def test_clipped_stats_against_numpy() -> None:
    rng = np.random.default_rng(3)
    v = rng.normal(size=(20, 300)).astype(np.float32)
    v[:, :15] += 30  # outliers
    v[3, ::7] = np.nan
    med, sig, n = rgb.clipped_stats(v, 3.0, 3)
    for i in range(20):
        m, s = ref_stats(v[i], 3.0, 3)
        assert med[i] == pytest.approx(m, abs=1e-5) and sig[i] == pytest.approx(s, abs=1e-5)
    assert n[3] == 300 - len(range(0, 300, 7)) and n[0] == 300
    med, sig, n = rgb.clipped_stats(np.full((2, 10), np.nan, np.float32), 3.0, 2)
    assert np.isnan(med).all() and np.isnan(sig).all() and (n == 0).all()


def test_nan_pixels_are_filled_with_background_and_flagged() -> None:
    x = stamps(2)
    x[0, 1, 20:25, 0:6] = np.nan
    x[0, 2, 0, 0] = np.inf
    img, flags = rgb.make_rgb(x)
    assert np.isfinite(img).all()
    assert has(flags, Q.NAN_PIXELS).tolist() == [True, False]
    filled = x.copy()
    bg, _ = rgb._background(x, rgb.RGBParams())
    filled[0, 1, 20:25, 0:6] = bg[0, 1]
    filled[0, 2, 0, 0] = bg[0, 2]
    np.testing.assert_allclose(img[0], rgb.make_rgb(filled)[0][0], atol=1e-6)


def test_blank_and_masked_bands() -> None:
    x = stamps(4)
    x[0, 2] = 7.0  # constant W3
    x[1] = 0.0  # zero-filled stamp
    x[2, 1] = np.nan  # a band entirely missing
    x[3, 0, :2, :] = np.nan  # masked border rows: background from the rest of the border
    x[3, 0, :, :2] = np.nan
    x[3, 0, -2:, :] = np.nan
    x[3, 0, :, -2:] = np.nan
    img, flags = rgb.make_rgb(x)
    assert np.isfinite(img).all()
    assert has(flags, Q.BLANK).tolist() == [True, True, True, False]
    assert has(flags, Q.NAN_PIXELS).tolist() == [False, False, True, True]
    assert not has(flags[3], Q.NO_CENTRAL_SOURCE)  # background came from the inner pixels


def test_no_central_source_and_saturation() -> None:
    x = stamps(4, amp=[0, 200, 200, 20000])
    x[2] = (
        stamps(1, amp=0, seed=9)[0]
        + 200 * psf(x0=30, y0=8)[None] * np.array([1, 1, 1])[:, None, None]
    )
    _, flags = rgb.make_rgb(x)
    assert has(flags, Q.NO_CENTRAL_SOURCE).tolist() == [True, False, True, False]
    assert has(flags, Q.SATURATED).tolist() == [False, False, False, True]
    _, flags = rgb.make_rgb(x, dataclasses.replace(rgb.RGBParams(), saturation_dn=None))
    assert not has(flags, Q.SATURATED).any()


def test_faint_source_is_detected_at_catalog_limit() -> None:
    # a W1 ~ 5-sigma catalog source: ~23 DN total over a 2-px-sigma PSF
    amp = 23.0 / (2 * math.pi * 2.0**2)
    _, flags = rgb.make_rgb(stamps(200, amp=amp, seed=4))
    assert has(flags, Q.NO_CENTRAL_SOURCE).mean() < 0.2
    _, flags = rgb.make_rgb(stamps(200, amp=0.0, seed=5))
    assert has(flags, Q.NO_CENTRAL_SOURCE).mean() > 0.95


@pytest.mark.parametrize(
    ("shape", "dtype", "match"),
    [
        ((2, 4, S, S), np.float32, "bands"),
        ((2, 3, S, S + 1), np.float32, r"\(N, 3, S, S\)"),
        ((3, S, S), np.float32, r"\(N, 3, S, S\)"),
        ((2, 3, 8, 8), np.float32, "smaller"),
        ((2, 3, S, S), np.complex64, "real numbers"),
        ((2, 3, S, S), object, "real numbers"),
    ],
)
def test_bad_input_raises(shape: tuple[int, ...], dtype: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        rgb.make_rgb(np.zeros(shape, dtype=dtype))


# ---------------------------------------------------------------------------------------------
# Parameters


def test_params_round_trip_through_json() -> None:
    p = rgb.RGBParams(softening_dn=(0.9, 1.2, 15.0), saturation_dn=None, clip_iters=1)
    d = json.loads(json.dumps(p.to_dict()))
    assert d["version"] == rgb.RGB_FORMAT_VERSION and d["bands"] == ["W1", "W2", "W3"]
    assert rgb.RGBParams.from_dict(d) == p
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.out_size = 64  # type: ignore[misc]


def test_params_refuse_bad_records() -> None:
    d = rgb.RGBParams().to_dict()
    with pytest.raises(ValueError, match="did you mean 'clip_sigma'"):
        rgb.RGBParams.from_dict({**d, "clip_sigmma": 2.0})
    with pytest.raises(ValueError, match="lacks"):
        rgb.RGBParams.from_dict({k: v for k, v in d.items() if k != "full_scale"})
    with pytest.raises(ValueError, match="version"):
        rgb.RGBParams.from_dict({**d, "version": 99})
    with pytest.raises(ValueError, match="bands"):
        rgb.RGBParams.from_dict({**d, "bands": ["W2", "W1", "W3"]})


@pytest.mark.parametrize(
    "kwargs",
    [
        {"out_size": 1},
        {"softening_dn": (1.0, 2.0)},
        {"softening_dn": (1.0, -2.0, 3.0)},
        {"full_scale": 1.0},
        {"border_px": 0},
        {"clip_sigma": 0.0},
        {"saturation_dn": 0.0},
    ],
)
def test_params_validate(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="invalid RGBParams"):
        rgb.RGBParams(**kwargs)  # type: ignore[arg-type]


def test_fit_softening_measures_band_noise() -> None:
    p = rgb.fit_softening(stamps(100, amp=50), noise_multiple=1.5)
    np.testing.assert_allclose(p.softening_dn, 1.5 * NOISE, rtol=0.05)
    with pytest.raises(ValueError):
        rgb.fit_softening(np.zeros((0, 3, S, S)))


# ---------------------------------------------------------------------------------------------
# Catalog features


def catalog_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "w1mpro": [15.0, 16.0, 14.0, np.nan],
            "w2mpro": [14.0, 15.5, 13.9, 14.0],
            "w3mpro": [11.0, 12.0, 10.0, 11.0],
            "w1sigmpro": [0.03, 0.05, np.nan, 0.03],
            "w2sigmpro": [0.04, 0.06, 0.05, 0.04],
            "w3sigmpro": [0.1, np.nan, 0.2, 0.1],
            "w3snr": [12.0, 1.2, 1.9, 8.0],
        }
    )


def test_catalog_features_values_and_fills() -> None:
    f = features.catalog_features(catalog_frame())
    assert f.shape == (4, len(features.FEATURE_NAMES)) and f.dtype == np.float32
    assert np.isfinite(f).all()
    col = {name: f[:, i] for i, name in enumerate(features.FEATURE_NAMES)}
    np.testing.assert_allclose(col["w1_w2"], [1.0, 0.5, 0.1, 0.0], atol=1e-6)
    np.testing.assert_allclose(
        col["w2_w3"], [3.0, features.W2_W3_FILL, features.W2_W3_FILL, 3.0], atol=1e-6
    )
    np.testing.assert_allclose(col["w1"], [15.0, 16.0, 14.0, features.W1_FILL])
    np.testing.assert_allclose(col["w1_sigma"], [0.03, 0.05, features.SIGMA_FILL, 0.03], rtol=1e-6)
    np.testing.assert_allclose(
        col["w3_sigma"], [0.1, features.SIGMA_FILL, features.SIGMA_FILL, 0.1], rtol=1e-6
    )
    assert col["w3_detected"].tolist() == [1.0, 0.0, 0.0, 1.0]


def test_catalog_flags() -> None:
    df = catalog_frame()
    flags = features.catalog_flags(df)
    assert has(flags, Q.W3_UNDETECTED).tolist() == [False, True, True, False]
    assert has(flags, Q.BAD_INPUT).tolist() == [False, False, False, True]
    assert features.w3_undetected(df).tolist() == [False, True, True, False]


def test_catalog_features_accept_nullable_and_object_columns() -> None:
    df = catalog_frame().astype("Float64")
    df.loc[0, "w3snr"] = pd.NA
    obj = catalog_frame().astype(object)
    obj.loc[1, "w2sigmpro"] = None
    for frame in (df, obj):
        f = features.catalog_features(frame)
        assert np.isfinite(f).all() and len(f) == 4
    assert features.catalog_features(df)[0, features.FEATURE_NAMES.index("w3_detected")] == 0.0


def test_catalog_features_refuse_bad_frames() -> None:
    with pytest.raises(ValueError, match=r"\['w3snr'\]"):
        features.catalog_features(catalog_frame().drop(columns="w3snr"))
    bad = catalog_frame().astype(object)
    bad.loc[2, "w1mpro"] = "bright"
    with pytest.raises(ValueError, match="w1mpro"):
        features.catalog_features(bad)
    assert features.catalog_features(catalog_frame().iloc[:0]).shape == (
        0,
        len(features.FEATURE_NAMES),
    )


# ---------------------------------------------------------------------------------------------
# The torch twin (the inference actor's, on the model's device)


def _hard_stamps() -> np.ndarray:
    """Every case the transform treats specially, in one batch of 12."""
    x = stamps(12, amp=[0, 10, 100, 1000, 5000, 50, 200, 20000, 3, 30, 300, 3000], seed=4)
    x[1, 0, :4, :] += 40.0  # a neighbour in the border
    x[2, 1, 10:14, 3:6] = np.nan  # masked pixels
    x[3, 2] = 7.0  # constant W3
    x[4] = 0.0  # zero-filled
    x[5, 1] = np.nan  # a band missing
    x[6, 0, :2, :] = x[6, 0, :, :2] = x[6, 0, -2:, :] = x[6, 0, :, -2:] = np.nan  # masked border
    x[8, 0, 18, 18] = np.inf
    return x


@pytest.mark.parametrize("params", [rgb.RGBParams(), rgb.RGBParams(clip_iters=0, out_size=64)])
def test_torch_twin_equals_numpy(params: rgb.RGBParams) -> None:
    from iic_survey.stamps.rgb_torch import make_rgb_torch

    x = np.concatenate([_hard_stamps(), stamps(300, seed=5)])  # more than one numpy chunk
    want, want_flags = rgb.make_rgb(x, params)
    got, got_flags = make_rgb_torch(torch.from_numpy(x), params)
    assert got.dtype == torch.float32 and got.shape == want.shape
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(got_flags.numpy().astype(np.uint32), want_flags)
    ints = np.round(np.nan_to_num(x[:20], nan=0.0, posinf=0.0) * 10).astype(np.int32)
    np.testing.assert_allclose(
        make_rgb_torch(torch.from_numpy(ints), params)[0].numpy(),
        rgb.make_rgb(ints, params)[0],
        rtol=0,
        atol=1e-5,
    )
    empty, flags0 = make_rgb_torch(torch.zeros((0, 3, S, S)), params)
    assert empty.shape == (0, 3, params.out_size, params.out_size) and flags0.shape == (0,)


@pytest.mark.parametrize("twin", ["numpy", "torch"])
def test_an_image_does_not_depend_on_its_batch(twin: str) -> None:
    """Bit-identical alone, among others, at any batch length (chunk edges included)."""
    from iic_survey.stamps.rgb_torch import make_rgb_torch

    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if twin == "numpy":
            return rgb.make_rgb(x)
        img, fl = make_rgb_torch(torch.from_numpy(x))
        return img.numpy(), fl.numpy().astype(np.uint32)

    pool = np.concatenate([_hard_stamps(), stamps(60, seed=7, amp=np.geomspace(1, 3e3, 60))])
    rng = np.random.default_rng(3)
    alone = [run(pool[i : i + 1]) for i in range(len(pool))]
    for n in (2, 5, 127, 128, 129, 301):
        pick = rng.choice(len(pool), size=n, replace=n > len(pool))
        img, flags = run(pool[pick])
        for row, i in enumerate(pick):
            np.testing.assert_array_equal(img[row], alone[i][0][0], err_msg=f"batch of {n}")
            assert flags[row] == alone[i][1][0]


def test_torch_twin_refuses_bad_shapes() -> None:
    from iic_survey.stamps.rgb_torch import make_rgb_torch

    with pytest.raises(ValueError, match="must be"):
        make_rgb_torch(torch.zeros((2, 2, S, S)))
    with pytest.raises(ValueError, match="smaller"):
        make_rgb_torch(torch.zeros((2, 3, 6, 6)))


def test_cc_flags_mark_artefacts_and_refuse_unreadable_values() -> None:
    df = pd.concat([catalog_frame()] * 2, ignore_index=True).iloc[:8].copy()
    df["cc_flags"] = ["0000", "D000", "0H00", "00DH", "h0P0", "d000", None, "000"]
    flags = features.catalog_flags(df)
    # upper-case D/H/O/P in W1 or W2 only; W3/W4 and lower case are not artefacts
    assert has(flags, Q.ARTEFACT).tolist() == [False, True, True, False, False, False, False, False]
    assert has(flags, Q.BAD_INPUT)[6:].tolist() == [True, True]  # null, wrong length
    assert not has(flags, Q.BAD_INPUT)[[0, 1, 2, 4, 5]].any()
    # an artefact is still classified, but it is not clean
    assert not unclassifiable(np.array([int(Q.ARTEFACT)]))[0]
    assert not clean(np.array([int(Q.ARTEFACT)]))[0] and clean(np.array([int(Q.W3_UNDETECTED)]))[0]


def test_readme_states_the_clean_mask_this_code_uses() -> None:
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    stated = {int(v) for v in re.findall(r"NOT_CLEAN` = (\d+)", text)}
    stated |= {int(v) for v in re.findall(r"quality_flags & (\d+)\) == 0", text)}
    assert stated == {int(NOT_CLEAN)}
