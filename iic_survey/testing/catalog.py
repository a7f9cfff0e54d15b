"""Fake catalog rows and a catalog written from them, as the pipeline would write it.

:func:`fake_results` makes result rows like the pipeline's (with a truth table) for sources in
a cap on the sky; :func:`write_catalog` plans, stages, commits and finalizes them into a HATS
catalog through the real writer; :func:`catalog_files` reads a catalog's files back for
byte-for-byte comparisons. Tests and benchmarks of the output format share them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from iic_survey.core import healpix
from iic_survey.core.constants import CLASSES
from iic_survey.core.flags import QualityFlag
from iic_survey.core.paths import PathLike
from iic_survey.output import commit, staging
from iic_survey.output import finalize as output_finalize

ORDER = 3
"""The HEALPix order :func:`write_catalog` partitions at by default."""
CHUNK_ROWS = 400
"""Rows per staged part in :func:`write_catalog` (a pixel bigger than that has several)."""


def fake_results(
    n: int, seed: int = 0, centre: tuple[float, float] = (150.0, 20.0), radius_deg: float = 12.0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Result rows like the pipeline's (and a truth table) for sources in a cap on the sky.

    Predictions follow the truth with realistic confusion; ~3 % of rows are unclassifiable
    (FETCH_FAILED: null probabilities), and low-confidence rows are outliers.
    """
    rng = np.random.default_rng(seed)
    # uniform in a spherical cap around the pole, rotated to ``centre``
    z = rng.uniform(np.cos(np.radians(radius_deg)), 1.0, n)
    phi = rng.uniform(0, 2 * np.pi, n)
    xyz = np.stack([np.sqrt(1 - z**2) * np.cos(phi), np.sqrt(1 - z**2) * np.sin(phi), z], 1)
    ra0, dec0 = np.radians(centre[0]), np.radians(centre[1])
    th = np.pi / 2 - dec0
    ry = np.array([[np.cos(th), 0, np.sin(th)], [0, 1, 0], [-np.sin(th), 0, np.cos(th)]])
    rz = np.array([[np.cos(ra0), -np.sin(ra0), 0], [np.sin(ra0), np.cos(ra0), 0], [0, 0, 1]])
    x, y, zz = rz @ ry @ xyz.T
    ra = np.degrees(np.arctan2(y, x)) % 360
    dec = np.degrees(np.arcsin(np.clip(zz, -1, 1)))
    truth = rng.integers(0, 3, n)
    logits = rng.normal(0, 1.0, (n, 3)) + 2.5 * np.eye(3)[truth]
    p = np.exp(logits)
    p /= p.sum(1, keepdims=True)
    flags = np.where(rng.random(n) < 0.2, int(QualityFlag.W3_UNDETECTED), 0).astype(np.int32)
    bad = rng.random(n) < 0.03
    flags[bad] |= int(QualityFlag.FETCH_FAILED)
    p[bad] = np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        entropy = -(p * np.log(p)).sum(1)
    conf = p.max(1)
    cls = pd.Series(np.array(CLASSES, dtype=object)[np.nan_to_num(p, nan=0).argmax(1)])
    cls[bad] = None
    cntr = rng.choice(10**9, n, replace=False).astype(np.int64) + 10**12
    df = pd.DataFrame(
        {
            "cntr": cntr,
            "designation": [f"J{r:09.5f}{d:+09.5f}" for r, d in zip(ra, dec, strict=True)],
            "ra": ra,
            "dec": dec,
            "w1mpro": rng.uniform(8, 17, n),
            "w2mpro": rng.uniform(8, 16, n),
            "w3mpro": np.where(rng.random(n) < 0.2, np.nan, rng.uniform(5, 12, n)),
            "w4mpro": rng.uniform(5, 9, n),
            **{f"w{b}sigmpro": rng.uniform(0.02, 0.3, n) for b in (1, 2, 3)},
            **{f"w{b}snr": rng.uniform(2, 80, n) for b in (1, 2, 3)},
            "nb": np.ones(n, np.int64),
            "ext_flg": (rng.random(n) < 0.1).astype(np.int64),
            "ph_qual": "AABU",
            "cc_flags": np.where(rng.random(n) < 0.02, "D000", "0000"),
            "p_galaxy": p[:, 0],
            "p_quasar": p[:, 1],
            "p_star": p[:, 2],
            "class": cls,
            "confidence": conf,
            "entropy": np.where(bad, np.nan, entropy),
            "ood_score": np.where(bad, np.nan, rng.gamma(2.0, 1.0, n)),
            "is_outlier": ~bad & (conf < 0.55),
            "subset": np.where(bad, "unsafe", "safe"),
            "quality_flags": flags,
            "model_version": "iicnet-test",
        }
    )
    truth_df = pd.DataFrame({"cntr": cntr, "class": np.array(CLASSES)[truth]})
    return df, truth_df


def write_catalog(
    out: PathLike,
    df: pd.DataFrame,
    order: int = ORDER,
    finalize: bool = True,
    run_args: dict[str, Any] | None = None,
) -> dict[int, int]:
    """Write ``df`` as the pipeline would: plan, stage chunks in any order, commit, finalize.

    ``out`` may be a UPath with storage options (an S3 endpoint). ``run_args`` are recorded in
    ``_run.json`` besides the order and a model name."""
    pixels = healpix.pixel_of(df["ra"].to_numpy(), df["dec"].to_numpy(), order)
    counts = {int(p): int(n) for p, n in zip(*np.unique(pixels, return_counts=True), strict=True)}
    args = {"healpix_order": order, "model": "test", **(run_args or {})}
    staging.prepare_output(out, args)
    staging.write_plan(out, order, counts)
    for pixel in counts:
        rows = df[pixels == pixel].sample(frac=1.0, random_state=pixel)  # any order
        for i, start in enumerate(range(0, len(rows), CHUNK_ROWS)):
            staging.write_part(
                out, order, pixel, f"{pixel}-{i:04d}", rows[start : start + CHUNK_ROWS]
            )
        if not commit.commit_if_complete(out, order, pixel, counts[pixel]):
            raise RuntimeError(f"pixel {pixel} was not committed: its rows are not all staged")
    if finalize:
        output_finalize.finalize(out, {"iic_model_sha256": "0" * 64, "iic_input_catalog": "fake"})
    return counts


def catalog_files(root: str) -> dict[str, bytes]:
    """Relative path -> bytes of every file of a local catalog, except those that record when
    and how it was written (``_run.json``, the properties files)."""
    base = Path(root)
    skip = ("_run.json", "hats.properties", "properties", "collection.properties")
    return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*"))
            if p.is_file() and p.name not in skip}  # fmt: skip
