"""What a classification run is asked to do: :class:`PipelineConfig`, and how it fails.

A run's settings are one frozen dataclass per area: :class:`InputsConfig` (catalog, images,
cutouts), :class:`OutputConfig` (the catalog written), :class:`SelectionConfig` (which pixels),
:class:`ResourcesConfig` (chunks, batches, actors) and :class:`InferenceConfig` (model,
precision); :class:`PipelineConfig` holds the five. Their checks turn bad arguments into errors
that say what to change, and :meth:`PipelineConfig.run_args` is the part a resumed run must
match. :meth:`PipelineConfig.create` builds one from flat settings (the command line's names);
:func:`add_arguments` and :meth:`PipelineConfig.from_args` are its command line
(``jobs/classify_sky.py``).
:class:`PipelineError` is raised when a run cannot produce a correct catalog.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import numpy as np

from iic_survey.core import healpix, paths
from iic_survey.core.config import did_you_mean
from iic_survey.output.margin import DEFAULT_MARGIN_ARCSEC
from iic_survey.output.partitions import DEFAULT_MAX_ROWS, check_max_rows

CUTOUT_MODES: tuple[str, ...] = ("tiles", "service")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16", "int8")
"""Choices of ``--precision`` (:mod:`iic_survey.model.precision`)."""


class PipelineError(RuntimeError):
    """The run cannot produce a correct catalog (input changed, rows lost); says what to do."""


CPU_MODEL_BATCH = 16
"""Images per forward pass of a CPU inference actor (one thread): measured best of 8-256."""
GPU_MODEL_BATCH = 256
"""Smallest images per forward pass on a GPU (the actor sizes it from the GPU's memory)."""


def _check_not_empty(**values: str) -> None:
    for name, value in values.items():
        if not str(value).strip():
            raise ValueError(f"{name} must not be empty")


def _check_at_least_one(obj: Any, *names: str) -> None:
    for name in names:
        if getattr(obj, name) is not None and int(getattr(obj, name)) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(obj, name)}")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}{did_you_mean(value, choices)}")


@dataclasses.dataclass(frozen=True)
class InputsConfig:
    """What a run reads: the catalog and the images, and how cutouts are made."""

    catalog: str
    """AllWISE catalog root (local path or ``s3://``), hive-partitioned at order 5."""
    images: str
    """Atlas image archive spec: ``local:/path`` (or a path), ``s3``, ``s3://...``, ``irsa``."""
    cutout_mode: str = "tiles"
    """``tiles`` (read each tile once; the sky path) or ``service`` (IBE per source)."""
    cutout_threads: int = 4
    """Threads reading tiles inside one cutout task."""
    service_timeout_s: float = 30.0
    """Read time-out of one IBE cutout request (``cutout_mode="service"``), in seconds; a
    request that times out is retried, then the source is flagged FETCH_FAILED."""
    endpoint_url: str | None = None
    """S3 endpoint for ``s3://`` catalog, images and output (a local S3 server in tests)."""

    def __post_init__(self) -> None:
        _check_not_empty(catalog=self.catalog, images=self.images)
        _check_at_least_one(self, "cutout_threads")
        if not self.service_timeout_s > 0:
            raise ValueError(f"service_timeout_s must be > 0, got {self.service_timeout_s}")
        _check_choice("cutout_mode", self.cutout_mode, CUTOUT_MODES)


@dataclasses.dataclass(frozen=True)
class OutputConfig:
    """What a run writes: the HATS catalog, its margin and its partitioning."""

    url: str
    """Output HATS catalog (local path or ``s3://``); the command line's ``--output``."""
    overwrite: bool = False
    """Delete a previous output at ``url`` and start again (default: resume it)."""
    margin_arcsec: float = DEFAULT_MARGIN_ARCSEC
    """Width of the margin catalog built after the main one (0: none); LSDB crossmatches are
    exact at partition edges for radii up to it (:mod:`iic_survey.output.margin`)."""
    max_rows_per_partition: int = DEFAULT_MAX_ROWS
    """A work pixel with more rows is written as its children, down to order 9
    (:data:`~iic_survey.output.partitions.DEFAULT_MAX_ROWS`: ~150 MB files)."""

    def __post_init__(self) -> None:
        _check_not_empty(output=self.url)
        if not 0 <= self.margin_arcsec <= 3600:
            raise ValueError(f"margin_arcsec must be in [0, 3600], got {self.margin_arcsec}")
        check_max_rows(self.max_rows_per_partition)


