"""The Ray Data stages of a classification run, and the lazy dataset that chains them.

:class:`PixelReader` turns a planned read unit into ``coadd_id``-sorted chunks of one pixel
(Ray tasks, fused with the repartition that makes each chunk a block of its own). On a CPU-only
cluster one actor pool then does the rest of a chunk's work in one process
(:class:`ChunkStage`: cut, classify, stage). With GPUs the work is split where the devices are:
:class:`~iic_survey.stamps.split.StampCutter` cuts the stamps (CPU tasks),
:class:`~iic_survey.survey.classify.Classify` (an actor per GPU, the model loaded once) makes the
result rows, and :class:`PartWriter` (CPU tasks) stages each chunk as a part file. Either way
the stream's rows are small receipts (pixel, part, rows, :data:`COUNTERS`).
:func:`build_dataset` wires them together, sizing the inference pool
(:func:`inference_resources`) and the chunks (:func:`chunk_rows`) to the cluster; nothing is
read or written until the driver (:mod:`iic_survey.survey.run`) consumes it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import ray
from ray.data import ActorPoolStrategy
from upath import UPath

from iic_survey.core.constants import CLASSES, SUBSETS
from iic_survey.core.flags import QualityFlag
from iic_survey.core.paths import PathLike, as_path
from iic_survey.inputs import allwise_schema, storage
from iic_survey.inputs import catalog as catalog_mod
from iic_survey.inputs.allwise_schema import PIPELINE_COLUMNS
from iic_survey.inputs.ibe import ServiceConfig
from iic_survey.model.directory import load_model_dir
from iic_survey.model.precision import GATE_STAMPS, GateResult
from iic_survey.model.quantized import has_gate_set
from iic_survey.output import staging
from iic_survey.stamps.cutouts import CutoutConfig
from iic_survey.stamps.split import StampCutter
from iic_survey.survey.classify import RESULT_COLUMNS, Classify, gate_precision, model_version
from iic_survey.survey.config import CPU_MODEL_BATCH, PipelineConfig, PipelineError
from iic_survey.survey.plan import Plan, assign_pixels

logger = logging.getLogger(__name__)


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

    def __init__(self, out: PathLike, order: int) -> None:
        self.out, self.order = out, order

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        receipts = []
        for (pixel, chunk), rows in batch.groupby(["_pixel", "_chunk"], sort=True):
            first = int(rows["_row"].min())
            chunk_id = f"c{int(chunk):06d}-r{first:09d}-n{len(rows)}"
            n = staging.write_part(
                self.out, self.order, int(pixel), chunk_id, rows[list(RESULT_COLUMNS)]
            )
            receipts.append({"pixel": int(pixel), "part": chunk_id, "rows": n, **_counters(rows)})
        return pd.DataFrame(receipts, columns=["pixel", "part", "rows", *COUNTERS])


class ChunkStage:
    """Cut, classify and stage a chunk in one process: the CPU-only inference actor.

    Without a GPU every stage after the read costs the same CPU cores, so handing a chunk from
    one process to the next (16 kB of stamps a source through the object store, then its
    result rows, each a task to schedule and a pandas/Arrow conversion) only adds cost: this
    actor runs :class:`~iic_survey.stamps.split.StampCutter`,
    :class:`~iic_survey.survey.classify.Classify` and :class:`PartWriter` on the chunk in turn
    and hands on only the receipt. The rows are those of the separate stages (the same
    functions on the same chunk).
    """

    def __init__(self, cutter: StampCutter, classify: Mapping[str, Any], writer: PartWriter):
        self.cutter, self.writer = cutter, writer
        self.classify = Classify(**classify)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        return self.writer(pd.DataFrame(self.classify(self.cutter(batch))))


COUNTERS: tuple[str, ...] = (
    *(f"n_{c}" for c in CLASSES),
    "n_unclassified",
    "n_outlier",
    *(f"subset_{s}" for s in SUBSETS),
    *(f"flag_{f.name}" for f in QualityFlag if f.name),
)
"""Per-part counters a receipt carries to the driver's summary."""


