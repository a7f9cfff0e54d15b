"""The sky pipeline: AllWISE rows -> cutouts -> RGB -> IICnet -> a HATS classification catalog.

Data flow (a Ray Data stream; every stage is a separate operator so each scales on its own)::

    work units -> read pixel -> chunks -> StampMaker -> Classify -> write parts -> receipts
    (driver)      (CPU tasks)   (stream.   (CPU tasks:   (actor pool: (CPU tasks:   (driver:
                                repart.)   each tile     model loaded one part per  counts rows,
                                           read once)    once, GPU)   chunk)        commits pixels)

* **Plan** (driver, no data read for orders <= 5): the pixels at the chosen order, the rows each
  holds (from ``_metadata`` row counts; deeper than order 5 from the positions of the parent
  partition), minus the pixels already committed (resume).
* **Read**: one task per work unit reads a pixel (deeper than order 5: its order-5 parent once,
  split into the targeted children), sorts it by ``coadd_id``, ``wy``, ``cntr`` (a chunk then
  touches few tiles, and only a band of rows of each: remote tiles are read about once in all,
  not once per chunk), and numbers its rows ``_row`` 0..n-1; ``_chunk = _row // chunk_size``
  is the deterministic chunk id (order, pixel, k). A streaming repartition cuts the pixel into
  chunk-sized blocks, so chunks of one pixel fan out over the cluster.
* **Stamps** (:class:`iic_survey.stamps.StampMaker`) and **Classify**
  (:class:`iic_survey.inference.Classify`, an actor per GPU, the model loaded once) work chunk
  by chunk; images never leave these two stages.
* **Write**: small result rows go to CPU tasks that stage each chunk as a part file
  (:func:`iic_survey.output.write_part`) and return one tiny receipt row per part. Nothing funnels
  the rows through one process: the driver only sees receipts (pixel, part, row count and a few
  counters), and when a pixel's staged rows reach its planned count it starts a Ray task that
  commits it (:func:`iic_survey.output.commit_pixel`: concatenate, sort by ``_healpix_29``,
  atomic write, then the done marker). Finally :func:`iic_survey.output.finalize` writes the HATS
  metadata from the committed files' footers.

Exactly once: a part's name is a function of its rows (chunk, first row, row count), so a
retried task rewrites its own part; before a run, staged parts of unfinished pixels are removed
(a crashed run may have staged them under another batching); a pixel is committed only when its
staged rows equal the planned count, and :func:`~iic_survey.output.commit_pixel` re-checks the
count and that no ``cntr`` repeats. A rerun skips committed pixels, so crash + rerun gives the
same catalog as one uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from iic_survey import CLASSES, output, sky
from iic_survey._util import did_you_mean
from iic_survey.flags import QualityFlag

# The inference stage lives in its own module; its names stay importable from here.
from iic_survey.inference import DEFAULT_CONFIDENCE_THRESHOLD as DEFAULT_CONFIDENCE_THRESHOLD
from iic_survey.inference import RESULT_COLUMNS as RESULT_COLUMNS
from iic_survey.inference import Classify as Classify
from iic_survey.inference import OodStats as OodStats
from iic_survey.inference import model_version as model_version
from iic_survey.inference import result_rows as result_rows

logger = logging.getLogger(__name__)

CUTOUT_MODES: tuple[str, ...] = ("tiles", "service")
CRASH_ENV = "IIC_PIPELINE_CRASH_AFTER_COMMITS"
"""Test hook: the driver raises after this many pixel commits (simulates a crashed run)."""


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


# ---------------------------------------------------------------------------------- planning


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a run will do: pixels, their planned row counts, and the read units."""

    order: int
    counts: Mapping[int, int]
    """Planned rows of every selected non-empty pixel (finished ones included)."""
    finished: tuple[int, ...]
    """Selected pixels already committed in the output (skipped)."""
    todo: tuple[int, ...]
    """Pixels this run classifies (after ``limit``)."""
    units: tuple[dict[str, Any], ...]
    """Read units: ``{"read_order", "read_pixel", "pixels", "counts"}``."""

    @property
    def todo_rows(self) -> int:
        """Rows this run classifies."""
        return sum(int(self.counts[p]) for p in self.todo)

    @property
    def partial(self) -> bool:
        """Whether the catalog stays incomplete after this run (``limit``)."""
        return len(self.finished) + len(self.todo) < len(self.counts)


