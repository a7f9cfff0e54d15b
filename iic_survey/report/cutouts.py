"""Cutouts of any sources: their W1/W2/W3 stamps with WCS, and the RGB image the model saw.

:func:`source_cutouts` takes catalog rows (a DataFrame from :func:`iic_survey.output.reader.read`,
a lookup, LSDB ...: ``cntr``, ``ra``, ``dec``, optionally ``designation`` and ``coadd_id``) and
an image archive, and writes per source, into a folder::

    <cntr>_w1.fits, <cntr>_w2.fits, <cntr>_w3.fits   the stamps in DN, with the stamp's WCS
                                                     (the tile's, moved to the stamp) and MAGZP
    <cntr>_rgb.fits                                  the model's input tensor, float32 (3, 80, 80)
    <cntr>_rgb.png                                   the same, 8-bit: [0, 1] -> 0..255, clipped
    cutouts.csv                                      one row per source: files, or why not

The stamps are cut and turned into RGB by the pipeline's own code
(:func:`iic_survey.stamps.cutter.cut_sources`, :func:`iic_survey.stamps.rgb.make_rgb`, with a
model directory's RGB settings), so the images are the ones the model was given for those rows.
A source whose tiles are missing gets a row saying so (its ``status``); the others are written.
:func:`cli` is ``python -m iic_survey cutouts CATALOG --cntr X Y ... | --from-file ids.csv``;
it reads the rows through the catalog's id index and cuts from the image archive recorded in
the catalog's ``_run.json`` (or ``--images``).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from astropy.io import fits
from astropy.wcs import WCS

from iic_survey.core.flags import QualityFlag, describe
from iic_survey.inputs.archive import tile_geometry
from iic_survey.output.reader import read
from iic_survey.output.staging import run_args
from iic_survey.stamps.cutter import cut_sources
from iic_survey.stamps.maker import StampMaker
from iic_survey.stamps.rgb import BAND_NAMES, make_rgb

logger = logging.getLogger(__name__)

MISSING = QualityFlag.FETCH_FAILED | QualityFlag.BAND_MISSING
"""Flags that mean a source's tiles (or one band of them) could not be read."""
INDEX_FILE = "cutouts.csv"


def _maker(images: str, model_dir: str | None, endpoint_url: str | None) -> StampMaker:
    rgb = None
    if model_dir:
        doc = json.loads((Path(model_dir) / "model.json").read_text())
        rgb = dict(doc.get("rgb") or {}) or None
    return StampMaker.from_spec(images, rgb_params=rgb, endpoint_url=endpoint_url)


def source_cutouts(
    rows: pd.DataFrame,
    images: str,
    out_dir: str | Path,
    *,
    model_dir: str | None = None,
    endpoint_url: str | None = None,
) -> pd.DataFrame:
    """Write each row's stamps (FITS with WCS) and RGB image (FITS + PNG) into ``out_dir``.

    Returns one row per source (``cntr``, ``designation``, ``status``: ``ok`` or why not,
    ``tile``, ``files``), also written as ``cutouts.csv``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    maker = _maker(images, model_dir, endpoint_url)
    df = rows.reset_index(drop=True)
    cols = [c for c in ("cntr", "ra", "dec", "coadd_id") if c in df.columns]
    cut = cut_sources(df[cols], maker.archive, maker.cutout)
    rgb, rgb_flags = make_rgb(cut.stamps, maker.rgb)  # (N, 3, 80, 80)
    wcs_cache: dict[tuple[str, int], Any] = {}
    names = df["designation"].tolist() if "designation" in df.columns else [""] * len(df)
    records = []
    for i in range(len(df)):
        cntr = int(df["cntr"].iloc[i])
        flags = int(cut.flags[i]) | int(rgb_flags[i])
        record = {"cntr": cntr, "designation": names[i], "tile": str(cut.tile[i]),
                  "quality_flags": flags}  # fmt: skip
        if flags & int(MISSING) or not cut.tile[i]:
            record |= {"status": "tiles missing: " + " ".join(describe(flags)), "files": ""}
        else:
            source = (cntr, float(df["ra"].iloc[i]), float(df["dec"].iloc[i]), str(cut.tile[i]))
            files = _write_stamps(out, source, cut.stamps[i], maker, wcs_cache)
            files += _write_rgb(out, cntr, rgb[i])
            record |= {"status": "ok", "files": " ".join(files)}
        records.append(record)
    table = pd.DataFrame(records, columns=["cntr", "designation", "status", "tile",
                                           "quality_flags", "files"])  # fmt: skip
    table.to_csv(out / INDEX_FILE, index=False)
    bad = int((table["status"] != "ok").sum())
    logger.info("cutouts of %d sources in %s (%d without tiles)", len(table) - bad, out, bad)
    return table


def _stamp_wcs(geometry: Any, ra: float, dec: float, size: int) -> WCS:
    """The tile's WCS moved to the stamp centred on the pixel nearest (ra, dec)."""
    x, y = geometry.wcs.world_to_pixel_values(ra, dec)
    h = size // 2
    ix, iy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))  # as cut_stamps rounds
    return geometry.wcs.slice((slice(iy - h, iy + h + 1), slice(ix - h, ix + h + 1)))


