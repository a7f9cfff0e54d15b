"""The inference stage: a chunk of stamps -> logits -> small, calibrated result rows.

:class:`Classify` is the pipeline's Ray actor (one per GPU): it loads the model directory once
and turns each chunk of cut stamps into the output's columns: the RGB images are made here, on
the model's device (:func:`~iic_survey.stamps.split.finish_images`), the model runs in the
run's precision (:func:`gate_precision` decided it once, on the first chunk), and images never
leave the actor. The arithmetic that turns logits into those columns, :func:`result_rows`, is
pure (softmax at the temperature of each source's depth, confidence, entropy, outlier flag,
``subset``) and takes its settings as one :class:`Scoring`; :class:`~iic_survey.model.ood.
OodStats` scores how far a source's embedding lies from the training set.
:mod:`iic_survey.survey.stages` wires this stage into the Ray Data stream.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch

from iic_survey.core.calibration import DepthCalibration
from iic_survey.core.constants import CLASSES, __version__
from iic_survey.core.flags import unclassifiable
from iic_survey.core.heap import retain_freed_memory
from iic_survey.model.agreement import time_plans
from iic_survey.model.directory import load_model_dir
from iic_survey.model.domain import TrainingDomain, subsets
from iic_survey.model.inference import Predictor, gpu_batch_size, upload
from iic_survey.model.network import optimize_for_inference
from iic_survey.model.ood import OodStats
from iic_survey.model.precision import Gate, View, check_gate, plan
from iic_survey.model.quantized import int8_model, load_gate_set
from iic_survey.output import schema
from iic_survey.stamps.features import FEATURE_NAMES
from iic_survey.stamps.rgb import RGBParams
from iic_survey.stamps.split import finish_images
from iic_survey.survey.config import CPU_MODEL_BATCH

logger = logging.getLogger(__name__)

CPU_SLICE_ROWS = 16 * CPU_MODEL_BATCH
"""Rows a CPU actor makes images of and classifies at once (a multiple of the model's batch), so
the images never exist for a whole chunk (1,902 rows: 146 MB in fp32, with float64 temporaries)."""

DEFAULT_CONFIDENCE_THRESHOLD = 0.6
"""Sources whose largest calibrated probability is below this are marked outliers.

With three classes the largest probability lies in [1/3, 1]. The paper's errors are pairwise
confusions (galaxy<->quasar on dark images, galaxy<->star on bright ones): two classes share the
probability and the largest sits near 0.5. 0.6 keeps as confident only sources whose top class
outweighs the other two together by at least 0.2; since the probabilities are temperature-
calibrated, a flagged source is expected to be wrong at least 40 % of the time. A model directory
may carry its own value (``meta["confidence_threshold"]``, e.g. chosen on its validation split);
``--confidence-threshold`` overrides both.
"""

RESULT_COLUMNS: tuple[str, ...] = tuple(c for c in schema.COLUMNS if c != "_healpix_29")
"""Columns the inference stage produces (``_healpix_29`` is added by the writer)."""
_KEYS = ("_pixel", "_row", "_chunk")
CARRIED: tuple[str, ...] = ("cntr", "designation", "ra", "dec", "w1mpro", "w2mpro", "w3mpro",
                            "w4mpro", "w1sigmpro", "w2sigmpro", "w3sigmpro", "w1snr", "w2snr",
                            "w3snr", "nb", "ext_flg", "ph_qual", "cc_flags")  # fmt: skip
"""Catalog columns copied into the output as they are."""
_W3_DETECTED = FEATURE_NAMES.index("w3_detected")


@dataclasses.dataclass(frozen=True)
class Scoring:
    """How a model's logits become result rows: one per model, fixed for a whole run."""

    calibration: DepthCalibration
    """Probabilities are ``softmax(logits / T(w1))`` (a constant ``T`` for an older model)."""
    confidence_threshold: float
    """A source whose largest calibrated probability is below this is an outlier."""
    ood_threshold: float | None
    """A source whose OOD score is above this is an outlier; None: no OOD test."""
    model_version: str
    """The ``model_version`` column (:func:`model_version`)."""
    domain: TrainingDomain | None = None
    """The training set's W1 and colour ranges (``subset``); None: no row is extrapolation."""


def result_rows(
    batch: Mapping[str, np.ndarray],
    logits: np.ndarray,
    ood: np.ndarray | None,
    scoring: Scoring,
) -> dict[str, np.ndarray]:
    """The output columns of a batch, from its logits and OOD scores (pure; no model needed).

    Rows with unclassifiable flags get null probabilities, class, confidence, entropy and OOD
    score, ``is_outlier`` False (their flags say why they are not classified) and ``subset``
    unsafe. A :data:`CARRIED` column absent from ``batch`` comes out null.
    """
    n = len(logits)
    flags = np.asarray(batch["quality_flags"], dtype=np.int64)
    bad = unclassifiable(flags)
    w1 = _numeric(batch, "w1mpro", n)
    probs = scoring.calibration.probabilities(logits, w1)
    probs[bad] = np.nan
    conf = probs.max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.sum(np.where(probs > 0, probs * np.log(probs), 0.0), axis=1)
    ent[bad] = np.nan
    score = np.full(n, np.nan) if ood is None else np.where(bad, np.nan, ood)
    with np.errstate(invalid="ignore"):
        outlier = conf < scoring.confidence_threshold
        if scoring.ood_threshold is not None:
            outlier |= score > scoring.ood_threshold
    outlier &= ~bad
    labels = np.asarray(CLASSES, dtype=object)[np.argmax(np.nan_to_num(probs, nan=0.0), axis=1)]
    labels[bad] = None
    out = {k: np.asarray(batch[k]) for k in _KEYS}
    out.update({k: _carried(batch, k, n) for k in CARRIED})
    for i, name in enumerate(CLASSES):
        out[f"p_{name}"] = probs[:, i].astype(np.float32)
    out.update({
        "class": labels, "confidence": conf.astype(np.float32),
        "entropy": ent.astype(np.float32), "ood_score": score.astype(np.float32),
        "is_outlier": outlier,
        "subset": subsets(flags, score, scoring.ood_threshold, _inside(batch, scoring, n)),
        "quality_flags": flags.astype(np.int32),
        "model_version": np.full(n, scoring.model_version, dtype=object),
    })  # fmt: skip
    return out


def _carried(batch: Mapping[str, np.ndarray], name: str, n: int) -> np.ndarray:
    if name in batch:
        return np.asarray(batch[name])
    return np.full(n, None, dtype=object)


def _numeric(batch: Mapping[str, np.ndarray], name: str, n: int) -> np.ndarray:
    """A catalog column as float64 (NaN for nulls and when absent)."""
    if name not in batch:
        return np.full(n, np.nan)
    return pd.to_numeric(pd.Series(np.asarray(batch[name])), errors="coerce").to_numpy(
        np.float64, na_value=np.nan
    )


def _inside(batch: Mapping[str, np.ndarray], scoring: Scoring, n: int) -> np.ndarray | None:
    """:meth:`TrainingDomain.inside` of the rows; None without a domain."""
    if scoring.domain is None:
        return None
    features = batch.get("features")
    detected = (
        np.asarray(features)[:, _W3_DETECTED] > 0.5
        if features is not None and len(features)
        else np.isfinite(_numeric(batch, "w3sigmpro", n))
    )
    phot = {b: _numeric(batch, b, n) for b in ("w1mpro", "w2mpro", "w3mpro")}
    return scoring.domain.inside({**phot, "w3_detected": detected})


def model_version(bundle: Any) -> str:
    """``<arch>-<first 12 hex of the weights' sha256>`` (plus the code version that trained it)."""
    meta = dict(getattr(bundle, "meta", None) or {})
    sha = str(meta.get("weights_sha256") or meta.get("sha256") or "unknown")[:12]
    code = str(meta.get("code_version") or __version__)
    return f"{bundle.config.arch}-{sha}-v{code}"


class Classify:
    """Inference actor: loads the model once, turns a chunk into small result rows.

    ``precision`` is the resolved precision of the run (``fp32``, ``bf16``, ``fp16`` or the
    mixed plan ``bf16-late``; the driver's gate, :func:`gate_precision`, decided it);
    ``model_batch_size`` None sizes the forward pass from the GPU's memory on CUDA
    (:func:`~iic_survey.model.inference.gpu_batch_size`) and is
    :data:`~iic_survey.survey.config.CPU_MODEL_BATCH` on CPU.
    """

    def __init__(
        self,
        model_dir: str,
        device: str,
        model_batch_size: int | None,
        confidence_threshold: float | None,
        threads: int = 1,
        precision: str = "fp32",
    ) -> None:
        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        retain_freed_memory()  # each chunk's arrays reuse the last one's pages (core.heap)
        self.device = torch.device(device)
        self.bundle = load_model_dir(model_dir, device=self.device)
        # BN folded into the convolutions, channels-last weights: same outputs to fp32 rounding
        model = optimize_for_inference(self.bundle.model.to(self.device).eval())
        run_plan = plan(precision)  # fp32, bf16, fp16, int8, or the mixed plan bf16-late
        if run_plan.int8:  # calibrated on the gate set, as the gate built it
            model = int8_model(model, model_dir, self.device)
        cuda = self.device.type == "cuda"
        batch = model_batch_size or (
            # the mixed plan's early layers are fp32: size it as fp32 (the larger footprint)
            gpu_batch_size(model, self.device, None if run_plan.modules else run_plan.dtype)
            if cuda
            else CPU_MODEL_BATCH
        )
        self.predictor = Predictor(model, self.device, run_plan.dtype, batch, run_plan.modules)
        self.precision = precision
        self.rgb = RGBParams.from_dict(self.bundle.rgb) if self.bundle.rgb else RGBParams()
        self._pinned: dict[str, torch.Tensor | None] = {}
        meta = dict(self.bundle.meta or {})
        self.ood = OodStats.from_model(self.bundle.feature_stats)
        if self.ood is None:
            logger.warning("model %s has no OOD statistics: ood_score stays null", model_dir)
        self.scoring = Scoring(
            calibration=self.bundle.calibration
            or DepthCalibration.constant(float(self.bundle.temperature or 1.0)),
            domain=TrainingDomain.from_dict(self.bundle.training_domain),
            confidence_threshold=float(
                confidence_threshold
                if confidence_threshold is not None
                else meta.get("confidence_threshold", DEFAULT_CONFIDENCE_THRESHOLD)
            ),
            ood_threshold=self.ood.threshold if self.ood else None,
            model_version=model_version(self.bundle),
        )

    @property
    def version(self) -> str:
        """The ``model_version`` the rows carry."""
        return self.scoring.model_version

    @property
    def batch(self) -> int:
        """Images per forward pass."""
        return self.predictor.batch

    def logits(self, batch: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(logits, embeddings, quality flags) of a chunk, in the run's precision.

        A chunk carries either ``image`` (made by a :class:`~iic_survey.stamps.maker.
        StampMaker`) or ``stamp`` (a :class:`~iic_survey.stamps.split.StampCutter`'s): then the
        RGB transform runs here, on the model's device, and its flags join the row's. On a GPU
        the chunk's results, flags included, come back in one copy; on a CPU, in slices of
        :data:`CPU_SLICE_ROWS` (a row's numbers do not depend on its slice: issue 24).
        """
        n = len(batch["quality_flags"])
        if self.device.type == "cuda" or n <= CPU_SLICE_ROWS:
            return self._logits(batch)
        keys = [k for k in ("quality_flags", "features", "image", "stamp") if k in batch]
        parts = [self._logits({k: batch[k][i : i + CPU_SLICE_ROWS] for k in keys})
                 for i in range(0, n, CPU_SLICE_ROWS)]  # fmt: skip
        return tuple(np.concatenate(p) for p in zip(*parts, strict=True))  # type: ignore[return-value]

    def _logits(self, batch: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`logits` of rows that go through at once."""
        flags = np.asarray(batch["quality_flags"], dtype=np.uint32)
        rgb_flags: Any = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch: read-only Arrow buffers
            f = self._upload("features", batch["features"])
            if "image" in batch:
                images = self._upload("image", batch["image"])
            else:
                stamps = self._upload("stamp", batch["stamp"])
                images, rgb_flags = finish_images(stamps, self.rgb, self.device)
            packed = self.predictor.on_device(images, f)  # (N, D + K) on the device
            if isinstance(rgb_flags, torch.Tensor):  # on the device: ride along in the one copy
                packed = torch.cat([packed, rgb_flags[:, None].float()], dim=1)
            host = packed.cpu().numpy()  # the chunk's one copy back (a no-op on a CPU)
        d, k = self.predictor.dim, len(CLASSES)
        if isinstance(rgb_flags, torch.Tensor):
            rgb_flags = host[:, d + k]  # flags < 2**24: exact in float32
        if rgb_flags is not None:
            flags = flags | np.asarray(rgb_flags).astype(np.uint32)
        return np.ascontiguousarray(host[:, d : d + k]), np.ascontiguousarray(host[:, :d]), flags

    def _upload(self, name: str, array: np.ndarray) -> torch.Tensor:
        tensor, self._pinned[name] = upload(array, self.device, self._pinned.get(name))
        return tensor

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A chunk (``image`` or ``stamp``, ``features`` and catalog columns) -> result rows."""
        logits, emb, flags = self.logits(batch)
        ood = self.ood.score(emb) if self.ood is not None else None
        return result_rows({**batch, "quality_flags": flags}, logits, ood, self.scoring)


def scoring_record(model_dir: str) -> dict[str, Any]:
    """How a model directory's rows are scored, for ``_run.json``: the calibration (``T(W1)``,
    or the single temperature of an older directory) and the training domain behind ``subset``,
    with a note for each thing an older directory lacks."""
    bundle = load_model_dir(model_dir)
    notes = []
    if bundle.calibration is None:
        notes.append(
            f"model {model_dir} has no depth calibration (written before it): probabilities use "
            f"its single temperature T = {bundle.temperature:.4f} at every depth"
        )
        calibration = DepthCalibration.constant(float(bundle.temperature or 1.0)).to_dict()
    else:
        calibration = bundle.calibration.to_dict()
    domain = TrainingDomain.from_dict(bundle.training_domain)
    if domain is None:
        notes.append(
            f"model {model_dir} has no training domain: no row is labelled 'extrapolation' "
            f"(subset is safe or unsafe only)"
        )
    return {
        "calibration": calibration,
        "depth_calibration": bundle.calibration is not None,
        "training_domain": domain.to_dict() if domain else None,
        "notes": notes,
    }


def gate_precision(
    model_dir: str,
    device: str,
    requested: str,
    batch: Mapping[str, np.ndarray],
    threads: int = 1,
    gate: Gate | None = None,
) -> dict[str, Any]:
    """The run's precision (:class:`~iic_survey.model.precision.GateResult` as a dict).

    Runs where the inference actors will run (the driver starts it as a Ray task with their
    resources): times each candidate plan against fp32 on this device and compares what the
    catalog gets (:func:`_catalog_view`) on the model directory's gate set, or, for a directory
    without one, on the classifiable rows of ``batch`` (all rows if none is), and says which.
    """
    actor = Classify(model_dir, device, None, None, threads, "fp32")
    rows, source = _gate_set_rows(model_dir, batch)
    fp32_model, predictors = actor.predictor.model, {"fp32": actor.predictor}

    def predictor(precision: str) -> Predictor:
        if precision not in predictors:
            p = plan(precision)
            model = int8_model(fp32_model, model_dir, actor.device) if p.int8 else fp32_model
            predictors[precision] = Predictor(model, actor.device, p.dtype, actor.batch, p.modules)
        return predictors[precision]

    def run(precision: str) -> View:
        actor.predictor = predictor(precision)
        logits, emb, flags = actor.logits(rows)
        return _catalog_view(actor, {**rows, "quality_flags": flags}, logits, emb)

    images, features = _timing_inputs(actor, rows)

    def speed(precision: str) -> float:
        ratios = time_plans(
            lambda p: predictor(p).on_device(images, features), (precision,), actor.device
        )
        return ratios[precision]

    result = check_gate(run, requested, actor.device, gate, speed)
    return {**result.to_dict(), "gate_set": source}


def _gate_set_rows(
    model_dir: str, batch: Mapping[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], str]:
    """(the gate's rows, where they come from): the gate set, else the run's first rows."""
    gate_set = load_gate_set(model_dir)
    if gate_set is not None:
        rows = {k: v for k, v in gate_set.items() if k != "calibration_image"}
        n = len(rows["image"])
        rows.update({k: np.zeros(n, np.int64) for k in _KEYS})
        return rows, f"the model directory's gate set ({n} held-out stamps)"
    good = ~unclassifiable(np.asarray(batch["quality_flags"], dtype=np.int64))
    rows = {k: np.asarray(v)[good] for k, v in batch.items()} if good.any() else dict(batch)
    n = len(rows["quality_flags"])
    note = f"no gate set in {model_dir}: the run's first {n} classifiable rows"
    logger.warning("precision gate: %s", note)
    return rows, note


def _catalog_view(
    actor: Classify, rows: Mapping[str, np.ndarray], logits: np.ndarray, emb: np.ndarray
) -> View:
    """What the catalog gets of ``rows``: the run's own scoring (``T(W1)``, outlier and subset
    rules, :func:`result_rows`) of the logits and embeddings of one plan."""
    ood = actor.ood.score(emb) if actor.ood is not None else None
    out = result_rows(rows, logits, ood, actor.scoring)
    p = np.stack([out[f"p_{c}"] for c in CLASSES], axis=1)
    return {"p": p, **{k: out[k] for k in ("class", "is_outlier", "subset")}}


def _timing_inputs(actor: Classify, rows: Mapping[str, np.ndarray]) -> tuple[Any, Any]:
    """Four fixed-shape batches of model inputs on the actor's device, for timing the plans
    (the images made once: the RGB step is the same in every plan)."""
    n = 4 * actor.batch
    take = {k: np.asarray(v)[:n] for k, v in rows.items()}
    while len(take["features"]) < n:  # fewer rows than four batches: repeat them
        take = {k: np.concatenate([v, v])[:n] for k, v in take.items()}
    features = upload(take["features"], actor.device)[0]
    if "image" in take:
        return upload(take["image"], actor.device)[0], features
    images, _ = finish_images(upload(take["stamp"], actor.device)[0], actor.rgb, actor.device)
    return images, features
