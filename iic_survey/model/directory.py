"""The model directory: a trained classifier as ``weights.safetensors`` and ``weights.pt`` (the
same state_dict twice: safetensors for other tools, torch for older readers) + ``model.json``
(+ ``README.md``, the model card that training writes, :mod:`iic_survey.training.card`).

Training writes one with :func:`save_model_dir`; the classify job and the reports read it back
with :func:`load_model_dir` as a :class:`ModelBundle` (the model in eval mode, its config, the
RGB parameters of its images, the fitted temperature and depth calibration, the training
domain, OOD statistics, metrics, provenance).
The loader prefers ``weights.safetensors`` (a format that holds tensors only); a directory with
only ``weights.pt`` (written before safetensors) loads with ``torch.load(weights_only=True)``.
Every file is checked against the sha256 that ``model.json`` records, and where both are present
they must hold the same tensors, bit for bit, or the directory is refused: a directory from
elsewhere can be refused but never runs code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import pathlib
import pickle
from typing import Any

import safetensors.torch
import torch
from torch import nn

from iic_survey.core.atomic import write_atomic
from iic_survey.core.calibration import DepthCalibration
from iic_survey.core.config import did_you_mean
from iic_survey.core.constants import CLASSES, __version__
from iic_survey.core.paths import as_path
from iic_survey.model.config import ModelConfig
from iic_survey.model.network import Classifier, build_model
from iic_survey.model.size import count_params

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Version of the model-directory layout; a reader refuses directories with a newer one."""

WEIGHTS_FILE = "weights.pt"
SAFETENSORS_FILE = "weights.safetensors"
META_FILE = "model.json"
EXTRA_KEYS: tuple[str, ...] = (
    "rgb",
    "temperature",
    "calibration",
    "training_domain",
    "feature_stats",
    "metrics",
    "meta",
)


# ---------------------------------------------------------------------------------------------
# The model directory: weights.pt (state_dict) + model.json


@dataclasses.dataclass(frozen=True)
class ModelBundle:
    """Everything :func:`load_model_dir` reads back: the model (eval mode) and its context."""

    model: Classifier
    config: ModelConfig
    classes: tuple[str, ...]
    rgb: dict[str, Any]
    """``RGBParams.to_dict()`` of the images the model was trained on."""
    temperature: float
    """Temperature fitted on the validation set: calibrated probabilities = softmax(logits / T)."""
    calibration: DepthCalibration | None
    """The depth-dependent calibration (``T(w1)``); None for a directory written before it."""
    training_domain: dict[str, Any]
    """Ranges of the labelled training set (W1, colours) that define the ``safe`` subset;
    empty for a directory written before it (see :mod:`iic_survey.model.domain`)."""
    feature_stats: dict[str, Any]
    """Statistics of the training embeddings / features for out-of-distribution scores."""
    metrics: dict[str, Any]
    meta: dict[str, Any]
    """Free-form provenance, plus ``code_version``, ``weights_sha256`` and ``format_version``."""


def _jsonable(obj: Any) -> Any:
    """Plain JSON types: arrays and tuples become lists, non-finite floats become None."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.detach().cpu().tolist())
    if hasattr(obj, "tolist") and hasattr(obj, "dtype"):  # numpy arrays and scalars
        return _jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in model.json; convert it to plain data")


def _sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel / torch.compile wrappers."""
    while True:
        inners = [getattr(model, a, None) for a in ("module", "_orig_mod")]
        inner = next((m for m in inners if isinstance(m, nn.Module)), None)
        if inner is None:
            return model
        model = inner