@dataclasses.dataclass(frozen=True)
class SelectionConfig:
    """Which pixels a run classifies: all, a list, or those a cone overlaps; at most ``limit``."""

    healpix_order: int = 5
    """Order of the work and output pixels (5 matches the input partitions; 0..8 allowed)."""
    pixels: tuple[int, ...] | None = None
    """Pixels at ``healpix_order`` to classify; None: see ``cone``, else the whole catalog."""
    cone: tuple[float, float, float] | None = None
    """(ra, dec, radius) in degrees: the pixels that overlap this cone (whole pixels)."""
    limit: int | None = None
    """Classify at most this many pixels (after skipping finished ones); the catalog stays
    partial and a rerun without the limit completes it."""

    def __post_init__(self) -> None:
        order = healpix.check_order(self.healpix_order)
        if order > 8:
            raise ValueError(f"healpix_order must be 0..8, got {order} (deeper pixels are tiny)")
        if self.pixels is not None:
            pix = tuple(int(p) for p in self.pixels)
            if not pix:
                raise ValueError("pixels is empty; pass None to classify the whole catalog")
            healpix.check_pixels(np.asarray(pix), order)
            object.__setattr__(self, "pixels", tuple(sorted(set(pix))))
        if self.cone is not None:
            if self.pixels is not None:
                raise ValueError("give pixels or cone, not both")
            ra, dec, r = (float(v) for v in self.cone)
            if not (0 <= ra <= 360 and -90 <= dec <= 90 and 0 < r <= 180):
                raise ValueError(
                    f"cone must be ra in [0,360], dec in [-90,90], r in (0,180]: {self.cone}"
                )
            object.__setattr__(self, "cone", (ra, dec, r))
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1 or None, got {self.limit}")


@dataclasses.dataclass(frozen=True)
class ResourcesConfig:
    """How a run uses the cluster: chunks, batches, actors and tasks in flight (not the rows)."""

    chunk_size: int | None = None
    """Rows per chunk, the unit of data flow and of staging (~80 kB of images a row); None:
    :func:`~iic_survey.survey.stages.chunk_rows` sizes it to the cluster's object store (at
    most 2048) and, on a small run, to two chunks per inference actor."""
    model_batch_size: int | None = None
    """Images per forward pass inside a chunk; None: :data:`CPU_MODEL_BATCH` on CPU (small
    batches stay in cache: 1.6x the images/s of 256 on one thread, benchmarks/RESULTS.md "Model
    speed"); on a GPU the actor sizes it from the GPU's free memory
    (:func:`~iic_survey.model.inference.gpu_batch_size`, 256-4096)."""
    inference_actors: int | None = None
    """Inference actors; None: one per GPU (``num_gpus_per_actor`` each), else all CPUs but one
    in 16 (at least one) for the readers, ``cpus_per_actor`` each: on a CPU-only cluster each
    actor also cuts and stages its chunks (:class:`~iic_survey.survey.stages.ChunkStage`)."""
    num_gpus_per_actor: float | None = None
    """GPUs per inference actor; None: 1 when the cluster has GPUs, else 0 (CPU inference)."""
    cpus_per_actor: float = 1.0
    """CPUs each inference actor reserves (its torch threads on a CPU-only cluster)."""
    commit_concurrency: int = 4
    """Pixel commits in flight at once (Ray tasks)."""

    def __post_init__(self) -> None:
        _check_at_least_one(self, "chunk_size", "model_batch_size", "commit_concurrency")
        if self.inference_actors is not None and self.inference_actors < 1:
            raise ValueError(f"inference_actors must be >= 1, got {self.inference_actors}")
        if self.num_gpus_per_actor is not None and self.num_gpus_per_actor < 0:
            raise ValueError(f"num_gpus_per_actor must be >= 0, got {self.num_gpus_per_actor}")