def _counters(rows: pd.DataFrame) -> dict[str, int]:
    cls = rows["class"].astype(object)
    flags = rows["quality_flags"].to_numpy(np.int64)
    out = {f"n_{c}": int((cls == c).sum()) for c in CLASSES}
    out["n_unclassified"] = int(cls.isna().sum())
    out["n_outlier"] = int(rows["is_outlier"].to_numpy(bool).sum())
    subset = rows["subset"].astype(object)
    out.update({f"subset_{s}": int((subset == s).sum()) for s in SUBSETS})
    for f in QualityFlag:
        out[f"flag_{f.name}"] = int(((flags & int(f)) != 0).sum())
    return out


# ------------------------------------------------------------------------------ build and run


@dataclasses.dataclass
class Inputs:
    """What the driver opens once: the catalog, the output (with its storage options), the
    model's identity."""

    catalog: Any
    out: UPath
    model_id: str
    rgb: dict[str, Any]


def open_inputs(config: PipelineConfig) -> Inputs:
    """Check and open what a run reads: the model directory (its identity and RGB), the catalog
    (its schema) and the output's location (an S3 endpoint, when one is configured)."""
    if not os.path.isdir(config.inference.model_dir) or not os.path.exists(
        os.path.join(config.inference.model_dir, "model.json")
    ):
        raise FileNotFoundError(
            f"no model directory at {config.inference.model_dir} (model.json + weights.pt); "
            f"train one first: ray job submit --working-dir . -- python jobs/train.py"
        )
    bundle = load_model_dir(config.inference.model_dir, device="cpu")
    endpoint = config.inputs.endpoint_url if config.inputs.catalog.startswith("s3://") else None
    cat = catalog_mod.open_catalog(
        config.inputs.catalog, require=allwise_schema.PIPELINE_COLUMNS, endpoint_url=endpoint
    )
    opts: dict[str, Any] = {}
    if config.output.url.startswith("s3://") and config.inputs.endpoint_url:
        opts = storage.options_for(config.output.url, endpoint_url=config.inputs.endpoint_url)
    out = as_path(config.output.url, **opts)
    return Inputs(cat, out, model_version(bundle), dict(bundle.rgb or {}))


def _stamp_maker(config: PipelineConfig, rgb_params: Mapping[str, Any]) -> Any:
    """The cutout stage, configured for the run's images (the model's RGB rides along; the
    inference actor applies it, :func:`~iic_survey.stamps.split.finish_images`)."""
    cut = CutoutConfig(
        method=config.inputs.cutout_mode,
        max_workers=config.inputs.cutout_threads,
        service=ServiceConfig(read_timeout_s=config.inputs.service_timeout_s),
    )
    s3 = config.inputs.endpoint_url if config.inputs.images.startswith("s3") else None
    return StampCutter.from_spec(
        config.inputs.images, cutout=cut, rgb_params=rgb_params or None, endpoint_url=s3
    )