def save_model_dir(
    path: str | os.PathLike[str],
    model: nn.Module,
    cfg: ModelConfig,
    extra: dict[str, Any] | None = None,
) -> pathlib.Path:
    """Write ``weights.safetensors``, ``weights.pt`` and ``model.json`` into the folder ``path``.

    ``extra`` may hold ``rgb``, ``temperature``, ``calibration`` (a
    :class:`~iic_survey.core.calibration.DepthCalibration` or its dict), ``training_domain``,
    ``feature_stats``, ``metrics`` and ``meta`` (plain data, numpy arrays allowed). Each file
    is written to a temporary name and renamed, ``model.json`` last, so a reader never sees a
    half-written directory. Pass the trained model, not the output of
    :func:`~iic_survey.model.network.optimize_for_inference` (its folded weights have other
    names).
    """
    extra = dict(extra or {})
    unknown = [k for k in extra if k not in EXTRA_KEYS]
    if unknown:
        raise ValueError(
            f"unknown extra key {unknown[0]!r}{did_you_mean(unknown[0], EXTRA_KEYS)}; "
            f"allowed: {EXTRA_KEYS}"
        )
    model = _unwrap(model)
    if not isinstance(model, Classifier):
        raise TypeError(f"expected a Classifier from build_model, got {type(model).__name__}")
    if model.config != cfg:
        raise ValueError(f"model was built from {model.config}, not from the given config {cfg}")
    temperature = float(extra.get("temperature", 1.0))
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive finite number, got {temperature}")
    calibration = extra.get("calibration")
    if isinstance(calibration, DepthCalibration):
        calibration = calibration.to_dict()
    elif calibration is not None:
        calibration = DepthCalibration.from_dict(calibration).to_dict()  # checked
    out = pathlib.Path(path)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    weights = buffer.getvalue()
    write_atomic(as_path(out / WEIGHTS_FILE), weights)
    tensors = safetensors.torch.save(state, metadata={"format": "pt", "arch": cfg.arch})
    write_atomic(as_path(out / SAFETENSORS_FILE), tensors)
    meta = {
        **dict(extra.get("meta", {})),
        "code_version": __version__,
        "torch_version": torch.__version__,
        "n_params": count_params(model),
    }
    doc = {
        "format_version": FORMAT_VERSION,
        "arch": cfg.arch,
        "config": cfg.to_dict(),
        "classes": list(CLASSES),
        "rgb": extra.get("rgb", {}),
        "temperature": temperature,
        "calibration": calibration,
        "training_domain": extra.get("training_domain", {}),
        "feature_stats": extra.get("feature_stats", {}),
        "metrics": extra.get("metrics", {}),
        "meta": meta,
        "weights": {"file": WEIGHTS_FILE, "sha256": hashlib.sha256(weights).hexdigest()},
        "safetensors": {"file": SAFETENSORS_FILE, "sha256": hashlib.sha256(tensors).hexdigest()},
    }
    text = json.dumps(_jsonable(doc), indent=2, allow_nan=False).encode()
    write_atomic(as_path(out / META_FILE), text)
    logger.info("saved %s model to %s (sha256 %s)", cfg.arch, out, doc["weights"]["sha256"][:12])
    return out


def _read_meta(root: pathlib.Path) -> dict[str, Any]:
    """``model.json`` of ``root``, checked for its keys, its format version and its classes."""
    meta_path = root / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found: {root} is not a model directory")
    try:
        doc = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{meta_path} is not valid JSON: {err}") from err
    missing = [k for k in ("format_version", "config", "classes", "weights") if k not in doc]
    if missing:
        raise ValueError(
            f"{meta_path} lacks required keys {missing}; it was not written by save_model_dir"
        )
    version = doc["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{root} has model format_version {version!r}, newer than this iic_survey "
            f"({__version__}) reads ({FORMAT_VERSION}); upgrade iic_survey"
        )
    if tuple(doc["classes"]) != CLASSES:
        raise ValueError(
            f"{root} was trained for classes {doc['classes']}, this code expects {CLASSES}"
        )
    return doc


def _checked_file(root: pathlib.Path, record: dict[str, Any]) -> pathlib.Path | None:
    """The weights file ``record`` names, its sha256 checked; None when it is absent."""
    weights = root / record["file"]
    if not weights.is_file():
        return None
    digest = _sha256(weights)
    if digest != record.get("sha256"):
        raise ValueError(
            f"{weights} has sha256 {digest}, model.json records "
            f"{record.get('sha256')}: the file is corrupt or was replaced"
        )
    return weights


