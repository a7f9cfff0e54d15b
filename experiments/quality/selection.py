"""The quality run's calibration-per-depth and selection part (issue 18), for the quality study.

:func:`analyse` takes the quality run's work folder and one trained model directory and
measures, on the run's own splits:

* ECE per W1 bin of the test split, uncalibrated, with the single temperature and with the
  model's ``T(W1)``, next to each bin's validation count (the goal counts bins with at least
  300 validation sources) and the ECE a perfectly calibrated model would show on that bin from
  its size alone (:func:`iic_survey.core.calibration.ece_noise_floor`);
* that ``T(W1)`` keeps every arg-max (same classes, same accuracy);
* the recommended ``confidence`` thresholds as the model directory's
  ``selection/thresholds.parquet`` has them (:mod:`iic_survey.training.selection_tables`): chosen on
  the test split's choose part, verified on its verify part (a keyed hash of ``cntr``), which
  neither chose a threshold, fitted the calibration nor picked the checkpoint (those used the
  validation split); per (class, target) the verified purity, its 95 % lower bound and
  whether the promise held.

:func:`lines` renders the result as Markdown for the quality section.
"""

from __future__ import annotations

import itertools
import pathlib
from typing import Any

import numpy as np

ECE_GOAL = 0.03
MIN_VAL = 300


def _w1_bins(edges: np.ndarray, w1: np.ndarray) -> list[np.ndarray]:
    return [(w1 >= lo) & (w1 < hi) for lo, hi in itertools.pairwise(edges)]


def _predict(bundle: Any, rows: dict[str, Any]) -> np.ndarray:
    import torch

    from iic_survey.model.ood import predict

    with torch.inference_mode():
        logits, _ = predict(bundle.model, rows["image"], rows["features"], torch.device("cpu"), 64)
    return np.asarray(logits, dtype=np.float64)


def _oracle_t(z: np.ndarray, y: np.ndarray) -> float:
    from iic_survey.core import metrics

    return metrics.fit_temperature(z, y) if len(y) else 1.0


def _depth_rows(bundle: Any, val: dict[str, Any], test: dict[str, Any], z: np.ndarray) -> list:
    from iic_survey.core import metrics
    from iic_survey.core.calibration import ece_noise_floor
    from iic_survey.training.evaluate import ECE_W1_EDGES

    y, w1 = np.asarray(test["label"]), np.asarray(test["w1mpro"], dtype=np.float64)
    cal = bundle.calibration
    p_unc, p_one = metrics.softmax(z), metrics.softmax(z, cal.temperature)
    p_dep = cal.probabilities(z, w1)
    val_w1 = np.asarray(val["w1mpro"], dtype=np.float64)
    out = []
    for (lo, hi), sel, vsel in zip(
        itertools.pairwise(ECE_W1_EDGES),
        _w1_bins(ECE_W1_EDGES, w1),
        _w1_bins(ECE_W1_EDGES, val_w1),
        strict=True,
    ):
        ece = metrics.expected_calibration_error
        out.append(
            {
                "w1_lo": float(lo),
                "w1_hi": float(hi),
                "n_test": int(sel.sum()),
                "n_val": int(vsel.sum()),
                "ece_uncalibrated": ece(y[sel], p_unc[sel]),
                "ece_single": ece(y[sel], p_one[sel]),
                "ece_depth": ece(y[sel], p_dep[sel]),
                "noise_floor": ece_noise_floor(p_dep[sel], draws=100),
                # the best any single temperature could do on this bin: fitted on its own truth
                "ece_oracle": ece(y[sel], metrics.softmax(z[sel], _oracle_t(z[sel], y[sel]))),
                "accuracy": float((p_dep[sel].argmax(1) == y[sel]).mean()),
            }
        )
    return out


def analyse(work: pathlib.Path, model_dir: pathlib.Path) -> dict[str, Any]:
    """Calibration per depth and selection on the quality run's splits (see the module)."""
    from iic_survey.core import metrics
    from iic_survey.core.calibration import DepthCalibration
    from iic_survey.model.directory import load_model_dir
    from iic_survey.training.evaluate import read_rows

    bundle = load_model_dir(str(model_dir))
    if bundle.calibration is None:
        bundle = _with_calibration(bundle, DepthCalibration.constant(bundle.temperature))
    val, test = read_rows(str(work / "ts"), "val"), read_rows(str(work / "ts"), "test")
    z_val, z_test = _predict(bundle, val), _predict(bundle, test)
    cal = bundle.calibration
    w1_test = np.asarray(test["w1mpro"], dtype=np.float64)
    same = np.array_equal(
        cal.probabilities(z_test, w1_test).argmax(1),
        metrics.softmax(z_test, cal.temperature).argmax(1),
    )
    res: dict[str, Any] = {
        "model_dir": str(model_dir),
        "calibration": cal.to_dict(),
        "depth": _depth_rows(bundle, val, test, z_test),
        "same_argmax": bool(same),
        "n_val": len(val["label"]),
        "n_test": len(test["label"]),
    }
    res["selection"] = _selection(bundle, val, test, z_val, z_test)
    return res