def inference_resources(config: PipelineConfig) -> tuple[int, float]:
    """(actors, GPUs per actor) for the inference pool, from the cluster's resources."""
    res = ray.cluster_resources()
    gpus, cpus = float(res.get("GPU", 0.0)), float(res.get("CPU", 1.0))
    per = (
        config.resources.num_gpus_per_actor
        if config.resources.num_gpus_per_actor is not None
        else (1.0 if gpus >= 1 else 0.0)
    )
    if per > 0:
        if gpus < per:
            raise PipelineError(
                f"{per} GPUs per inference actor asked for, the cluster has {gpus:g}"
            )
        return config.resources.inference_actors or max(1, int(gpus // per)), per
    # CPU only: the actors cut, classify and stage (ChunkStage), so they get every CPU but the
    # readers' (1 in 16, at least one: reading is a few per cent of a source's cost).
    spare = max(1.0, cpus / 16)
    return config.resources.inference_actors or max(
        1, int((cpus - spare) // config.resources.cpus_per_actor)
    ), 0.0


MIN_CHUNK_ROWS, MAX_CHUNK_ROWS = 128, 2048
"""Bounds of a chunk's rows (:func:`chunk_rows`)."""
CHUNKS_PER_ACTOR = 2
"""Chunks each inference actor gets at least, when the run is small enough (:func:`chunk_rows`):
one to work on, one to wait behind it."""
STAMP_BYTES_PER_ROW = 3 * 37 * 37 * 4
"""Bytes of what the cutting stage hands on per source: a 37x37 stamp in 3 bands (float32).
The largest thing in the object store between stages (images stay inside the actor)."""


def chunk_rows(config: PipelineConfig, actors: int, rows: int | None = None) -> int:
    """``config.resources.chunk_size``, or the largest chunk (128..2048 rows) of which eight per
    inference actor fit in half the object store (Ray Data's share): big chunks amortise each
    chunk's fixed costs (a task or actor call, a part file, pandas/Arrow conversions; measured:
    benchmarks/RESULTS.md, Feeding ceiling), but too few in flight starve the actors.

    A run of only ``rows`` rows gets chunks small enough that every actor has
    :data:`CHUNKS_PER_ACTOR` of them: else a one-pixel run of 2,500 rows is two chunks, and of
    three actors one waits and one idles (started, holding its memory, doing nothing).
    """
    if config.resources.chunk_size is not None:
        return int(config.resources.chunk_size)
    store = float(ray.cluster_resources().get("object_store_memory", 8e9))
    size = store / 2 / (8 * max(actors, 1) * STAMP_BYTES_PER_ROW)
    if rows is not None:
        size = min(size, -(-rows // (CHUNKS_PER_ACTOR * max(actors, 1))))
    return int(np.clip(size, MIN_CHUNK_ROWS, MAX_CHUNK_ROWS))


def _gate_rows(config: PipelineConfig, inputs: Inputs, plan: Plan) -> dict[str, np.ndarray]:
    """The first :data:`GATE_STAMPS` rows of the run's first chunk, as the CPU stage makes them."""
    reader = PixelReader(inputs.catalog, PIPELINE_COLUMNS, plan.order, GATE_STAMPS)
    first = next(reader(pd.DataFrame({"unit": [json.dumps(plan.units[0])]})))
    return dict(_stamp_maker(config, inputs.rgb)(first))


def _gate_task(config: PipelineConfig, inputs: Inputs, plan: Plan, device: str) -> dict[str, Any]:
    """Run :func:`gate_precision` (inside a Ray task) on the model's gate set, or on stamps of
    the run's first rows when the model directory has none."""
    rows = {} if has_gate_set(config.inference.model_dir) else _gate_rows(config, inputs, plan)
    return gate_precision(
        config.inference.model_dir,
        device,
        config.inference.precision,
        rows,
        int(config.resources.cpus_per_actor),
    )


def decide_precision(config: PipelineConfig, inputs: Inputs, plan: Plan) -> GateResult:
    """The run's precision: fp32 as asked, or the gate's verdict (the model's gate set, else the
    first chunk's stamps; :func:`~iic_survey.survey.classify.gate_precision`).

    The gate runs once, as a Ray task with an inference actor's resources (so ``auto``, the
    comparison and the timing see the actors' device), and every actor then uses its verdict.
    """
    _, gpus = inference_resources(config)
    device = "cuda" if gpus > 0 else "cpu"
    if config.inference.precision == "fp32" or not plan.units:
        return GateResult(config.inference.precision, "fp32", device, "fp32 asked for")
    # max_calls=1: the worker exits after the gate, so the model, the gate set and the plans it
    # built (~660 MB with the paper-sized IICnet) are not held by an idle worker for the run
    task = ray.remote(max_calls=1)(_gate_task).options(
        num_cpus=config.resources.cpus_per_actor, num_gpus=gpus if gpus > 0 else None, max_retries=1
    )
    result = GateResult(**ray.get(task.remote(config, inputs, plan, device)))
    logger.info("precision: %s (%s; gate rows: %s)", result.used, result.reason, result.gate_set)
    if result.warning:  # an explicit plan slower than fp32 here: the user sees the ratio
        logger.warning("precision: %s", result.warning)
    return result


def build_dataset(
    config: PipelineConfig, inputs: Inputs, plan: Plan, precision: str = "fp32"
) -> Any:
    """The lazy dataset of a planned run: read -> stamps -> classify -> staged parts.

    ``precision`` is the resolved one (:func:`decide_precision`). Its rows are the receipts of
    the staged parts; executing it commits nothing.
    """
    # Errors raised in our stages (a corrupt partition, a missing column) reach the driver as
    # themselves, not wrapped in Ray's UserCodeException, so the job can name the problem.
    ray.data.DataContext.get_current().raise_original_map_exception = True
    actors, gpus = inference_resources(config)
    chunk = chunk_rows(config, actors, plan.todo_rows)
    logger.info("inference: %d actors, %g GPU each; chunks of %d rows", actors, gpus, chunk)
    items = [{"unit": json.dumps(u)} for u in plan.units]
    reader = PixelReader(inputs.catalog, PIPELINE_COLUMNS, plan.order, chunk)
    # A block per chunk's worth of rows (a read task reads its units one after the other), not
    # per unit: 12,288 sparse partitions would otherwise cost 12,288 tasks.
    blocks = min(len(items), max(1, -(-plan.todo_rows // chunk)))
    ds: ray.data.Dataset = ray.data.from_items(items, override_num_blocks=blocks)
    # The reader keeps Ray's default resources (1 CPU) so that Ray fuses it with the streaming
    # repartition: each chunk of a pixel leaves the read task as a block of its own and fans
    # out over the cluster, without a second task and object-store hand-off in between.
    ds = ds.map_batches(reader, batch_size=1, batch_format="pandas")
    ds = ds.repartition(target_num_rows_per_block=chunk)
    classify = dict(
        model_dir=config.inference.model_dir,
        device="cuda" if gpus > 0 else "cpu",
        # None on a GPU: the actor sizes its batch from the GPU's memory
        model_batch_size=config.resources.model_batch_size
        or (CPU_MODEL_BATCH if gpus == 0 else None),
        confidence_threshold=config.inference.confidence_threshold,
        threads=int(config.resources.cpus_per_actor),
        precision=precision,
    )
    writer = PartWriter(inputs.out, plan.order)
    cutter = _stamp_maker(config, inputs.rgb)
    if gpus == 0:
        return ds.map_batches(
            ChunkStage,
            fn_constructor_kwargs=dict(cutter=cutter, classify=classify, writer=writer),
            compute=ActorPoolStrategy(size=actors),
            batch_size=chunk,
            batch_format="pandas",
            num_cpus=config.resources.cpus_per_actor,
        )
    # A memory reservation (a worker's ~250 MB plus stamps and images of a chunk, ~100 kB a row,
    # with room for copies; measured) keeps the scheduler from packing more cutout tasks than
    # fit, and keeps Ray from fusing this CPU stage into the GPU actors (fusion needs identical
    # resource requests): on a GPU node the CPU cores cut, the GPUs classify.
    ds = ds.map_batches(
        cutter,
        batch_size=chunk,
        batch_format="pandas",
        num_cpus=1,
        memory=(288 << 20) + chunk * 200_000,
    )
    ds = ds.map_batches(
        Classify,
        fn_constructor_kwargs=classify,
        compute=ActorPoolStrategy(size=actors),
        batch_size=chunk,
        batch_format="numpy",
        num_gpus=gpus,
        num_cpus=config.resources.cpus_per_actor,
    )
    return ds.map_batches(writer, batch_size=chunk, batch_format="pandas", num_cpus=0.25)
