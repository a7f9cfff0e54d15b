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
* **Stamps** (:class:`iic_survey.stamps.maker.StampMaker`) and **Classify**
  (:class:`iic_survey.survey.classify.Classify`, an actor per GPU, the model loaded once) work
  chunk by chunk; images never leave these two stages.
* **Write**: small result rows go to CPU tasks that stage each chunk as a part file
  (:func:`iic_survey.output.staging.write_part`) and return one tiny receipt row per part.
  Nothing funnels the rows through one process: the driver only sees receipts (pixel, part, row
  count and a few counters), and when a pixel's staged rows reach its planned count it starts a
  Ray task that commits it (:func:`iic_survey.output.commit.commit_pixel`: concatenate, sort by
  ``_healpix_29``, split past ``--max-rows-per-partition``, atomic writes, then the done
  marker). Then :func:`iic_survey.output.finalize.finalize` writes the HATS metadata from the
  committed files' footers, and :func:`iic_survey.output.margin.build_margin` the margin
  catalog (``--margin-arcsec``; a Ray task per partition, resumable) and
  ``collection.properties``; :func:`iic_survey.output.index.build_indexes` the index catalogs
  on ``cntr`` and ``designation`` (a complete run only).

Exactly once: a part's name is a function of its rows (chunk, first row, row count), so a
retried task rewrites its own part; before a run, staged parts of unfinished pixels are removed
(a crashed run may have staged them under another batching); a pixel is committed only when its
staged rows equal the planned count, and :func:`~iic_survey.output.commit.commit_pixel`
re-checks the count and that no ``cntr`` repeats. A rerun skips committed pixels, so crash +
rerun gives the same catalog as one uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import ray
from upath import UPath

from iic_survey.core.atomic import write_atomic
from iic_survey.core.constants import CLASSES, SUBSETS
from iic_survey.core.progress import interactive
from iic_survey.model import machine
from iic_survey.model.directory import META_FILE, load_model_dir
from iic_survey.model.ood import LEGACY_ESTIMATOR, OodStats
from iic_survey.model.precision import GateResult
from iic_survey.output import commit as output_commit
from iic_survey.output import finalize, index, margin, schema, selection_folder, staging
from iic_survey.survey.classify import scoring_record
from iic_survey.survey.config import PipelineConfig, PipelineError
from iic_survey.survey.plan import Plan, plan_run
from iic_survey.survey.progress import Progress
from iic_survey.survey.stages import COUNTERS, build_dataset, decide_precision, open_inputs

logger = logging.getLogger(__name__)
CommitHook = Callable[[int], None]
"""``hook(committed)``, called by the driver after each pixel commit with the number committed so
far in this run; an exception it raises ends the run as a crash would (the tests' crash hook)."""


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
            "subset: " + ", ".join(f"{k} {c.get(f'subset_{k}', 0):,}" for k in SUBSETS),
            "flags: "
            + (
                ", ".join(f"{k[5:]} {v:,}" for k, v in c.items() if k.startswith("flag_") and v)
                or "none"
            ),
        ]
        return "\n".join(lines)


def _clear_staging(out: UPath, order: int, todo: Sequence[int]) -> None:
    """Remove parts a crashed run left for pixels this run redoes (they may overlap ours)."""
    base = staging.fresh(schema.staging_dir(out, order, 0).parent)
    if not base.exists():
        return
    want = {f"Npix={int(p)}" for p in todo}
    listed = base.fs.ls(base.path, detail=False)
    stale = [p for p in listed if p.rstrip("/").rsplit("/", 1)[-1] in want]
    if stale:
        logger.info("removing staged parts of %d unfinished pixels from an earlier run", len(stale))
        base.fs.rm(stale, recursive=True)


