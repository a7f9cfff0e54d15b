"""The data of the paper study: one synthetic sky with W4 tiles, its training set, W4 stamps.

Built once into ``<workdir>`` and reused on reruns:

* ``<workdir>/sky``: :func:`iic_survey.synthetic.skyfiles.write_sky` with ``bands=(1, 2, 3, 4)``
  (the renderer draws W4 Atlas tiles like the others: its own PSF, depth and noise);
* ``<workdir>/ts``: :func:`iic_survey.training.labels.build_training_set` from that sky, the
  pipeline's W1/W2/W3 stamps exactly as training and inference make them;
* ``<workdir>/w4_<split>.npz``: a fourth channel for the 3-vs-4-band ablation, cut from the W4
  tiles at the same positions (``cut_sources`` with ``CutoutConfig(bands=(4,))``) and stretched
  by the same :func:`iic_survey.stamps.rgb.make_rgb` transform (border background, asinh with a
  softening of 1.5x the W4 border noise fitted on the training stamps, bilinear 37 -> 80 px),
  keyed by ``cntr``.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Any

import numpy as np
import pandas as pd

SPLIT_NAMES = ("train", "val", "test")
COLUMNS = ["cntr", "image", "label", "quality_flags", "w1mpro", "ra", "dec", "coadd_id"]


def sky_config(args: Any) -> Any:
    """The sky of the run (seeded)."""
    from iic_survey.synthetic import skyfiles

    return skyfiles.SkyConfig(
        seed=args.sky_seed,
        n_sources=args.sky_sources,
        field_size_deg=args.field_size,
        bands=(1, 2, 3, 4),
    )


def prepare(args: Any) -> dict[str, Any]:
    """Sky, training set and W4 stamps under ``args.workdir`` (each step skipped when done)."""
    from iic_survey.synthetic import skyfiles
    from iic_survey.training import labels, trainingset

    work = pathlib.Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    cfg = sky_config(args)
    t0 = time.perf_counter()
    if not (work / "sky" / "sky.json").exists():
        print(f"writing the sky {cfg}", flush=True)
        skyfiles.write_sky(work / "sky", cfg)
    if not (work / "ts" / trainingset.MANIFEST).exists():
        print("building the training set", flush=True)
        labels.build_training_set(labels.TrainingSetConfig(sky=str(work / "sky")), str(work / "ts"))
    if not all((work / f"w4_{s}.npz").exists() for s in SPLIT_NAMES):
        write_w4(work)
    manifest = trainingset.read_manifest(str(work / "ts"))
    return {
        "sky": dataclasses.asdict(cfg),
        "counts": manifest["counts"],
        "prep_seconds": time.perf_counter() - t0,
    }


def _w4_raw(work: pathlib.Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """cntr and raw W4 stamps (N, 1, S, S) in DN of one split."""
    from iic_survey.inputs.archive import TileArchive
    from iic_survey.stamps.cutouts import CutoutConfig
    from iic_survey.stamps.cutter import cut_sources
    from iic_survey.training import trainingset

    rows = trainingset.read_split(
        str(work / "ts"), split, columns=["cntr", "ra", "dec", "coadd_id"]
    )
    df = pd.DataFrame(rows)
    archive = TileArchive.from_spec(str(work / "sky"))
    cut = cut_sources(df, archive, CutoutConfig(bands=(4,)))
    return np.asarray(rows["cntr"]), cut.stamps


def write_w4(work: pathlib.Path) -> None:
    """``w4_<split>.npz`` (cntr, image (N, 80, 80)) for every split."""
    from iic_survey.stamps.rgb import RGBParams, fit_softening, make_rgb

    raw = {s: _w4_raw(work, s) for s in SPLIT_NAMES}
    sample = np.repeat(raw["train"][1][:2000], 3, axis=1)  # W4 in all three channel slots
    params = fit_softening(sample, RGBParams())
    params = dataclasses.replace(params, saturation_dn=None)
    for split, (cntr, stamps) in raw.items():
        images, _ = make_rgb(np.repeat(stamps, 3, axis=1), params)
        np.savez(work / f"w4_{split}.npz", cntr=cntr, image=images[:, 0].astype(np.float32))
    print(f"W4 stamps written; softening {params.softening_dn[0]:.2f} DN", flush=True)


def load_split(work: pathlib.Path, split: str, with_w4: bool = False) -> dict[str, np.ndarray]:
    """One split in memory: image (N, 3 or 4, 80, 80), label, cntr, quality_flags, w1mpro."""
    from iic_survey.training import trainingset

    cols = [c for c in COLUMNS if c not in ("ra", "dec", "coadd_id")]
    d = trainingset.read_split(str(work / "ts"), split, columns=cols)
    d["image"] = np.nan_to_num(np.asarray(d["image"], dtype=np.float32))
    if with_w4:
        w4 = np.load(work / f"w4_{split}.npz")
        pos = pd.Series(np.arange(len(w4["cntr"])), index=w4["cntr"])
        idx = pos.loc[d["cntr"]].to_numpy()
        extra = np.nan_to_num(w4["image"][idx])[:, None]
        d["image"] = np.concatenate([d["image"], extra], axis=1)
    return d
