"""Measure how far the same sky's numbers move across instruction sets (README, Reproducibility).

``python -m scripts.cross_isa WORKDIR`` writes the tiny synthetic sky and an untrained tiny model
directory (tests/fixtures/model.py) under WORKDIR once, then in one subprocess per torch
capability this CPU runs (``default`` ... native; the lower ones with ``ONEDNN_MAX_CPU_ISA``,
``NPY_DISABLE_CPU_FEATURES`` and ``OPENBLAS_CORETYPE`` forced as in scripts/forced_isa.py) cuts
and classifies every source of the sky's first pixels exactly as the pipeline's CPU path does
(StampMaker -> Predictor -> softmax at the model's temperature -> ood_score), and compares each
level with the native one: max |delta p|, max relative |delta ood_score|, and classes equal
except near-ties (top two within 1e-4). Prints one JSON line; nothing is committed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from iic_survey.model import machine
from scripts.forced_isa import forced_env

REPO = Path(__file__).resolve().parents[1]

NEAR_TIE = 1e-4


def prepare(work: Path) -> tuple[str, str]:
    """(sky root, model dir) under ``work``, made once."""
    from iic_survey.synthetic import skyfiles
    from iic_survey.testing.model import make_model_dir

    sky_root, model = work / "sky", work / "model"
    if not (model / "model.json").exists():
        manifest = skyfiles.write_sky(sky_root, skyfiles.tiny_config())
        make_model_dir(model, manifest.images_url, manifest.catalog_url)
    return str(sky_root), str(model)


def classify(sky_root: str, model_dir: str, out: str) -> None:
    """Cut, classify and score the sky's first three pixels; save p, ood_score, cntr."""
    import torch

    from iic_survey.inputs.allwise_schema import PIPELINE_COLUMNS
    from iic_survey.inputs.catalog import open_catalog
    from iic_survey.model.directory import load_model_dir
    from iic_survey.model.inference import Predictor
    from iic_survey.model.network import optimize_for_inference
    from iic_survey.model.ood import OodStats
    from iic_survey.stamps.maker import StampMaker
    from iic_survey.synthetic import skyfiles

    torch.set_num_threads(1)
    manifest = skyfiles.SkyManifest.load(sky_root)
    cat = open_catalog(manifest.catalog_url)
    import pandas as pd

    rows = pd.concat([cat.read_pixel(int(p), 5, columns=PIPELINE_COLUMNS)
                      for p in cat.pixels()[:3]], ignore_index=True)  # fmt: skip
    made = StampMaker.from_spec(manifest.images_url)(rows)
    bundle = load_model_dir(model_dir)
    net = optimize_for_inference(bundle.model.eval())
    logits, emb = Predictor(net, torch.device("cpu"), None, 16)(made["image"], made["features"])
    z = logits.astype(np.float64) / float(bundle.temperature or 1.0)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    ood = OodStats.from_model(bundle.feature_stats)
    score = ood.score(emb) if ood else np.full(len(p), np.nan)
    np.savez(out, p=p, ood=score, cntr=np.asarray(rows["cntr"]), image=made["image"])


def compare(native: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> dict[str, float]:
    p, q = native["p"], other["p"]
    top2 = np.sort(p, axis=1)[:, -2:]
    decided = (top2[:, 1] - top2[:, 0]) > NEAR_TIE
    differ = p.argmax(axis=1) != q.argmax(axis=1)
    return {
        "rows": len(p),
        "images_max_abs_diff": float(np.abs(native["image"] - other["image"]).max()),
        "max_abs_dp": float(np.abs(p - q).max()),
        "max_rel_d_ood": float(np.max(np.abs(native["ood"] - other["ood"]) / native["ood"])),
        "class_changes_beyond_near_ties": int((differ & decided).sum()),
        "class_changes_near_ties": int((differ & ~decided).sum()),
    }


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[0] == "--classify":
        classify(*argv[1:])
        return 0
    work = Path(argv[0] if argv else "/tmp/iic_cross_isa")
    work.mkdir(parents=True, exist_ok=True)
    sky_root, model_dir = prepare(work)
    native = machine.native_capability()
    levels = machine.LEVELS[: machine.LEVELS.index(native) + 1]
    got = {}
    for level in levels:
        env = {**os.environ, **(forced_env(level) if level != native else {})}
        out = str(work / f"{level}.npz")
        cmd = [sys.executable, __file__, "--classify", sky_root, model_dir, out]
        subprocess.run(cmd, env=env, check=True)
        got[level] = dict(np.load(out))
    result = {"cpu": machine.cpu_name(), "native": native, "load_1min": os.getloadavg()[0]}
    result.update({f"{lvl}_vs_{native}": compare(got[native], got[lvl]) for lvl in levels[:-1]})
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