@dataclasses.dataclass(frozen=True)
class InferenceConfig:
    """The model a run classifies with, and the arithmetic and outlier threshold it uses."""

    model_dir: str
    """Model directory written by training (``weights.pt`` + ``model.json``); ``--model``."""
    precision: str = "auto"
    """Inference arithmetic: ``auto`` (the fastest plan the gate finds faster than fp32 on the
    actors' device and agreeing with it: bf16 where native, int8 on x86 CPUs; else fp32),
    ``fp32``, ``bf16``, ``fp16`` or ``int8``. A plan is gated against fp32 (on the model's gate
    set, else the first chunk's stamps) before the run uses it (:mod:`iic_survey.model.precision`);
    it falls back to fp32 when what the catalog gets differs, and ``_run.json`` records what was
    used, its measured speed and why."""
    confidence_threshold: float | None = None
    """Outlier when confidence is below this; None: the model's value or the default (0.6)."""

    def __post_init__(self) -> None:
        _check_not_empty(model_dir=self.model_dir)
        _check_choice("precision", self.precision, PRECISIONS)
        if self.confidence_threshold is not None and not 0 <= self.confidence_threshold <= 1:
            raise ValueError(
                f"confidence_threshold must be in [0, 1], got {self.confidence_threshold}"
            )


_AREAS = {
    "inputs": InputsConfig,
    "output": OutputConfig,
    "selection": SelectionConfig,
    "resources": ResourcesConfig,
    "inference": InferenceConfig,
}
_FLAT_NAMES = {("output", "url"): "output"}
"""Area fields whose flat name (in :meth:`PipelineConfig.create`) is another (``output``)."""
_OPTION_NAMES = {"model_dir": "model", "service_timeout_s": "service_timeout"}
"""Flat names whose command-line option has another name (``--model``, ``--service-timeout``)."""


def _flat_fields() -> dict[str, tuple[str | None, str]]:
    """Every setting's flat name -> (its area, None for the run's own; its field there)."""
    flat: dict[str, tuple[str | None, str]] = {}
    for area, cls in _AREAS.items():
        for f in dataclasses.fields(cls):
            flat[_FLAT_NAMES.get((area, f.name), f.name)] = (area, f.name)
    for f in dataclasses.fields(PipelineConfig):
        if f.name not in _AREAS:
            flat[f.name] = (None, f.name)
    return flat


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """One classification run, one frozen config per area. The settings that change the rows go
    into the output's ``_run.json`` (:meth:`run_args`)."""

    inputs: InputsConfig
    output: OutputConfig
    inference: InferenceConfig
    selection: SelectionConfig = dataclasses.field(default_factory=SelectionConfig)
    resources: ResourcesConfig = dataclasses.field(default_factory=ResourcesConfig)
    progress_interval_s: float = 30.0
    """Seconds between progress log lines."""

    @classmethod
    def create(
        cls, catalog: str, images: str, model_dir: str, output: str, **settings: Any
    ) -> PipelineConfig:
        """The config of flat settings, each routed to its area by name: the command line's
        names (``chunk_size``, ``pixels``, ``precision`` ...; ``output`` is the output's
        ``url``). A misspelled name is refused with the closest one."""
        flat = _flat_fields()
        values: dict[str | None, dict[str, Any]] = {area: {} for area in (*_AREAS, None)}
        given = {"catalog": catalog, "images": images, "model_dir": model_dir, "output": output}
        for name, value in {**given, **settings}.items():
            if name not in flat:
                raise TypeError(f"unknown setting {name!r}{did_you_mean(name, tuple(flat))}")
            area, field = flat[name]
            values[area][field] = value
        areas = {area: _AREAS[area](**values[area]) for area in _AREAS}
        return cls(**areas, **values[None])

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> PipelineConfig:
        """The config of a parsed command line (``jobs/classify_sky.py``).

        Each setting comes from the option of its flat name (``--model`` and
        ``--service-timeout`` for ``model_dir`` and ``service_timeout_s``); a setting without an
        option, or whose option is None, keeps its default. Lists (``--pixels``) become tuples.
        """
        values: dict[str, Any] = {}
        for name in _flat_fields():
            value = getattr(args, _OPTION_NAMES.get(name, name), None)
            if value is not None:
                values[name] = tuple(value) if isinstance(value, list) else value
        return cls.create(**values)

    def run_args(self, model_id: str) -> dict[str, Any]:
        """What identifies the catalog's rows: a resume must match these exactly."""
        sel = self.selection
        return {
            "catalog": self.inputs.catalog,
            "images": self.inputs.images,
            "model": model_id,
            "healpix_order": sel.healpix_order,
            "selection": {
                "pixels": list(sel.pixels) if sel.pixels else None,
                "cone": list(sel.cone) if sel.cone else None,
            },
            "cutout_mode": self.inputs.cutout_mode,
            "max_rows_per_partition": self.output.max_rows_per_partition,
            "confidence_threshold": self.inference.confidence_threshold,
            "precision": self.inference.precision,
        }


