"""TODO docstring for survey.config (from pipeline)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from iic_survey.core import sky
from iic_survey.core.config import did_you_mean

CUTOUT_MODES: tuple[str, ...] = ("tiles", "service")


class PipelineError(RuntimeError):
    """The run cannot produce a correct catalog (input changed, rows lost); says what to do."""


CPU_MODEL_BATCH = 16
"""Images per forward pass of a CPU inference actor (one thread): measured best of 8-256."""
GPU_MODEL_BATCH = 256
"""Images per forward pass on a GPU."""


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """One classification run. Fields that change the rows go into the output's ``_run.json``."""

    catalog: str
    """AllWISE catalog root (local path or ``s3://``), hive-partitioned at order 5."""
    images: str
    """Atlas image archive spec: ``local:/path`` (or a path), ``s3``, ``s3://...``, ``irsa``."""
    model_dir: str
    """Model directory written by training (``weights.pt`` + ``model.json``)."""
    output: str
    """Output HATS catalog (local path or ``s3://``)."""
    healpix_order: int = 5
    """Order of the work and output pixels (5 matches the input partitions; 0..8 allowed)."""
    pixels: tuple[int, ...] | None = None
    """Pixels at ``healpix_order`` to classify; None: see ``cone``, else the whole catalog."""
    cone: tuple[float, float, float] | None = None
    """(ra, dec, radius) in degrees: the pixels that overlap this cone (whole pixels)."""
    limit: int | None = None
    """Classify at most this many pixels (after skipping finished ones); the catalog stays
    partial and a rerun without the limit completes it."""
    overwrite: bool = False
    """Delete a previous output at ``output`` and start again (default: resume it)."""
    chunk_size: int | None = None
    """Rows per chunk, the unit of data flow and of staging (~80 kB of images a row); None:
    :func:`chunk_rows` sizes it to the cluster's object store (at most 2048)."""
    model_batch_size: int | None = None
    """Images per forward pass inside a chunk; None: :data:`CPU_MODEL_BATCH` on CPU (small
    batches stay in cache: 1.6x the images/s of 256 on one thread, bench/RESULTS.md "Model
    speed"), :data:`GPU_MODEL_BATCH` on GPU (bounds GPU memory)."""
    inference_actors: int | None = None
    """Inference actors; None: one per GPU (``num_gpus_per_actor`` each), else 3/4 of the CPUs
    (CPU inference costs ~25x the cutouts and RGB of a source)."""
    num_gpus_per_actor: float | None = None
    """GPUs per inference actor; None: 1 when the cluster has GPUs, else 0 (CPU inference)."""
    cpus_per_actor: float = 1.0
    """CPUs each inference actor reserves (its torch threads on a CPU-only cluster)."""
    cutout_mode: str = "tiles"
    """``tiles`` (read each tile once; the sky path) or ``service`` (IBE per source)."""
    cutout_threads: int = 4
    """Threads reading tiles inside one cutout task."""
    service_timeout_s: float = 30.0
    """Read time-out of one IBE cutout request (``cutout_mode="service"``), in seconds; a
    request that times out is retried, then the source is flagged FETCH_FAILED."""
    confidence_threshold: float | None = None
    """Outlier when confidence is below this; None: the model's value or the default (0.6)."""
    endpoint_url: str | None = None
    """S3 endpoint for ``s3://`` catalog, images and output (a local S3 server in tests)."""
    commit_concurrency: int = 4
    """Pixel commits in flight at once (Ray tasks)."""
    progress_interval_s: float = 30.0
    """Seconds between progress log lines."""

    def __post_init__(self) -> None:
        for name in ("catalog", "images", "model_dir", "output"):
            if not str(getattr(self, name)).strip():
                raise ValueError(f"{name} must not be empty")
        order = sky.check_order(self.healpix_order)
        if order > 8:
            raise ValueError(f"healpix_order must be 0..8, got {order} (deeper pixels are tiny)")
        if self.pixels is not None:
            pix = tuple(int(p) for p in self.pixels)
            if not pix:
                raise ValueError("pixels is empty; pass None to classify the whole catalog")
            sky.check_pixels(np.asarray(pix), order)
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
        for name in ("chunk_size", "model_batch_size", "cutout_threads", "commit_concurrency"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.service_timeout_s > 0:
            raise ValueError(f"service_timeout_s must be > 0, got {self.service_timeout_s}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1 or None, got {self.limit}")
        if self.inference_actors is not None and self.inference_actors < 1:
            raise ValueError(f"inference_actors must be >= 1, got {self.inference_actors}")
        if self.num_gpus_per_actor is not None and self.num_gpus_per_actor < 0:
            raise ValueError(f"num_gpus_per_actor must be >= 0, got {self.num_gpus_per_actor}")
        if self.cutout_mode not in CUTOUT_MODES:
            raise ValueError(
                f"unknown cutout_mode {self.cutout_mode!r}"
                f"{did_you_mean(self.cutout_mode, CUTOUT_MODES)}"
            )
        if self.confidence_threshold is not None and not 0 <= self.confidence_threshold <= 1:
            raise ValueError(
                f"confidence_threshold must be in [0, 1], got {self.confidence_threshold}"
            )

    def run_args(self, model_id: str) -> dict[str, Any]:
        """What identifies the catalog's rows: a resume must match these exactly."""
        return {
            "catalog": self.catalog,
            "images": self.images,
            "model": model_id,
            "healpix_order": self.healpix_order,
            "selection": {
                "pixels": list(self.pixels) if self.pixels else None,
                "cone": list(self.cone) if self.cone else None,
            },
            "cutout_mode": self.cutout_mode,
            "confidence_threshold": self.confidence_threshold,
        }