def assign_pixels(
    ra: np.ndarray, dec: np.ndarray, order: int, parent: int, parent_order: int
) -> np.ndarray:
    """Order-``order`` pixel of each row of partition ``parent`` (at ``parent_order``).

    Rows with unusable coordinates go to the partition's first child, so they are classified
    (with BAD_COORDINATES) once and only once, whatever the order.
    """
    ra = np.asarray(ra, dtype=np.float64)
    dec = np.asarray(dec, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90) & (ra >= 0) & (ra <= 360)
    out = np.full(len(ra), int(parent) << (2 * (order - parent_order)), dtype=np.int64)
    if ok.any():
        out[ok] = sky.pixel_of(ra[ok], dec[ok], order)
    return out


def _child_counts(catalog: Any, k5: int, order: int) -> dict[int, int]:
    pos = catalog.read_pixel(int(k5), 5, columns=["ra", "dec"])
    pix = assign_pixels(
        pos["ra"].to_numpy(np.float64, na_value=np.nan),
        pos["dec"].to_numpy(np.float64, na_value=np.nan),
        order,
        int(k5),
        5,
    )
    values, counts = np.unique(pix, return_counts=True)
    return {int(p): int(n) for p, n in zip(values, counts, strict=True)}


def _select(config: PipelineConfig, catalog: Any) -> np.ndarray:
    order = config.healpix_order
    available = catalog.pixels(order)
    if config.pixels is not None:
        wanted = np.asarray(config.pixels, dtype=np.int64)
        absent = np.setdiff1d(wanted, available)
        if absent.size:
            logger.warning(
                "%d requested pixels hold no catalog files (e.g. %s)",
                absent.size,
                absent[:5].tolist(),
            )
        return np.intersect1d(wanted, available)
    if config.cone is not None:
        return np.intersect1d(sky.cone_pixels(*config.cone, order), available)
    return np.asarray(available, dtype=np.int64)


def plan_run(config: PipelineConfig, catalog: Any, finished: Sequence[int] = ()) -> Plan:
    """Plan the pixels of a run (reads counts, not rows, for orders up to 5)."""
    order = config.healpix_order
    selected = _select(config, catalog)
    counts: dict[int, int] = {}
    if order <= 5:
        for p in selected.tolist():
            counts[int(p)] = int(catalog.count(int(p), order))
    else:
        parents = np.unique(sky.parent(selected, order, 5)) if selected.size else selected
        wanted = set(selected.tolist())
        for found in _map_parents(catalog, parents.tolist(), order):
            counts.update({p: n for p, n in found.items() if p in wanted})
    empty = [p for p, n in counts.items() if n == 0]
    if empty:
        logger.info("%d selected pixels are empty and are skipped", len(empty))
    counts = {p: n for p, n in sorted(counts.items()) if n > 0}
    done = tuple(sorted(set(int(p) for p in finished) & set(counts)))
    todo = [p for p in counts if p not in set(done)]
    if config.limit is not None:
        todo = todo[: config.limit]
    return Plan(order, counts, done, tuple(todo), tuple(_units(order, todo, counts)))


def _map_parents(catalog: Any, parents: list[int], order: int) -> Iterator[dict[int, int]]:
    """Child counts per parent partition; in parallel Ray tasks when Ray is up and it pays."""
    import ray

    if len(parents) < 4 or not ray.is_initialized():
        for k5 in parents:
            yield _child_counts(catalog, k5, order)
        return
    task = ray.remote(num_cpus=1)(_child_counts)
    ref = ray.put(catalog)
    yield from ray.get([task.remote(ref, k5, order) for k5 in parents])


def _units(order: int, todo: Sequence[int], counts: Mapping[int, int]) -> Iterator[dict[str, Any]]:
    if order <= 5:
        for p in todo:
            yield {
                "read_order": order,
                "read_pixel": int(p),
                "pixels": [int(p)],
                "counts": [int(counts[p])],
            }
        return
    by_parent: dict[int, list[int]] = {}
    for p in todo:
        by_parent.setdefault(int(p) >> (2 * (order - 5)), []).append(int(p))
    for k5, pix in sorted(by_parent.items()):
        yield {
            "read_order": 5,
            "read_pixel": k5,
            "pixels": pix,
            "counts": [int(counts[p]) for p in pix],
        }