def _cone(text: str) -> tuple[float, float, float]:
    """``--cone RA,DEC,RADIUS`` as three floats."""
    try:
        ra, dec, r = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--cone wants RA,DEC,RADIUS in degrees, got {text!r}"
        ) from None
    return ra, dec, r


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the command-line options of a run, as :meth:`PipelineConfig.from_args` reads them."""
    p.add_argument("--healpix-order", type=int, default=5, help="order of work/output pixels (0-8)")
    p.add_argument(
        "--catalog",
        help="AllWISE catalog root, or a synthetic sky's root (default: the embedded sky)",
    )
    p.add_argument(
        "--images",
        help="Atlas images: local (the synthetic sky's), s3, irsa, s3://..., https://... or a "
        "directory (default: local, or s3 for an s3:// catalog)",
    )
    p.add_argument("--model", help=f"model directory (default {paths.default_model()})")
    p.add_argument("--output", help=f"output catalog (default {paths.default_catalog()})")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--pixels", type=int, nargs="+", help="pixels at --healpix-order")
    sel.add_argument("--cone", type=_cone, help="RA,DEC,RADIUS in degrees: the pixels it overlaps")
    sel.add_argument("--all", action="store_true", help="every pixel of the catalog (the default)")
    p.add_argument("--limit", type=int, help="classify at most N pixels this run")
    p.add_argument(
        "--margin-arcsec",
        type=float,
        help=f"margin catalog width in arcsec, 0 for none (default {DEFAULT_MARGIN_ARCSEC:g})",
    )
    p.add_argument(
        "--max-rows-per-partition",
        type=int,
        help=f"split denser pixels into children, to order 9 (default {DEFAULT_MAX_ROWS:,})",
    )
    p.add_argument("--overwrite", action="store_true", help="delete a previous output first")
    p.add_argument(
        "--chunk-size",
        type=int,
        help="rows per chunk (default: fit the object store; two per actor on a small run)",
    )
    p.add_argument(
        "--model-batch-size",
        type=int,
        help="images per forward pass (default: 16 on CPU, 256 on GPU)",
    )
    p.add_argument("--inference-actors", type=int, help="inference actors (default: one per GPU)")
    p.add_argument("--num-gpus-per-actor", type=float, help="GPUs per actor (default 1 if any)")
    p.add_argument(
        "--cutout-mode",
        choices=CUTOUT_MODES,
        help="read whole tiles (default) or ask IBE per source (default for --images irsa)",
    )
    p.add_argument(
        "--service-timeout",
        type=float,
        default=30.0,
        help="seconds to wait for one IBE cutout (service mode) before retrying (default 30)",
    )
    p.add_argument("--confidence-threshold", type=float, help="outlier below this confidence")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="inference arithmetic (default auto: the fastest of bf16 where native and int8 on "
        "x86 CPUs that the gate finds faster than fp32 and agreeing with it, else fp32)",
    )
    p.add_argument("--endpoint-url", help="S3 endpoint for s3:// URLs (a local S3 server)")