def _read_state(
    root: pathlib.Path, doc: dict[str, Any]
) -> tuple[dict[str, torch.Tensor], pathlib.Path]:
    """The state_dict of the directory and its file: safetensors if there, else ``weights.pt``.

    Where both are present they must hold the same tensors bit for bit (else refused, naming
    both files).
    """
    pt_record = {"file": WEIGHTS_FILE, **doc["weights"]}
    st_record = doc.get("safetensors")
    pt = _checked_file(root, pt_record)
    st = _checked_file(root, {"file": SAFETENSORS_FILE, **st_record}) if st_record else None
    if pt is None and st is None:
        raise FileNotFoundError(
            f"{root / pt_record['file']} not found (model.json refers to it)"
            + (f", nor {root / st_record['file']}" if st_record else "")
        )
    state = safetensors.torch.load(st.read_bytes()) if st is not None else None
    if pt is None:
        return dict(state or {}), root / SAFETENSORS_FILE
    from_pt = _torch_state(pt)
    if state is not None and not _same_state(state, from_pt):
        raise ValueError(
            f"{st} and {pt} hold different weights: the directory was altered; "
            f"remove the wrong one (model.json records the sha256 of both)"
        )
    return (state, root / SAFETENSORS_FILE) if state is not None else (from_pt, pt)


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Same keys, dtypes, shapes and bits."""
    return set(a) == set(b) and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a
    )


def _torch_state(weights: pathlib.Path) -> dict[str, torch.Tensor]:
    """The state_dict in a ``weights.pt``, never unpickling code."""
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # what weights_only=True raises for other pickles
        raise ValueError(
            f"{weights} is not a plain state_dict and was refused by "
            f"torch.load(weights_only=True): {str(exc).splitlines()[0]}"
        ) from None
    if not isinstance(state, dict):
        raise ValueError(f"{weights} holds a {type(state).__name__}, not a state_dict")
    return state


def _load_weights(
    state: dict[str, torch.Tensor], source: pathlib.Path, cfg: ModelConfig
) -> Classifier:
    """A model of ``cfg`` holding ``state`` (read from the file ``source``)."""
    model = build_model(cfg)
    expected, found = set(model.state_dict()), set(state)
    if expected != found:
        raise ValueError(
            f"{source} does not fit a {cfg.arch!r} model: missing keys "
            f"{sorted(expected - found)[:5]}, unexpected keys {sorted(found - expected)[:5]}"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"{source} does not fit a {cfg.arch!r} model of config {cfg}: {err}"
        ) from err
    return model


def _calibration(doc: dict[str, Any], meta_path: pathlib.Path) -> DepthCalibration | None:
    """The stored depth calibration; None when the directory predates it."""
    if not doc.get("calibration"):
        return None
    try:
        return DepthCalibration.from_dict(doc["calibration"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{meta_path}: unreadable calibration: {err}") from err


def load_model_dir(
    path: str | os.PathLike[str],
    device: str | torch.device | None = None,
    expect_arch: str | None = None,
) -> ModelBundle:
    """Read a directory written by :func:`save_model_dir`; the model comes back in eval mode.

    Refuses, with an error saying why: a missing or unparsable ``model.json``, a newer
    ``format_version``, other classes, an architecture other than ``expect_arch``, weights whose
    sha256 differs from the recorded one, ``weights.safetensors`` and ``weights.pt`` that hold
    different tensors, and weights that do not fit the recorded architecture.
    """
    root = pathlib.Path(path)
    doc = _read_meta(root)
    cfg = ModelConfig.from_dict(doc["config"])
    if expect_arch is not None and cfg.arch != expect_arch:
        raise ValueError(f"{root} holds a {cfg.arch!r} model, but {expect_arch!r} was expected")
    model = _load_weights(*_read_state(root, doc), cfg)
    digest = doc["weights"]["sha256"]  # the model's identity: weights.pt's hash, as ever
    if device is not None:
        model = model.to(device)
    model.eval()
    meta = {
        **doc.get("meta", {}),
        "format_version": doc["format_version"],
        "weights_sha256": digest,
    }
    return ModelBundle(
        model=model,
        config=cfg,
        classes=CLASSES,
        rgb=dict(doc.get("rgb") or {}),
        temperature=float(doc.get("temperature", 1.0)),
        calibration=_calibration(doc, meta_path=root / META_FILE),
        training_domain=dict(doc.get("training_domain") or {}),
        feature_stats=dict(doc.get("feature_stats") or {}),
        metrics=dict(doc.get("metrics") or {}),
        meta=meta,
    )
