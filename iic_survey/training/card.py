"""The model card: ``README.md`` in the model directory, written from the measured numbers.

:func:`model_card` is a pure function of what training's finalize measured (the test report,
the run's ``meta``, the training set's manifest, the training domain, and the test split's
labels, calibrated probabilities and W1): what the model was trained on and how it was split,
how good it is at which depth (accuracy and ECE per W1 bin), how it is calibrated, the domain it
was trained in, what it is for and what it must not be used for. A model trained on the
synthetic sky says so first, in its title and its limits. :func:`write_model_card` writes it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from iic_survey.core.constants import CLASSES

CARD_FILE = "README.md"

_SYNTHETIC = (
    "**Trained on a synthetic sky.** The labels, images and photometry it learnt from were "
    "made by `iic_survey.synthetic`, not observed: its accuracy and calibration below are "
    "measured on that synthetic sky and say nothing about real AllWISE sources. Do not use its "
    "classes or probabilities for science on the real sky; train on a labelled real set "
    "(`--source sdss`) first."
)


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _bin_name(lo: float, hi: float) -> str:
    if lo == float("-inf"):
        return f"< {hi:g}"
    return f">= {lo:g}" if hi == float("inf") else f"{lo:g}-{hi:g}"


def depth_rows(
    report: Mapping[str, Any], label: np.ndarray, proba: np.ndarray, w1: np.ndarray
) -> list[str]:
    """The table of accuracy and ECE per W1 bin (the report's bins) on the test split."""
    lines = ["| W1 (mag) | test sources | accuracy | ECE uncalibrated | ECE calibrated |",
             "| --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    w = np.asarray(w1, dtype=np.float64)
    right = np.argmax(proba, axis=1) == np.asarray(label) if len(label) else np.zeros(0, bool)
    for r in report.get("ece_w1") or []:
        lo, hi = float(r["w1_lo"]), float(r["w1_hi"])
        inside = (w >= lo) & (w < hi)
        acc = float(right[inside].mean()) if inside.any() else None
        lines.append(f"| {_bin_name(lo, hi)} | {r['n']} | {_fmt(acc)} | "
                     f"{_fmt(r['ece_uncalibrated'])} | {_fmt(r['ece'])} |")  # fmt: skip
    return lines


def _data_lines(meta: Mapping[str, Any], manifest: Mapping[str, Any]) -> list[str]:
    counts = manifest.get("counts", {})
    lines = [f"Training set `{meta.get('training_set')}` (source: "
             f"`{manifest.get('source', 'unknown')}`), split by a hash of `cntr`:", "",
             "| split | " + " | ".join(CLASSES) + " | total |",
             "| --- |" + " ---: |" * (len(CLASSES) + 1)]  # fmt: skip
    for split in ("train", "val", "test"):
        c = counts.get(split, {})
        total = sum(int(v) for v in c.values())
        lines.append(f"| {split} | " + " | ".join(str(c.get(k, 0)) for k in CLASSES)
                     + f" | {total} |")  # fmt: skip
    return lines


def _quality_lines(report: Mapping[str, Any]) -> list[str]:
    per = report.get("per_class", {})
    lines = [f"Test split, {report.get('n')} sources: accuracy {_fmt(report.get('accuracy'))}, "
             f"macro AUC {_fmt(report.get('macro', {}).get('auc'))}.", "",
             "| class | precision | recall | F1 |", "| --- | ---: | ---: | ---: |"]  # fmt: skip
    for c in CLASSES:
        p = per.get(c, {})
        lines.append(f"| {c} | {_fmt(p.get('precision'))} | {_fmt(p.get('recall'))} | "
                     f"{_fmt(p.get('f1'))} |")  # fmt: skip
    return lines


def _domain_lines(domain: Mapping[str, Any]) -> list[str]:
    names = {"w1": "W1 (mag)", "w1_w2": "W1-W2 (mag)", "w2_w3": "W2-W3 (mag)"}
    lines = [f"The labelled training set spans (quantiles {domain.get('quantiles')}, "
             f"{domain.get('n')} sources):", ""]  # fmt: skip
    for key, name in names.items():
        if key in domain:
            lo, hi = domain[key]
            lines.append(f"- {name}: {_fmt(lo, 2)} to {_fmt(hi, 2)}")
    lines += ["", "Catalog rows outside these ranges are marked `subset = extrapolation`."]
    return lines


def model_card(
    report: Mapping[str, Any],
    meta: Mapping[str, Any],
    manifest: Mapping[str, Any],
    domain: Mapping[str, Any],
    test: Mapping[str, np.ndarray],
) -> str:
    """The card's Markdown. ``test`` holds the test split's ``label``, ``proba`` (calibrated)
    and ``w1``; the other arguments are what finalize measured and records in ``model.json``."""
    synthetic = str(manifest.get("source", "")).lower() == "synthetic"
    title = f"# {meta.get('arch')} star / galaxy / quasar classifier for AllWISE"
    cal = report.get("calibration") or {}
    lines = [title + (" (trained on a synthetic sky)" if synthetic else ""), ""]
    lines += [_SYNTHETIC, ""] if synthetic else []
    lines += ["## Model", "",
              f"Architecture `{meta.get('arch')}` (IICnet family, Zhao et al. 2023), "
              f"{meta.get('n_params', '?')} parameters; inputs: the 80x80 W1/W2/W3 RGB stamp "
              "and / or the catalog colours. Outputs the calibrated probabilities of "
              f"{', '.join(CLASSES)}. Trained {meta.get('epochs')} epochs, best epoch "
              f"{int(meta.get('best_epoch', 0)) + 1}; code version {meta.get('code_version')}.",
              "", "Files: `weights.safetensors` (and the same tensors as `weights.pt`), "
              "`model.json` (configuration, calibration, domain, metrics), `report/`.", "",
              "## Training data and splits", "", *_data_lines(meta, manifest), "",
              "## Quality on the test split", "", *_quality_lines(report), "",
              "### By depth", "", *depth_rows(report, test["label"], test["proba"], test["w1"]),
              "", "## Calibration", "",
              f"Temperature scaling with `log T` piecewise linear in W1 (knots "
              f"{cal.get('knots_w1')}), fitted on {meta.get('n_val')} validation sources; "
              f"single temperature {_fmt(meta.get('temperature'))}. Test ECE "
              f"{_fmt(report.get('ece_uncalibrated'))} uncalibrated, "
              f"{_fmt(report.get('ece_single_temperature'))} with one temperature, "
              f"{_fmt(report.get('ece'))} with T(W1).", "",
              "## Training domain", "", *_domain_lines(domain), "",
              "## Intended use", "",
              "Classifying AllWISE sources into star, galaxy and quasar with calibrated "
              "probabilities, inside the training domain above (`subset = safe` rows of the "
              "catalog), by the `iic_survey` pipeline or the ONNX export "
              "(`python -m iic_survey.model export-onnx`).", "",
              "## Limits", ""]  # fmt: skip
    lines += ["- Trained on a synthetic sky (see above)."] if synthetic else []
    return "\n".join([*lines, *_LIMITS, ""])


_LIMITS = [
    "- Sources fainter or redder than the training domain are extrapolation: the accuracy per "
    "depth above does not cover them.",
    "- Only three classes: other objects (brown dwarfs, planetary nebulae, artefacts) get one "
    "of the three labels; `is_outlier` and `ood_score` flag the unusual.",
    "- Crowded fields, bright-star halos and blends (AllWISE `nb > 1`, `cc_flags`) degrade the "
    "images the model sees.",
    "- A real training set's labels come from spectroscopic surveys whose selection is not the "
    "AllWISE population's; purity and completeness depend on that.",
]


def write_model_card(model_dir: str | Path, text: str) -> Path:
    """Write ``README.md`` into the model directory; return its path."""
    path = Path(model_dir) / CARD_FILE
    path.write_text(text)
    return path