def _with_calibration(bundle: Any, cal: Any) -> Any:
    import dataclasses

    return dataclasses.replace(bundle, calibration=cal)


def _selection(
    bundle: Any, val: dict[str, Any], test: dict[str, Any], z_val: np.ndarray, z_test: np.ndarray
) -> dict[str, Any]:
    """Thresholds chosen on the test split's choose part, verified on its verify part (the
    same tables training writes; ``val`` and ``z_val`` are unused, kept for the caller)."""
    from iic_survey.core.flags import clean
    from iic_survey.training import selection_tables

    w1 = np.asarray(test["w1mpro"], dtype=np.float64)
    th = selection_tables.selection_tables(test, bundle.calibration.probabilities(z_test, w1))
    th = th["thresholds"]
    keep = clean(np.asarray(test["quality_flags"]))
    verify = selection_tables.verify_part(np.asarray(test["cntr"]))
    return {"n_choose_clean": int((keep & ~verify).sum()),
            "n_verify_clean": int((keep & verify).sum()),
            "promises": selection_tables.promises_held(th),
            "verified": th.replace({np.nan: None}).to_dict("records")}  # fmt: skip


def _fmt_bin(lo: float, hi: float) -> str:
    if not np.isfinite(lo):
        return f"< {hi:g}"
    if not np.isfinite(hi):
        return f">= {lo:g}"
    return f"{lo:g}-{hi:g}"


def lines(res: dict[str, Any]) -> list[str]:
    """Markdown of :func:`analyse`'s result."""
    cal = res["calibration"]
    knots = ", ".join(
        f"{k:.2f}: {np.exp(v):.3f}"
        for k, v in zip(cal["knots_w1"], cal["log_temperature"], strict=True)
    )
    out = [
        "#### Calibration at every depth (issue 18)",
        "",
        f"`T(W1)` fitted on the validation split ({res['n_val']:,} sources); knots (W1: T) "
        f"{knots}; single temperature {cal['temperature']:.3f}. ECE on the test split "
        f"({res['n_test']:,} sources), 15 equal-width confidence bins; goal: ECE <= {ECE_GOAL} "
        f"in every W1 bin with at least {MIN_VAL} validation sources. The noise floor is the "
        "mean ECE of a perfectly calibrated model on the same sources (labels drawn from the "
        "calibrated probabilities, 100 draws): what the bin's size alone gives. 'Oracle T' is a "
        "temperature fitted on the test bin's own truth: the best any temperature can do there.",
        "",
        "| W1 | val | test | ECE uncalibrated | single T | T(W1) | oracle T | noise floor | goal |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in res["depth"]:
        counted = r["n_val"] >= MIN_VAL
        verdict = (
            ("**met**" if r["ece_depth"] <= ECE_GOAL else "**missed**")
            if counted
            else f"not counted (< {MIN_VAL} val)"
        )
        out.append(
            f"| {_fmt_bin(r['w1_lo'], r['w1_hi'])} | {r['n_val']} | {r['n_test']} | "
            f"{r['ece_uncalibrated']:.4f} | {r['ece_single']:.4f} | {r['ece_depth']:.4f} | "
            f"{r['ece_oracle']:.4f} | {r['noise_floor']:.4f} | {verdict} |"
        )
    out += _selection_lines(res["selection"])
    out += [
        "",
        "Same arg-max with `T(W1)` as with the single temperature on every test source: "
        f"**{'yes' if res['same_argmax'] else 'NO'}** (so the accuracy is unchanged).",
        "",
    ]
    return out


def _selection_lines(sel: dict[str, Any]) -> list[str]:
    """Markdown of the thresholds' verification (a selection result of an older run, measured
    on the validation split, has no ``verified`` key and is not rendered)."""
    if "verified" not in sel:
        return ["", "(The thresholds of this run were not verified on a disjoint part.)"]

    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}"

    out = [
        "",
        f"**Recommended `confidence` thresholds, promise by promise.** Chosen on the test "
        f"split's choose part ({sel['n_choose_clean']:,} clean sources: the smallest threshold "
        "whose purity's one-sided 95 % lower bound reaches the target), verified on its verify "
        f"part ({sel['n_verify_clean']:,} clean sources, a keyed hash of `cntr`; used for "
        "nothing else: calibration and checkpoint choice used the validation split). Both parts "
        f"are class-balanced. **{sel['promises']}.**",
        "",
        "| class | target purity | threshold | purity (choose) | verified purity | 95 % lower "
        "bound | verified selected (correct) | verified completeness | verdict |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in sel["verified"]:
        out.append(
            f"| {r['class']} | {r['target_purity']:.2f} | {f(r['threshold'])} | "
            f"{f(r['purity'])} | {f(r['verify_purity'])} | {f(r['verify_purity_lo95'])} | "
            f"{r['verify_n_selected']} ({r['verify_n_correct']}) | "
            f"{f(r['verify_completeness'])} | {r['verdict']} |"
        )
    return out
