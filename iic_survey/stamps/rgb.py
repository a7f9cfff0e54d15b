"""RGB synthesis: W1/W2/W3 stamps in DN -> the model's 80x80 three-channel images.

Pure numpy, no I/O; the transform is fixed by :class:`RGBParams`, which is stored with the
model so that training and inference cannot drift apart. The catalog colour features that go
with the images are in :mod:`iic_survey.stamps.features`.

Channels are W1, W2, W3 -> 0, 1, 2 (R, G, B when displayed). Per stamp and band:

1. **Background and noise** from the stamp border (a ring ``border_px`` wide): a sigma-clipped
   median (``clip_iters`` rounds at ``clip_sigma``) and a robust sigma, half the 16-84 %
   spread of the kept pixels. The border is sorted once; each clipping round then only counts.
2. **NaN/inf pixels** are replaced by that background and the row gets ``NAN_PIXELS``.
3. **Stretch**: ``asinh((DN - background) / softening_dn[band]) / asinh(full_scale)``. The
   softening is fixed per band, in DN, about the band's pixel noise (W3's is an order of
   magnitude larger than W1's), so noise maps to about +-1 softening in every band while
   sources compress logarithmically; a pixel ``full_scale`` softenings above background maps to
   1.0. Fixed per band (not per stamp) so that brightness and colour keep their meaning across
   the sky; :func:`fit_softening` sets it from a sample of stamps.
4. **Resize** to ``out_size`` with separable bilinear interpolation, align_corners=False
   (pixel centres at ``(j + 0.5) * S / out - 0.5``, clamped at the edges; the convention of
   ``torch.nn.functional.interpolate(..., align_corners=False)`` and PIL), as two taps per
   axis (element-wise products and sums, no matrix product: see :func:`resize_bilinear`). The
   stretch runs before the resize, on the 5.8x fewer input pixels.

**Batch invariance.** A stamp's image and flags are bit-identical whatever other stamps share
its call and however many there are: every per-stamp statistic is a sort, a count or a sum
over that stamp's own contiguous pixels (the last axis), and the resize has no reduction at
all, so no BLAS blocking or SIMD width can reorder a stamp's arithmetic.

Flags (``QualityFlag``): ``NAN_PIXELS``; ``BLANK`` when a band's stamp is constant (or all
NaN); ``NO_CENTRAL_SOURCE`` when the W1 flux in the central box (``2 * central_px + 1``
pixels square) is below ``central_snr`` times its noise; ``SATURATED`` when the W1 central peak
exceeds ``saturation_dn`` (a heuristic; ``None`` turns it off).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import numpy as np

from iic_survey.core.config import did_you_mean
from iic_survey.core.flags import QualityFlag

BAND_NAMES: tuple[str, ...] = ("W1", "W2", "W3")
"""Band of each image channel, in channel order."""

RGB_FORMAT_VERSION = 1
"""Version of the transform recorded by :meth:`RGBParams.to_dict`; bump it when the algorithm
changes, so that a model trained on the old transform is refused rather than fed wrong images."""

_SIGMA_FROM_QUANTILES = 0.5  # (q84 - q16) / 2 = sigma for a Gaussian
_Q16, _Q84 = 0.15865525, 0.84134475
_MIN_BORDER = 8  # fewer finite border pixels than this: estimate from the whole stamp


@dataclasses.dataclass(frozen=True)
class RGBParams:
    """The recorded stamp -> image transform (stored in ``model.json`` as :meth:`to_dict`)."""

    out_size: int = 80
    """Side of the output images in pixels (IICnet takes 80)."""
    border_px: int = 2
    """Width of the stamp border ring used for background and noise (280 px of a 37 px stamp,
    22-25 arcsec from the source: outside the PSF core in every band)."""
    clip_sigma: float = 3.0
    """Border pixels further than this many sigma from the median are rejected (neighbours)."""
    clip_iters: int = 2
    """Rounds of clipping (the median and quantile sigma are robust already; two rounds take
    out a neighbour's wings)."""
    softening_dn: tuple[float, float, float] = (1.6, 1.25, 17.0)
    """asinh softening per band (W1, W2, W3) in DN: 1.5x the median pixel noise of the
    synthetic sky's Atlas tiles (1.09, 0.84, 11.4 DN; W3 is ~5 mag shallower at its zero point).
    Refit on real stamps with :func:`fit_softening` before training on them."""
    full_scale: float = 1000.0
    """Flux, in softenings above background, that maps to 1.0."""
    central_px: int = 2
    """Half-width of the central box for the NO_CENTRAL_SOURCE test (5x5 px by default)."""
    central_snr: float = 3.0
    """W1 signal-to-noise in the central box below which NO_CENTRAL_SOURCE is set."""
    saturation_dn: float | None = 3000.0
    """W1 central peak (DN above background) from which SATURATED is set; None: never."""

    def __post_init__(self) -> None:
        soft = tuple(float(s) for s in self.softening_dn)
        object.__setattr__(self, "softening_dn", soft)
        checks = [
            (isinstance(self.out_size, int) and self.out_size >= 2, "out_size must be an int >= 2"),
            (isinstance(self.border_px, int) and self.border_px >= 1, "border_px must be >= 1"),
            (self.clip_sigma > 0, "clip_sigma must be > 0"),
            (isinstance(self.clip_iters, int) and self.clip_iters >= 0, "clip_iters must be >= 0"),
            (
                len(soft) == len(BAND_NAMES) and all(math.isfinite(s) and s > 0 for s in soft),
                f"softening_dn must be {len(BAND_NAMES)} positive numbers (W1, W2, W3)",
            ),
            (math.isfinite(self.full_scale) and self.full_scale > 1, "full_scale must be > 1"),
            (isinstance(self.central_px, int) and self.central_px >= 0, "central_px must be >= 0"),
            (self.central_snr >= 0, "central_snr must be >= 0"),
            (
                self.saturation_dn is None or self.saturation_dn > 0,
                "saturation_dn must be > 0 or None",
            ),
        ]
        errors = [msg for ok, msg in checks if not ok]
        if errors:
            raise ValueError(f"invalid RGBParams: {'; '.join(errors)}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, with the transform version and channel order."""
        d = dataclasses.asdict(self)
        d["softening_dn"] = list(self.softening_dn)
        return {"version": RGB_FORMAT_VERSION, "bands": list(BAND_NAMES), **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RGBParams:
        """Rebuild from :meth:`to_dict`; refuses unknown or missing keys and other versions.

        Every field must be present: a stored model must not silently pick up a default that
        changed after it was trained.
        """
        d = dict(d)
        version = d.pop("version", None)
        if version != RGB_FORMAT_VERSION:
            raise ValueError(
                f"RGB transform version {version!r} is not the supported {RGB_FORMAT_VERSION}; "
                "the model was trained with a different transform"
            )
        bands = d.pop("bands", list(BAND_NAMES))
        if list(bands) != list(BAND_NAMES):
            raise ValueError(f"channel bands {bands} differ from {list(BAND_NAMES)}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in d if k not in names]
        if unknown:
            hints = "".join(did_you_mean(k, names) for k in unknown)
            raise ValueError(f"unknown RGBParams keys {unknown}{hints}")
        missing = [n for n in names if n not in d]
        if missing:
            raise ValueError(f"RGBParams record lacks {missing}")
        return cls(**{**d, "softening_dn": tuple(d["softening_dn"])})


# ---------------------------------------------------------------------------------------------
# Stamp statistics


def _ring_mask(size: int, width: int) -> np.ndarray:
    mask = np.ones((size, size), dtype=bool)
    mask[width:-width, width:-width] = False
    return mask


def clipped_stats(
    values: np.ndarray, clip_sigma: float, clip_iters: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sigma-clipped median, robust sigma and count of finite values along the last axis.

    Each row is sorted once (NaNs sort last); a clipping round keeps the contiguous range of
    sorted values within ``clip_sigma`` sigma of the median, so it is a count, not a re-sort.
    The sigma is half the 15.9-84.1 % spread of the kept values (linear interpolation between
    order statistics). NaNs are ignored; rows without finite values give NaN.
    """
    lead = values.shape[:-1]
    width = values.shape[-1]
    s = np.sort(values.reshape(-1, width), axis=-1)
    flat = s.reshape(-1)
    base = np.arange(s.shape[0]) * width

    def at(pos: np.ndarray) -> np.ndarray:  # interpolated order statistic of each row
        i0 = np.floor(pos).astype(np.intp)
        frac = (pos - i0).astype(s.dtype)
        i1 = np.minimum(i0 + 1, width - 1)
        v0, v1 = flat[base + i0], flat[base + i1]
        return np.where(frac > 0, v0 + frac * (v1 - v0), v0)

    n_finite = np.count_nonzero(np.isfinite(s), axis=-1)
    hi = n_finite
    lo = np.zeros_like(hi)
    med = sig = np.zeros(s.shape[0], dtype=s.dtype)
    for it in range(clip_iters + 1):
        n = np.maximum(hi - lo, 1) - 1
        med = at(lo + 0.5 * n)
        sig = _SIGMA_FROM_QUANTILES * (at(lo + _Q84 * n) - at(lo + _Q16 * n))
        if it == clip_iters:
            break
        half = clip_sigma * sig
        # NaN compares False, so NaNs never count as kept; ``<=`` keeps every copy of the median
        new_lo = np.count_nonzero(s < (med - half)[:, None], axis=-1)
        new_hi = np.maximum(np.count_nonzero(s <= (med + half)[:, None], axis=-1), new_lo + 1)
        if np.array_equal(new_lo, lo) and np.array_equal(new_hi, hi):
            break
        lo, hi = new_lo, new_hi
    empty = ~np.isfinite(s[:, 0])
    if empty.any():
        med = np.where(empty, np.nan, med)
        sig = np.where(empty, np.nan, sig)
    return med.reshape(lead), sig.reshape(lead), n_finite.reshape(lead)


def _background(x: np.ndarray, params: RGBParams) -> tuple[np.ndarray, np.ndarray]:
    """Per (stamp, band) background and noise from the border, (N, 3) each."""
    ring = _ring_mask(x.shape[-1], params.border_px)
    border = x[:, :, ring]  # (N, 3, B)
    bg, sig, n_finite = clipped_stats(border, params.clip_sigma, params.clip_iters)
    few = n_finite < _MIN_BORDER
    if few.any():  # masked border: use every finite pixel of those stamps
        rows = x[few].reshape(int(few.sum()), -1)
        bg[few], sig[few], _ = clipped_stats(rows, params.clip_sigma, params.clip_iters)
    return bg, sig


def _central_box(size: int, half: int) -> slice:
    c = (size - 1) / 2
    return slice(max(math.floor(c - half), 0), min(math.ceil(c + half), size - 1) + 1)


# ---------------------------------------------------------------------------------------------
# Resizing


def bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) weights of 1-D bilinear resampling, align_corners=False.

    Output pixel ``j`` samples the input at ``(j + 0.5) * size_in / size_out - 0.5``, clamped to
    ``[0, size_in - 1]``; each row has two non-zero weights summing to 1.
    """
    i0, i1, w0, w1 = bilinear_taps(size_in, size_out)
    m = np.zeros((size_out, size_in), dtype=np.float64)
    np.add.at(m, (np.arange(size_out), i0), w0)
    np.add.at(m, (np.arange(size_out), i1), w1)
    return m


def bilinear_taps(
    size_in: int, size_out: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The two non-zero weights of each row of :func:`bilinear_matrix`, as taps.

    Returns ``(i0, i1, w0, w1)``: output pixel ``j`` is ``w0[j] * in[i0[j]] + w1[j] * in[i1[j]]``
    (float64 weights; ``i0 == i1`` at a clamped edge, where ``w1`` is 0).
    """
    src = np.clip((np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5, 0, size_in - 1)
    i0 = np.floor(src).astype(np.intp)
    return i0, np.minimum(i0 + 1, size_in - 1), 1 - (src - i0), src - i0


@functools.lru_cache(maxsize=16)
def _taps32(size_in: int, size_out: int, scale: float) -> tuple[np.ndarray, ...]:
    """:func:`bilinear_taps` with the weights times ``scale``, rounded once to float32."""
    i0, i1, w0, w1 = bilinear_taps(size_in, size_out)
    return i0, i1, (w0 * scale).astype(np.float32), (w1 * scale).astype(np.float32)


def resize_bilinear(
    images: np.ndarray, size_out: int, scale: float = 1.0, out: np.ndarray | None = None
) -> np.ndarray:
    """Resize (..., S, S) images to float32 (..., size_out, size_out), times ``scale``.

    Each output pixel is its two taps per axis, weighted: columns first (the scale rides on
    their weights), then rows. Only element-wise products and sums of two terms, never a matrix
    product: BLAS picks its blocking and kernels by the matrix sizes (so by how many images
    share the call) and by the CPU, and a dot product's rounding follows them. Here every
    pixel's rounding is fixed, whatever the batch and whatever the SIMD width: an image is
    bit-identical alone or among others, on any x86-64 CPU. Written once into ``out`` when
    given (C-contiguous float32 of the output shape).
    """
    s = images.shape[-1]
    lead = images.shape[:-2]
    x = np.ascontiguousarray(images, dtype=np.float32).reshape(-1, s, s)  # (M, S, S)
    c0, c1, cw0, cw1 = _taps32(s, size_out, float(scale))
    r0, r1, rw0, rw1 = _taps32(s, size_out, 1.0)
    cols = np.take(x, c0, axis=2)  # (M, S, O): columns resampled
    cols *= cw0
    cols += np.take(x, c1, axis=2) * cw1
    if out is None:
        out = np.empty((*lead, size_out, size_out), dtype=np.float32)
    dest = out.reshape(-1, size_out, size_out)  # (M, O, O): rows resampled
    np.multiply(np.take(cols, r0, axis=1), rw0[:, None], out=dest)
    dest += np.take(cols, r1, axis=1) * rw1[:, None]
    return out


# ---------------------------------------------------------------------------------------------
# The transform

_CHUNK = 128  # stamps per block: intermediates stay in cache (measured best), memory flat in N


def make_rgb(
    stamps: np.ndarray, params: RGBParams | None = None, out: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Turn W1/W2/W3 stamps into model images and per-row quality flags.

    Parameters
    ----------
    stamps
        (N, 3, S, S) in DN, bands W1, W2, W3; any real dtype; NaN/inf allowed (flagged).
    params
        The transform; default :class:`RGBParams()`.
    out
        Optional C-contiguous float32 (N, 3, out_size, out_size) array to write the images
        into (a reused buffer saves allocating ~77 kB per stamp).

    Returns
    -------
    images
        (N, 3, out_size, out_size) float32, NaN-free.
    flags
        (N,) uint32 :class:`~iic_survey.core.flags.QualityFlag` bits (NAN_PIXELS, BLANK,
        NO_CENTRAL_SOURCE, SATURATED). Every input row has an output row.

    Raises
    ------
    ValueError
        Wrong shape (not (N, 3, S, S) with square stamps big enough for the border and the
        central box) or a non-numeric dtype.
    """
    params = params or RGBParams()
    x = np.asarray(stamps)
    if x.ndim != 4 or x.shape[1] != len(BAND_NAMES) or x.shape[2] != x.shape[3]:
        raise ValueError(f"stamps must be (N, 3, S, S) for bands {BAND_NAMES}, got {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"stamps must be real numbers, got dtype {x.dtype}")
    size = x.shape[-1]
    need = 2 * params.border_px + 2 * params.central_px + 1
    if size < need:
        raise ValueError(f"stamps of {size} px are smaller than border and centre need ({need})")
    n, o = x.shape[0], params.out_size
    if out is None:
        images = np.empty((n, 3, o, o), dtype=np.float32)
    elif out.shape != (n, 3, o, o) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous float32 {(n, 3, o, o)}, got {out.shape}")
    else:
        images = out
    flags = np.zeros(n, dtype=np.uint32)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        flags[start:stop] = _make_chunk(x[start:stop], params, images[start:stop])
    return images, flags


def _make_chunk(stamps: np.ndarray, params: RGBParams, out: np.ndarray) -> np.ndarray:
    x = np.array(stamps, dtype=np.float32, copy=True)  # (n, 3, S, S), modified in place
    n, size = x.shape[0], x.shape[-1]
    flags = np.zeros(n, dtype=np.uint32)
    finite = np.isfinite(x)
    has_nan = ~finite.all(axis=(1, 2, 3))
    bg, sig = _background(x, params)  # (n, 3)
    blank_band = ~np.isfinite(bg)
    bg = np.where(blank_band, 0.0, bg).astype(np.float32)
    sig = np.where(np.isfinite(sig), sig, 0.0).astype(np.float32)
    if has_nan.any():
        flags[has_nan] |= np.uint32(QualityFlag.NAN_PIXELS)
        np.copyto(x, np.broadcast_to(bg[:, :, None, None], x.shape), where=~finite)
    flat = x.reshape(n, 3, -1)
    blank_band |= flat.max(axis=-1) == flat.min(axis=-1)
    flags[blank_band.any(axis=1)] |= np.uint32(QualityFlag.BLANK)

    x -= bg[:, :, None, None]  # flux above background, DN
    box = _central_box(size, params.central_px)
    box_px = (box.stop - box.start) ** 2
    core = np.ascontiguousarray(x[:, 0, box, box]).reshape(n, box_px)  # W1
    npx = core.shape[-1]
    # per stamp over its own contiguous pixels: the sum's order cannot depend on n
    snr = core.sum(axis=-1) / np.maximum(sig[:, 0] * math.sqrt(npx), 1e-30)
    flags[snr < params.central_snr] |= np.uint32(QualityFlag.NO_CENTRAL_SOURCE)
    if params.saturation_dn is not None:
        flags[core.max(axis=-1) >= params.saturation_dn] |= np.uint32(QualityFlag.SATURATED)

    inv_soft = (1.0 / np.asarray(params.softening_dn, dtype=np.float32))[None, :, None, None]
    x *= inv_soft
    # numpy's float32 asinh differs per SIMD level (2.4e-7, SVML on AVX-512); float64 rounded
    # to float32 is the same image on every x86-64 CPU (README, Reproducibility)
    x[...] = np.arcsinh(x.astype(np.float64))
    resize_bilinear(x, params.out_size, scale=1.0 / math.asinh(params.full_scale), out=out)
    return flags


def fit_softening(
    stamps: np.ndarray, params: RGBParams | None = None, noise_multiple: float = 1.5
) -> RGBParams:
    """``params`` with ``softening_dn`` set to ``noise_multiple`` x the median border noise.

    Run once on a sample of training stamps (real or synthetic); the result is stored with
    the model and used unchanged at inference.
    """
    params = params or RGBParams()
    x = np.asarray(stamps, dtype=np.float32)
    if x.ndim != 4 or x.shape[1] != len(BAND_NAMES) or len(x) == 0:
        raise ValueError(f"need a non-empty (N, 3, S, S) sample of stamps, got {x.shape}")
    _, sig = _background(x, params)
    noise = np.nanmedian(np.where(sig > 0, sig, np.nan), axis=0)
    if not np.all(np.isfinite(noise)):
        raise ValueError(f"no band noise measurable in the sample (per band: {noise})")
    w1, w2, w3 = (float(noise_multiple * s) for s in noise)
    return dataclasses.replace(params, softening_dn=(w1, w2, w3))