# ------------------------------------------------------------------------------------ stages


class PixelReader:
    """Read unit -> chunks of one pixel's rows, sorted by tile, numbered ``_row`` (Ray tasks)."""

    def __init__(self, catalog: Any, columns: Sequence[str], order: int, chunk_size: int) -> None:
        self.catalog, self.columns = catalog, list(columns)
        self.order, self.chunk_size = order, chunk_size

    def __call__(self, batch: pd.DataFrame) -> Iterator[pd.DataFrame]:
        for text in batch["unit"]:
            unit = json.loads(text)
            rows = self.catalog.read_pixel(
                unit["read_pixel"], unit["read_order"], columns=self.columns
            )
            if unit["read_order"] == self.order:
                owner = np.full(len(rows), unit["read_pixel"], dtype=np.int64)
            else:
                owner = assign_pixels(
                    rows["ra"].to_numpy(np.float64, na_value=np.nan),
                    rows["dec"].to_numpy(np.float64, na_value=np.nan),
                    self.order,
                    unit["read_pixel"],
                    unit["read_order"],
                )
            for pixel, planned in zip(unit["pixels"], unit["counts"], strict=True):
                part = rows[owner == pixel]
                if len(part) != planned:
                    raise PipelineError(
                        f"pixel {pixel} (order {self.order}) has {len(part)} rows, {planned} were "
                        f"planned: the catalog changed during the run; rerun with --overwrite"
                    )
                yield from self._chunks(part, pixel)

    def _chunks(self, part: pd.DataFrame, pixel: int) -> Iterator[pd.DataFrame]:
        part = part.sort_values(["coadd_id", "wy", "cntr"], kind="stable", na_position="last")
        part = part.reset_index(drop=True)
        n = len(part)
        part["_pixel"] = np.full(n, pixel, dtype=np.int64)
        part["_row"] = np.arange(n, dtype=np.int64)
        part["_chunk"] = (part["_row"] // self.chunk_size).astype(np.int32)
        for start in range(0, n, self.chunk_size):
            yield part.iloc[start : start + self.chunk_size]


class PartWriter:
    """Result rows -> staged part files (one per pixel chunk in the batch) -> receipt rows."""

    def __init__(self, out: str, order: int, fs: Any = None) -> None:
        self.out, self.order, self.fs = out, order, fs

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        receipts = []
        for (pixel, chunk), rows in batch.groupby(["_pixel", "_chunk"], sort=True):
            first = int(rows["_row"].min())
            chunk_id = f"c{int(chunk):06d}-r{first:09d}-n{len(rows)}"
            n = output.write_part(
                self.out, self.order, int(pixel), chunk_id, rows[list(RESULT_COLUMNS)], fs=self.fs
            )
            receipts.append({"pixel": int(pixel), "part": chunk_id, "rows": n, **_counters(rows)})
        return pd.DataFrame(receipts, columns=["pixel", "part", "rows", *COUNTERS])


COUNTERS: tuple[str, ...] = (
    *(f"n_{c}" for c in CLASSES),
    "n_unclassified",
    "n_outlier",
    *(f"flag_{f.name}" for f in QualityFlag if f.name),
)
"""Per-part counters a receipt carries to the driver's summary."""


def _counters(rows: pd.DataFrame) -> dict[str, int]:
    cls = rows["class"].astype(object)
    flags = rows["quality_flags"].to_numpy(np.int64)
    out = {f"n_{c}": int((cls == c).sum()) for c in CLASSES}
    out["n_unclassified"] = int(cls.isna().sum())
    out["n_outlier"] = int(rows["is_outlier"].to_numpy(bool).sum())
    for f in QualityFlag:
        out[f"flag_{f.name}"] = int(((flags & int(f)) != 0).sum())
    return out


# ------------------------------------------------------------------------------ build and run


@dataclasses.dataclass
class _Inputs:
    """What the driver opens once: the catalog, the output's filesystem, the model's identity."""

    catalog: Any
    fs: Any
    model_id: str
    rgb: dict[str, Any]


def _open_inputs(config: PipelineConfig) -> _Inputs:
    from iic_survey import catalog as catalog_mod
    from iic_survey.model import load_model_dir

    if not os.path.isdir(config.model_dir) or not os.path.exists(
        os.path.join(config.model_dir, "model.json")
    ):
        raise FileNotFoundError(
            f"no model directory at {config.model_dir} (model.json + weights.pt); "
            f"train one first: ray job submit --working-dir . -- python jobs/train.py"
        )
    bundle = load_model_dir(config.model_dir, device="cpu")
    endpoint = config.endpoint_url if config.catalog.startswith("s3://") else None
    cat = catalog_mod.open_catalog(
        config.catalog, require=catalog_mod.PIPELINE_COLUMNS, endpoint_url=endpoint
    )
    fs = None
    if config.output.startswith("s3://") and config.endpoint_url:
        fs = catalog_mod.make_filesystem(config.output, endpoint_url=config.endpoint_url)[0]
    return _Inputs(cat, fs, model_version(bundle), dict(bundle.rgb or {}))


def _stamp_maker(config: PipelineConfig, rgb_params: Mapping[str, Any]) -> Any:
    from iic_survey.cutouts import CutoutConfig
    from iic_survey.ibe import ServiceConfig
    from iic_survey.stamps import StampMaker

    cut = CutoutConfig(
        method=config.cutout_mode,
        max_workers=config.cutout_threads,
        service=ServiceConfig(read_timeout_s=config.service_timeout_s),
    )
    s3 = config.endpoint_url if config.images.startswith("s3") else None
    return StampMaker.from_spec(
        config.images, cutout=cut, rgb_params=rgb_params or None, endpoint_url=s3
    )


def inference_resources(config: PipelineConfig) -> tuple[int, float]:
    """(actors, GPUs per actor) for the inference pool, from the cluster's resources."""
    import ray

    res = ray.cluster_resources()
    gpus, cpus = float(res.get("GPU", 0.0)), float(res.get("CPU", 1.0))
    per = (
        config.num_gpus_per_actor
        if config.num_gpus_per_actor is not None
        else (1.0 if gpus >= 1 else 0.0)
    )
    if per > 0:
        if gpus < per:
            raise PipelineError(
                f"{per} GPUs per inference actor asked for, the cluster has {gpus:g}"
            )
        return config.inference_actors or max(1, int(gpus // per)), per
    # CPU only: inference costs ~25x cutouts + RGB per source, so it gets 3/4 of the CPUs.
    return config.inference_actors or max(1, int(cpus * 3 // 4)), 0.0


IMAGE_BYTES_PER_ROW = 3 * 80 * 80 * 4
"""Bytes of one source's model input between the cutout and inference stages."""


def chunk_rows(config: PipelineConfig, actors: int) -> int:
    """``config.chunk_size``, or the largest chunk (128..2048 rows) of which eight per inference
    actor fit in half the object store (Ray Data's share): big chunks amortise task overheads,
    but too few in flight starve the actors (measured: bench/RESULTS.md, Pipeline)."""
    import ray

    if config.chunk_size is not None:
        return int(config.chunk_size)
    store = float(ray.cluster_resources().get("object_store_memory", 8e9))
    return int(np.clip(store / 2 / (8 * max(actors, 1) * IMAGE_BYTES_PER_ROW), 128, 2048))


def _dataset(config: PipelineConfig, inputs: _Inputs, plan: Plan) -> Any:
    import ray
    from ray.data import ActorPoolStrategy

    from iic_survey.catalog import PIPELINE_COLUMNS

    # Errors raised in our stages (a corrupt partition, a missing column) reach the driver as
    # themselves, not wrapped in Ray's UserCodeException, so the job can name the problem.
    ray.data.DataContext.get_current().raise_original_map_exception = True
    actors, gpus = inference_resources(config)
    chunk = chunk_rows(config, actors)
    logger.info("inference: %d actors, %g GPU each; chunks of %d rows", actors, gpus, chunk)
    items = [{"unit": json.dumps(u)} for u in plan.units]
    reader = PixelReader(inputs.catalog, PIPELINE_COLUMNS, plan.order, chunk)
    ds: ray.data.Dataset = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    ds = ds.map_batches(reader, batch_size=1, batch_format="pandas", num_cpus=0.5)
    ds = ds.repartition(target_num_rows_per_block=chunk)  # chunks of a pixel fan out
    # A memory reservation (a worker's ~250 MB plus stamps and images of a chunk, ~100 kB a row,
    # with room for copies; measured) keeps the scheduler from packing more cutout tasks than
    # fit, and keeps Ray from fusing this CPU stage into the inference actors (fusion needs
    # identical resource requests).
    ds = ds.map_batches(
        _stamp_maker(config, inputs.rgb),
        batch_size=chunk,
        batch_format="pandas",
        num_cpus=1,
        memory=(288 << 20) + chunk * 200_000,
    )
    device = "cuda" if gpus > 0 else "cpu"
    ds = ds.map_batches(
        Classify,
        fn_constructor_kwargs=dict(
            model_dir=config.model_dir,
            device=device,
            model_batch_size=config.model_batch_size
            or (GPU_MODEL_BATCH if device == "cuda" else CPU_MODEL_BATCH),
            confidence_threshold=config.confidence_threshold,
            threads=int(config.cpus_per_actor),
        ),
        compute=ActorPoolStrategy(size=actors),
        batch_size=chunk,
        batch_format="numpy",
        num_gpus=gpus if gpus > 0 else None,
        num_cpus=config.cpus_per_actor,
    )
    writer = PartWriter(config.output, plan.order, inputs.fs)
    return ds.map_batches(writer, batch_size=chunk, batch_format="pandas", num_cpus=0.25)


def build_pipeline(config: PipelineConfig) -> tuple[Plan, Any]:
    """The plan and the lazy dataset of a run; its rows are the receipts of staged parts.

    Reads only the output's commit markers (for resume) and the catalog's counts; writes
    nothing until the dataset is executed. Executing it stages parts but commits nothing:
    :func:`run_pipeline` does that (and prepares the output first).
    """
    inputs = _open_inputs(config)
    finished: list[int] = []
    if not config.overwrite:
        finished = output.finished_pixels(config.output, config.healpix_order, inputs.fs).tolist()
    plan = plan_run(config, inputs.catalog, finished)
    return plan, _dataset(config, inputs, plan)


@dataclasses.dataclass
class Summary:
    """What a run did."""

    output: str
    order: int
    pixels_selected: int
    pixels_skipped: int
    pixels_done: int
    rows: int
    elapsed_s: float
    partial: bool
    counters: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def sources_per_s(self) -> float:
        """Rows classified per second of wall time."""
        return self.rows / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def text(self) -> str:
        """A human-readable report."""
        c = self.counters
        lines = [
            f"catalog: {self.output}{'  (partial: rerun to complete)' if self.partial else ''}",
            f"pixels (order {self.order}): {self.pixels_done} classified, {self.pixels_skipped} "
            f"already done, {self.pixels_selected} selected",
            f"sources: {self.rows:,} in {self.elapsed_s:.1f} s "
            f"({self.sources_per_s:,.0f} sources/s)",
            "classes: "
            + ", ".join(f"{k} {c.get(f'n_{k}', 0):,}" for k in CLASSES)
            + f", unclassified {c.get('n_unclassified', 0):,}",
            f"outliers: {c.get('n_outlier', 0):,}",
            "flags: "
            + (
                ", ".join(f"{k[5:]} {v:,}" for k, v in c.items() if k.startswith("flag_") and v)
                or "none"
            ),
        ]
        return "\n".join(lines)


def _clear_staging(config: PipelineConfig, fs: Any, order: int, todo: Sequence[int]) -> None:
    """Remove parts a crashed run left for pixels this run redoes (they may overlap ours)."""
    fsys, root = output.resolve(config.output, fs)
    base = output.staging_dir(root, order, 0).rsplit("/", 1)[0]
    if not fsys.exists(base):
        return
    want = {f"Npix={int(p)}" for p in todo}
    stale = [p for p in fsys.ls(base, detail=False) if p.rstrip("/").rsplit("/", 1)[-1] in want]
    if stale:
        logger.info("removing staged parts of %d unfinished pixels from an earlier run", len(stale))
        fsys.rm(stale, recursive=True)


def run_pipeline(config: PipelineConfig) -> Summary:
    """Classify the selected pixels into the output catalog; resumable, exactly once per source.

    Raises
    ------
    PipelineError
        If a pixel's staged rows do not add up to its planned count (input changed, rows lost).
    iic_survey.output.OutputError
        If the output holds something else, or a run with other arguments (use ``overwrite``).
    """
    import ray

    t0 = time.monotonic()
    inputs = _open_inputs(config)
    resumed = output.prepare_output(
        config.output, config.run_args(inputs.model_id), config.overwrite, inputs.fs
    )
    finished: list[int] = []
    if resumed:
        finished = output.finished_pixels(config.output, config.healpix_order, inputs.fs).tolist()
    plan = plan_run(config, inputs.catalog, finished)
    if not plan.counts:
        raise PipelineError(
            "no catalog sources in the selected pixels; check --pixels/--cone and the order"
        )
    output.write_plan(config.output, plan.order, plan.counts, inputs.fs)
    logger.info(
        "plan: %d pixels selected, %d already done, %d to classify (%d sources)",
        len(plan.counts),
        len(plan.finished),
        len(plan.todo),
        plan.todo_rows,
    )
    counters: Counter[str] = Counter()
    if plan.todo:
        _clear_staging(config, inputs.fs, plan.order, plan.todo)
        ds = _dataset(config, inputs, plan)
        _drive(config, plan, ds, inputs.fs, counters, t0, ray)
    props = {
        "iic_model": inputs.model_id,
        "iic_input_catalog": config.catalog,
        "iic_images": config.images,
    }
    url = output.finalize(config.output, inputs.fs, props, allow_partial=plan.partial)
    summary = Summary(
        url,
        plan.order,
        len(plan.counts),
        len(plan.finished),
        len(plan.todo),
        plan.todo_rows,
        time.monotonic() - t0,
        plan.partial,
        dict(counters),
    )
    logger.info("done:\n%s", summary.text())
    return summary


def _drive(
    config: PipelineConfig,
    plan: Plan,
    ds: Any,
    fs: Any,
    counters: Counter[str],
    t0: float,
    ray: Any,
) -> None:
    """Consume receipts, commit pixels as their counts complete, log progress.

    On any error the stream is closed at once (Ray Data cancels its tasks and kills its actors,
    so no stale task stages parts behind a later rerun) and commits in flight are let finish
    (they are idempotent), then the error propagates.
    """
    commit = ray.remote(num_cpus=0)(output.commit_pixel)
    crash_after = int(os.environ.get(CRASH_ENV, "0") or 0)
    staged: Counter[int] = Counter()
    pending: dict[Any, int] = {}
    done: set[int] = set()
    last_log = time.monotonic()

    def collect(block: bool) -> None:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=None if block else 0)
            if not ready:
                return
            ray.get(ready[0])  # raises the commit's error, if any
            done.add(pending.pop(ready[0]))
            if crash_after and len(done) >= crash_after:
                raise RuntimeError(f"{CRASH_ENV}={crash_after}: simulated crash")
            block = False

    def receive(rec: dict[str, Any]) -> None:
        pixel = int(rec["pixel"])
        staged[pixel] += int(rec["rows"])
        counters.update({k: int(rec[k]) for k in COUNTERS})
        expected = int(plan.counts[pixel])
        if staged[pixel] > expected:
            raise PipelineError(f"pixel {pixel}: {staged[pixel]} rows staged, {expected} planned")
        if staged[pixel] == expected:
            while len(pending) >= config.commit_concurrency:
                collect(block=True)
            pending[commit.remote(config.output, plan.order, pixel, expected, fs)] = pixel

    stream = ds.iter_batches(batch_format="pandas", batch_size=None)
    try:
        for receipts in stream:
            for rec in receipts.to_dict("records"):
                receive(rec)
            collect(block=False)
            if time.monotonic() - last_log >= config.progress_interval_s:
                last_log = time.monotonic()
                rows = sum(staged.values())
                logger.info(
                    "progress: %d/%d pixels committed, %s sources, %.0f sources/s",
                    len(done),
                    len(plan.todo),
                    f"{rows:,}",
                    rows / max(last_log - t0, 1e-9),
                )
        while pending:
            collect(block=True)
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()  # shuts the executor down now, not when the traceback is collected
        if pending:
            ray.wait(list(pending), num_returns=len(pending), timeout=120)
    missing = {p: (staged[p], plan.counts[p]) for p in plan.todo if p not in done}
    if missing:
        raise PipelineError(
            f"{len(missing)} pixels did not receive all their rows (staged, planned): "
            f"{dict(list(missing.items())[:5])}; rerun to resume them"
        )