def _record_start(config: PipelineConfig, out: UPath, decision: GateResult) -> None:
    """Add this start's precision decision to ``_run.json`` (``precision_runs``, one per start)
    and the machine (``machines``: CPU, torch capability in use, numpy SIMD, versions), and say
    how the model scores rows (``scoring``: depth calibration or a single temperature; with or
    without a training domain for ``subset``)."""
    path = out / "_run.json"
    record = staging.read_json(path)
    record["precision_runs"] = [*record.get("precision_runs", []), decision.to_dict()]
    # what this start's rows were computed with (the driver's machine; README Reproducibility)
    record["machines"] = [*record.get("machines", []), machine.provenance(decision.used)]
    record["ood"] = _ood_record(config.inference.model_dir)
    record["scoring"] = scoring_record(config.inference.model_dir)
    for note in record["scoring"]["notes"]:
        logger.warning("%s", note)
    write_atomic(path, json.dumps(record, indent=1, sort_keys=True).encode())


def _ood_record(model_dir: str) -> dict[str, Any] | None:
    """How ``ood_score`` is computed: the covariance estimator (older directories: the legacy
    one, scored as before). Unusable statistics are refused here, naming the file."""
    source = f"{model_dir}/{META_FILE}"
    stats = OodStats.from_model(load_model_dir(model_dir).feature_stats, source=source)
    if stats is not None and stats.estimator == LEGACY_ESTIMATOR:
        logger.warning("model %s: OOD statistics of the legacy estimator (%s), scored as before",
                       model_dir, LEGACY_ESTIMATOR)  # fmt: skip
    return stats.record() if stats else None


def _precision_used(out: UPath) -> str:
    """The precision the catalog's rows were computed in (``mixed: ...`` if starts differed)."""
    runs = staging.read_json(out / "_run.json").get("precision_runs", [])
    used = sorted({str(r.get("used")) for r in runs})
    return used[0] if len(used) == 1 else f"mixed: {', '.join(used)}" if used else "unknown"


def run_pipeline(config: PipelineConfig, after_commit: CommitHook | None = None) -> Summary:
    """Classify the selected pixels into the output catalog; resumable, exactly once per source.

    ``after_commit`` (:data:`CommitHook`) is called after each pixel commit.

    Raises
    ------
    PipelineError
        If a pixel's staged rows do not add up to its planned count (input changed, rows lost).
    iic_survey.output.staging.OutputError
        If the output holds something else, or a run with other arguments (use ``overwrite``).
    """
    t0 = time.monotonic()
    inputs = open_inputs(config)
    out = inputs.out
    resumed = staging.prepare_output(out, config.run_args(inputs.model_id), config.output.overwrite)
    finished: list[int] = []
    if resumed:
        finished = staging.finished_pixels(out, config.selection.healpix_order).tolist()
    plan = plan_run(config, inputs.catalog, finished)
    if not plan.counts:
        raise PipelineError(
            "no catalog sources in the selected pixels; check --pixels/--cone and the order"
        )
    staging.write_plan(out, plan.order, plan.counts)
    logger.info(
        "plan: %d pixels selected, %d already done, %d to classify (%d sources)",
        len(plan.counts),
        len(plan.finished),
        len(plan.todo),
        plan.todo_rows,
    )
    counters: dict[str, int] = {}
    if plan.todo:
        _clear_staging(out, plan.order, plan.todo)
        decision = decide_precision(config, inputs, plan)
        _record_start(config, out, decision)
        # Ray Data's own progress bars for a person at a terminal; a log gets Progress's lines
        ray.data.DataContext.get_current().enable_progress_bars = interactive()
        ds = build_dataset(config, inputs, plan, decision.used)
        driver = _Driver(config, plan, out, t0, after_commit)
        driver.run(ds)
        counters = dict(driver.counters)
    props = {
        "iic_model": inputs.model_id,
        "iic_input_catalog": config.inputs.catalog,
        "iic_images": config.inputs.images,
        "iic_precision": _precision_used(out),
    }
    url = finalize.finalize(out, props, allow_partial=plan.partial)
    if config.output.margin_arcsec > 0 and not plan.partial:
        margin.build_margin(out, config.output.margin_arcsec, _ray_map)
    if not plan.partial:  # after the margin: id lookups by cntr / designation (issue 27)
        index.build_indexes(out)
    selection_folder.publish(out, config.inference.model_dir)
    summary = Summary(
        url,
        plan.order,
        len(plan.counts),
        len(plan.finished),
        len(plan.todo),
        plan.todo_rows,
        time.monotonic() - t0,
        plan.partial,
        counters,
    )
    logger.info("done:\n%s", summary.text())
    return summary