def _write_stamps(
    out: Path,
    source: tuple[int, float, float, str],
    stamps: np.ndarray,
    maker: StampMaker,
    cache: dict[tuple[str, int], Any],
) -> list[str]:
    """``<cntr>_w<b>.fits`` per band of ``source`` (cntr, ra, dec, tile): DN, the stamp's WCS,
    the tile's MAGZP. ``stamps`` (B, S, S) are the source's stamps."""
    cntr, ra, dec, tile = source
    names = []
    for j, band in enumerate(maker.cutout.bands):
        if (tile, band) not in cache:
            with maker.archive.open_tile(tile, band) as hdu:
                cache[tile, band] = tile_geometry(hdu.header, f"{tile} W{band}")
        geom = cache[tile, band]
        header = _stamp_wcs(geom, ra, dec, stamps.shape[-1]).to_header()
        header["BAND"] = (band, "WISE band")
        header["MAGZP"] = (geom.magzp, "m_Vega = MAGZP - 2.5 log10(DN)")
        header["BUNIT"] = "DN"
        header["COADDID"] = (tile, "AllWISE Atlas tile the stamp was cut from")
        header["CNTR"] = (cntr, "AllWISE cntr")
        name = f"{cntr}_w{band}.fits"
        fits.PrimaryHDU(stamps[j], header=header).writeto(out / name, overwrite=True)
        names.append(name)
    return names


def _write_rgb(out: Path, cntr: int, image: np.ndarray) -> list[str]:
    """``<cntr>_rgb.fits`` (the float tensor) and ``<cntr>_rgb.png`` (8-bit, [0, 1] clipped)."""
    import matplotlib.image

    header = fits.Header()
    header["CHANNELS"] = (",".join(BAND_NAMES), "channel order (R, G, B)")
    fits.PrimaryHDU(np.asarray(image, np.float32), header=header).writeto(
        out / f"{cntr}_rgb.fits", overwrite=True
    )
    pixels = np.round(np.clip(np.nan_to_num(image), 0, 1) * 255).astype(np.uint8)  # (3, H, W)
    matplotlib.image.imsave(out / f"{cntr}_rgb.png", np.moveaxis(pixels, 0, -1), origin="lower")
    return [f"{cntr}_rgb.fits", f"{cntr}_rgb.png"]


def _ids_from_file(path: str) -> list[int | str]:
    """Ids from a CSV with a ``cntr`` and / or ``designation`` column (or one column of ids)."""
    table = pd.read_csv(path, dtype=str)
    cols = [c for c in ("cntr", "designation") if c in table.columns] or [table.columns[0]]
    ids: list[int | str] = []
    for value in table[cols].to_numpy().ravel():
        if isinstance(value, str) and value.strip():
            v = value.strip()
            ids.append(int(v) if v.lstrip("-").isdigit() else v)
    return ids


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m iic_survey cutouts CATALOG --cntr X Y ... | --from-file ids.csv --out DIR``."""
    parser = argparse.ArgumentParser(prog="iic_survey cutouts", description=__doc__.split("\n")[0])
    parser.add_argument("catalog", help="path or URL of an output catalog")
    parser.add_argument("--cntr", nargs="+", type=int, default=[], metavar="X")
    parser.add_argument("--designation", nargs="+", default=[], metavar="J...")
    parser.add_argument("--from-file", help="CSV with a cntr and / or designation column")
    parser.add_argument("--out", required=True, help="folder for the FITS and PNG files")
    parser.add_argument("--images", help="image archive (default: the one in _run.json)")
    parser.add_argument("--model-dir", help="model directory whose RGB settings to use")
    parser.add_argument("--endpoint-url", help="another S3 endpoint (a local S3 server)")
    args = parser.parse_args(argv)
    ids: list[int | str] = [*args.cntr, *args.designation]
    ids += _ids_from_file(args.from_file) if args.from_file else []
    if not ids:
        parser.error("give --cntr, --designation or --from-file")
    images = args.images or run_args(args.catalog).get("images")
    if not images:
        parser.error(f"{args.catalog} records no image archive in _run.json: pass --images")
    rows = read(args.catalog, ["cntr", "designation", "ra", "dec"], ids=ids)
    found = set(rows["cntr"]) | set(rows["designation"])
    missing = [v for v in ids if v not in found]
    for v in missing:
        logger.warning("no source %s in %s", v, args.catalog)
    table = source_cutouts(rows, images, args.out, model_dir=args.model_dir,
                           endpoint_url=args.endpoint_url)  # fmt: skip
    for v in missing:  # the index file lists every id asked for
        table.loc[len(table)] = [v if isinstance(v, int) else None, v if isinstance(v, str)
                                 else "", "not in the catalog", "", 0, ""]  # fmt: skip
    table.to_csv(Path(args.out) / INDEX_FILE, index=False)
    written = int((table["status"] == "ok").sum())
    logger.info("%d of %d sources written to %s (see %s)", written, len(table), args.out,
                INDEX_FILE)  # fmt: skip
    return 0 if written == len(table) else 1
