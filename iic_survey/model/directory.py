"""TODO docstring for model.directory (from model)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import pathlib
import pickle
import tempfile
from typing import Any

import torch
from torch import nn

from iic_survey.core.config import did_you_mean
from iic_survey.core.constants import CLASSES, __version__
from iic_survey.model.config import ARCHS, ModelConfig
from iic_survey.model.network import Classifier, build_model
from iic_survey.model.size import count_params, model_summary

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Version of the model-directory layout; a reader refuses directories with a newer one."""

WEIGHTS_FILE = "weights.pt"
META_FILE = "model.json"
EXTRA_KEYS: tuple[str, ...] = ("rgb", "temperature", "feature_stats", "metrics", "meta")


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


def _atomic_write(path: pathlib.Path, write: Any) -> None:
    """Write via ``write(file)`` to a temporary file beside ``path``, then rename it to ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


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
    """Write ``weights.pt`` and ``model.json`` into the folder ``path`` (created if needed).

    ``extra`` may hold ``rgb``, ``temperature``, ``feature_stats``, ``metrics`` and ``meta``
    (plain data, numpy arrays allowed). Each file is written to a temporary name and renamed,
    ``model.json`` last, so a reader never sees a half-written directory. Pass the trained model,
    not the output of :func:`optimize_for_inference` (its folded weights have other names).
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
    out = pathlib.Path(path)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _atomic_write(out / WEIGHTS_FILE, lambda f: torch.save(state, f))
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
        "feature_stats": extra.get("feature_stats", {}),
        "metrics": extra.get("metrics", {}),
        "meta": meta,
        "weights": {"file": WEIGHTS_FILE, "sha256": _sha256(out / WEIGHTS_FILE)},
    }
    text = json.dumps(_jsonable(doc), indent=2, allow_nan=False).encode()
    _atomic_write(out / META_FILE, lambda f: f.write(text))
    logger.info("saved %s model to %s (sha256 %s)", cfg.arch, out, doc["weights"]["sha256"][:12])
    return out


def load_model_dir(
    path: str | os.PathLike[str],
    device: str | torch.device | None = None,
    expect_arch: str | None = None,
) -> ModelBundle:
    """Read a directory written by :func:`save_model_dir`; the model comes back in eval mode.

    Refuses, with an error saying why: a missing or unparsable ``model.json``, a newer
    ``format_version``, other classes, an architecture other than ``expect_arch``, weights whose
    sha256 differs from the recorded one, and weights that do not fit the recorded architecture.
    """
    root = pathlib.Path(path)
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
    cfg = ModelConfig.from_dict(doc["config"])
    if expect_arch is not None and cfg.arch != expect_arch:
        raise ValueError(f"{root} holds a {cfg.arch!r} model, but {expect_arch!r} was expected")
    weights = root / doc["weights"].get("file", WEIGHTS_FILE)
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found (model.json refers to it)")
    digest = _sha256(weights)
    if digest != doc["weights"].get("sha256"):
        raise ValueError(
            f"{weights} has sha256 {digest}, model.json records "
            f"{doc['weights'].get('sha256')}: the file is corrupt or was replaced"
        )
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"{weights} is not a plain state_dict and was refused by "
            f"torch.load(weights_only=True): {str(exc).splitlines()[0]}"
        ) from None
    model = build_model(cfg)
    expected, found = set(model.state_dict()), set(state)
    if expected != found:
        raise ValueError(
            f"{weights} does not fit a {cfg.arch!r} model: missing keys "
            f"{sorted(expected - found)[:5]}, unexpected keys {sorted(found - expected)[:5]}"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"{weights} does not fit a {cfg.arch!r} model of config {cfg}: {err}"
        ) from err
    if device is not None:
        model = model.to(device)
    model.eval()
    meta = {**doc.get("meta", {}), "format_version": version, "weights_sha256": digest}
    return ModelBundle(
        model=model,
        config=cfg,
        classes=CLASSES,
        rgb=dict(doc.get("rgb") or {}),
        temperature=float(doc.get("temperature", 1.0)),
        feature_stats=dict(doc.get("feature_stats") or {}),
        metrics=dict(doc.get("metrics") or {}),
        meta=meta,
    )


def cli(argv: list[str] | None = None) -> int:
    """`python -m iic_survey.model [--arch A]` or `iic-survey model-info`: the size table."""
    import argparse

    parser = argparse.ArgumentParser(description=cli.__doc__)
    parser.add_argument("--arch", choices=ARCHS, default="iicnet")
    args = parser.parse_args(argv)
    print(model_summary(ModelConfig(arch=args.arch)))
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