def _ray_map(fn: Any, args: list[tuple[Any, ...]]) -> list[Any]:
    """``[fn(*a) for a in args]`` as Ray tasks (the margin: one task per partition)."""
    task = ray.remote(num_cpus=1)(fn)
    return list(ray.get([task.remote(*a) for a in args]))


@dataclasses.dataclass
class _Driver:
    """The driver's side of a run: counts receipts, commits pixels as they complete, logs progress.

    On any error the stream is closed at once (Ray Data cancels its tasks and kills its actors,
    so no stale task stages parts behind a later rerun) and commits in flight are let finish
    (they are idempotent), then the error propagates.
    """

    config: PipelineConfig
    plan: Plan
    out: UPath
    """The output catalog's root (with its storage options: commit tasks get it)."""
    t0: float
    """``time.monotonic()`` at the start of the run, for the progress rate."""
    after_commit: CommitHook | None = None
    """Called after each pixel commit (:data:`CommitHook`)."""
    counters: Counter[str] = dataclasses.field(default_factory=Counter)
    """The receipts' counters, summed (the summary's class and flag counts)."""
    staged: Counter[int] = dataclasses.field(default_factory=Counter)
    """Rows staged so far per pixel."""
    pending: dict[Any, int] = dataclasses.field(default_factory=dict)
    """Commit tasks in flight -> their pixel."""
    done: set[int] = dataclasses.field(default_factory=set)
    """Pixels committed."""
    rows_staged: int = 0
    """Rows staged so far, all pixels (what the progress thread reads)."""

    def __post_init__(self) -> None:
        self._commit = ray.remote(num_cpus=0)(output_commit.commit_pixel)

    def run(self, ds: Any) -> None:
        """Consume the dataset's receipts to the end; raise if a pixel did not complete."""
        stream = ds.iter_batches(batch_format="pandas", batch_size=None)
        progress = Progress(
            len(self.plan.todo),
            self.plan.todo_rows,
            lambda: (len(self.done), self.rows_staged),
            self.config.progress_interval_s,
            self.t0,
        )
        try:
            with progress:
                for receipts in stream:
                    for rec in receipts.to_dict("records"):
                        self.receive(rec)
                    self.collect(block=False)
                while self.pending:
                    self.collect(block=True)
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()  # shuts the executor down now, not when the traceback is collected
            if self.pending:
                ray.wait(list(self.pending), num_returns=len(self.pending), timeout=120)
        self.check_complete()

    def receive(self, rec: dict[str, Any]) -> None:
        """Count one receipt; start the pixel's commit when its staged rows reach the plan."""
        pixel = int(rec["pixel"])
        self.staged[pixel] += int(rec["rows"])
        self.rows_staged += int(rec["rows"])
        self.counters.update({k: int(rec[k]) for k in COUNTERS})
        expected = int(self.plan.counts[pixel])
        if self.staged[pixel] > expected:
            raise PipelineError(
                f"pixel {pixel}: {self.staged[pixel]} rows staged, {expected} planned"
            )
        if self.staged[pixel] == expected:
            while len(self.pending) >= self.config.resources.commit_concurrency:
                self.collect(block=True)
            task = self._commit.remote(self.out, self.plan.order, pixel, expected)
            self.pending[task] = pixel

    def collect(self, block: bool) -> None:
        """Record finished commits (waiting for one if ``block``); raise a commit's error."""
        while self.pending:
            ready, _ = ray.wait(list(self.pending), num_returns=1, timeout=None if block else 0)
            if not ready:
                return
            ray.get(ready[0])  # raises the commit's error, if any
            self.done.add(self.pending.pop(ready[0]))
            if self.after_commit is not None:
                self.after_commit(len(self.done))
            block = False

    def check_complete(self) -> None:
        """Raise if a pixel of the plan was not committed (rows went missing)."""
        plan = self.plan
        missing = {p: (self.staged[p], plan.counts[p]) for p in plan.todo if p not in self.done}
        if missing:
            raise PipelineError(
                f"{len(missing)} pixels did not receive all their rows (staged, planned): "
                f"{dict(list(missing.items())[:5])}; rerun to resume them"
            )
