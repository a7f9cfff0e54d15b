"""Tiny models for plumbing tests and benchmarks: the configs, and an untrained model directory.

The model :func:`make_model_dir` writes is untrained, so its classes mean nothing; what is real
is everything around it: the directory layout (``weights.pt`` + ``model.json``), the RGB
parameters, a temperature, and OOD statistics computed from the embeddings of real stamps of
the sky. The network is small enough that CPU inference is not what a test waits for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from iic_survey.inputs.allwise_schema import PIPELINE_COLUMNS
from iic_survey.inputs.catalog import open_catalog
from iic_survey.model import ood
from iic_survey.model.config import ModelConfig
from iic_survey.model.directory import save_model_dir
from iic_survey.model.network import build_model
from iic_survey.stamps.maker import StampMaker
from iic_survey.stamps.rgb import RGBParams

TINY: dict[str, Any] = dict(
    widths=(8, 16, 16, 16, 32, 32), rfb_inter=4, cbam_reduction=4, head_dim=32, dropout=0.0
)
"""``ModelConfig`` keywords of a narrow IICnet (the network's unit tests, the ONNX export)."""
TINY_MODEL = ModelConfig(widths=(4, 8, 8, 8, 8, 16), head_dim=16, rfb_inter=2, cbam_reduction=4)
"""A model small enough that CPU inference is not what a test waits for."""


def make_model_dir(
    path: Path,
    images_url: str,
    catalog_url: str,
    seed: int = 0,
    extra: dict[str, Any] | None = None,
) -> str:
    """Write an untrained tiny model directory with real OOD statistics at ``path``.

    Parameters
    ----------
    path
        The directory to write (created; its parent must exist).
    images_url, catalog_url
        A sky (e.g. ``tiny_sky``): 64 rows of its first pixel give the OOD statistics.
    seed
        Seed of the weights; two seeds give two different model versions.
    extra
        More ``model.json`` entries (e.g. ``calibration``, ``training_domain``); without them
        the directory is like one written before those existed.

    Returns
    -------
    str
        ``path``, as the pipeline's and the jobs' ``model_dir`` argument.
    """
    import torch

    model = build_model(TINY_MODEL, seed=seed).eval()
    cat = open_catalog(catalog_url)
    rows = cat.read_pixel(int(cat.pixels()[0]), 5, columns=PIPELINE_COLUMNS).head(64)
    made = StampMaker.from_spec(images_url)(rows)
    logits, emb = ood.predict(
        model, made["image"], made["features"], torch.device("cpu"), batch_size=64
    )
    stats = ood.ood_statistics(emb, logits, temperature=1.3)
    extra = {
        "rgb": RGBParams().to_dict(),
        "temperature": 1.3,
        "feature_stats": stats,
        "metrics": {},
        "meta": {"note": "untrained test model"},
        **(extra or {}),
    }
    save_model_dir(str(path), model, TINY_MODEL, extra)
    return str(path)
