"""Planning a run on the driver: which pixels, how many rows each, and how to read them.

:func:`plan_run` selects the pixels at the run's order (given, in a cone, or all), counts their
rows from the catalog's metadata (deeper than order 5: from the positions of the order-5 parent
partitions, read once), skips the pixels already committed, and groups the rest into read units
(one catalog partition each). The planned counts are what the driver checks staged rows
against, so a pixel is committed only when all of its rows are there. :func:`assign_pixels`
gives the deeper pixel of each row the same way the reader does.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import ray

from iic_survey.core import healpix
from iic_survey.survey.config import PipelineConfig

logger = logging.getLogger(__name__)


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
    ok = healpix.valid_coordinates(ra, dec)
    out = np.full(len(ra), int(parent) << (2 * (order - parent_order)), dtype=np.int64)
    if ok.any():
        out[ok] = healpix.pixel_of(ra[ok], dec[ok], order)
    return out


def _child_counts(catalog: Any, k5: int, order: int) -> dict[int, int]:
    """Rows of each order-``order`` child of the order-5 partition ``k5`` (reads positions)."""
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
    """The catalog's pixels at the run's order that the config selects."""
    order = config.selection.healpix_order
    available = catalog.pixels(order)
    if config.selection.pixels is not None:
        wanted = np.asarray(config.selection.pixels, dtype=np.int64)
        absent = np.setdiff1d(wanted, available)
        if absent.size:
            logger.warning(
                "%d requested pixels hold no catalog files (e.g. %s)",
                absent.size,
                absent[:5].tolist(),
            )
        return np.intersect1d(wanted, available)
    if config.selection.cone is not None:
        return np.intersect1d(healpix.cone_pixels(*config.selection.cone, order), available)
    return np.asarray(available, dtype=np.int64)


def plan_run(config: PipelineConfig, catalog: Any, finished: Sequence[int] = ()) -> Plan:
    """Plan the pixels of a run (reads counts, not rows, for orders up to 5)."""
    order = config.selection.healpix_order
    selected = _select(config, catalog)
    catalog.check_files()  # a file _metadata lists but the storage lacks fails here, first
    counts: dict[int, int] = {}
    if order <= 5:
        for p in selected.tolist():
            counts[int(p)] = int(catalog.count(int(p), order))
    else:
        parents = np.unique(healpix.parent(selected, order, 5)) if selected.size else selected
        wanted = set(selected.tolist())
        for found in _map_parents(catalog, parents.tolist(), order):
            counts.update({p: n for p, n in found.items() if p in wanted})
    empty = [p for p, n in counts.items() if n == 0]
    if empty:
        logger.info("%d selected pixels are empty and are skipped", len(empty))
    counts = {p: n for p, n in sorted(counts.items()) if n > 0}
    done = tuple(sorted(set(int(p) for p in finished) & set(counts)))
    todo = [p for p in counts if p not in set(done)]
    if config.selection.limit is not None:
        todo = todo[: config.selection.limit]
    return Plan(order, counts, done, tuple(todo), tuple(_units(order, todo, counts)))


def _map_parents(catalog: Any, parents: list[int], order: int) -> Iterator[dict[int, int]]:
    """Child counts per parent partition; in parallel Ray tasks when Ray is up and it pays."""
    if len(parents) < 4 or not ray.is_initialized():
        for k5 in parents:
            yield _child_counts(catalog, k5, order)
        return
    task = ray.remote(num_cpus=1)(_child_counts)
    ref = ray.put(catalog)
    yield from ray.get([task.remote(ref, k5, order) for k5 in parents])


def _units(order: int, todo: Sequence[int], counts: Mapping[int, int]) -> Iterator[dict[str, Any]]:
    """Read units: one per pixel up to order 5, else one per order-5 parent of the pixels."""
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
