"""The HATS metadata files, written with the ``hats`` library's own functions where it can.

``hats`` tracks the HATS specification as it changes, so the files it defines are written by
it: ``partition_info.csv`` (:class:`hats.catalog.PartitionInfo`), ``point_map.fits`` and
``skymap.fits`` (:func:`hats.io.file_io.write_fits_image`, :func:`hats.io.skymap.write_skymap`),
``hats.properties`` (:class:`hats.catalog.TableProperties`) and ``collection.properties``
(:class:`hats.catalog.CollectionProperties`). ``dataset/_metadata``, ``_common_metadata`` and
``data_thumbnail.parquet`` (a catalog's and an index catalog's) are the exception: hats'
:func:`hats.io.write_parquet_metadata` holds every partition's footer at once, so they are
written streaming, to the same content (:mod:`iic_survey.output.metadata_stream`; the tests
compare it with hats' output). The staging/commit protocol stays ours: hats writes each file
into an in-memory scratch folder, and :func:`iic_survey.core.atomic.write_atomic` puts it in
place through the run's filesystem, so every file appears whole (local, S3, memory).
"""

from __future__ import annotations

import contextlib
import random
import uuid
from collections.abc import Callable, Iterator, Sequence

import fsspec
import numpy as np
import pyarrow as pa
from fsspec.implementations.local import LocalFileSystem
from hats.catalog import CollectionProperties, PartitionInfo, TableProperties
from hats.io import file_io
from hats.io.skymap import write_skymap
from hats.pixel_math.healpix_pixel import HealpixPixel
from upath import UPath

from iic_survey.core import healpix
from iic_survey.core.atomic import write_atomic
from iic_survey.output.metadata_stream import write_streamed_metadata


def upath(fs: fsspec.AbstractFileSystem, path: str) -> UPath:
    """A UPath for ``path`` on ``fs`` (its storage options kept: an S3 endpoint, ...)."""
    if isinstance(fs, LocalFileSystem):
        return UPath(path)
    return UPath(fs.unstrip_protocol(path), **dict(fs.storage_options))


@contextlib.contextmanager
def _scratch() -> Iterator[UPath]:
    path = UPath(f"memory:///_iic_survey_scratch/{uuid.uuid4().hex}")
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    finally:
        path.fs.rm(path.path, recursive=True)


def _publish(
    fs: fsspec.AbstractFileSystem, dest: str, write: Callable[[UPath], None], names: Sequence[str]
) -> None:
    """Let ``write`` fill a scratch folder, then put ``names`` (in that order) under ``dest``."""
    with _scratch() as tmp:
        write(tmp)
        for name in names:
            write_atomic(fs, f"{dest}/{name}", (tmp / name).read_bytes())


_IGNORED = ["_common_metadata", "_metadata", "data_thumbnail"]
"""File-name prefixes under ``dataset/`` that are not partitions (as hats ignores them)."""


def _partition_files(fs: fsspec.AbstractFileSystem, catalog: str) -> tuple[pa.Schema, list[str]]:
    """The dataset's schema and its partition files (relative to ``dataset/``), as hats lists."""
    root, dataset = file_io.read_parquet_dataset(
        upath(fs, f"{catalog}/dataset"), ignore_prefixes=_IGNORED
    )
    return dataset.schema, [f[len(root) + 1 :] for f in dataset.files]


def write_dataset_metadata(
    fs: fsspec.AbstractFileSystem, catalog: str, thumbnail_threshold: int = 1_000_000
) -> int:
    """``dataset/_common_metadata``, ``dataset/_metadata`` and ``data_thumbnail.parquet``.

    The files hats' ``write_parquet_metadata(create_thumbnail=True)`` writes, written streaming
    (:mod:`iic_survey.output.metadata_stream`): one partition footer held at a time, so the
    driver's memory does not grow with the partitions. Returns the rows counted.
    """
    schema, files = _partition_files(fs, catalog)
    sampled = set(random.sample(files, min(len(files), thumbnail_threshold)))
    return write_streamed_metadata(fs, catalog, schema, files, thumbnail=sampled)


def write_partition_info(
    fs: fsspec.AbstractFileSystem, catalog: str, pixels: Sequence[tuple[int, int]]
) -> None:
    """``partition_info.csv`` of the partitions ``(order, pixel)``."""
    info = PartitionInfo.from_healpix([HealpixPixel(k, p) for k, p in sorted(pixels)])
    _publish(fs, catalog, lambda tmp: info.write_to_file(tmp / "partition_info.csv"),
             ["partition_info.csv"])  # fmt: skip


def coverage_map(histograms: Sequence[Sequence[Sequence[int]]], order: int) -> np.ndarray:
    """Dense rows-per-pixel array at ``order`` from markers' sparse ``[[pixel, rows], ...]``."""
    counts = np.zeros(healpix.npix(order), dtype=np.int64)
    for hist in histograms:
        if len(hist):
            arr = np.asarray(hist, dtype=np.int64)
            np.add.at(counts, arr[:, 0], arr[:, 1])
    return counts


def write_coverage(fs: fsspec.AbstractFileSystem, catalog: str, counts: np.ndarray) -> None:
    """``point_map.fits`` (hats reads the catalog's MOC from it) and ``skymap.fits``."""

    def write(tmp: UPath) -> None:
        file_io.write_fits_image(counts, tmp / "point_map.fits")
        write_skymap(counts, tmp)

    _publish(fs, catalog, write, ["point_map.fits", "skymap.fits"])


def write_properties(fs: fsspec.AbstractFileSystem, catalog: str, props: TableProperties) -> None:
    """``properties`` then ``hats.properties`` (last: readers take the catalog as complete)."""
    _publish(fs, catalog, props.to_properties_file, ["properties", "hats.properties"])


def write_index_metadata(fs: fsspec.AbstractFileSystem, catalog: str) -> int:
    """An index catalog's ``dataset/_common_metadata`` and ``dataset/_metadata``.

    As hats-import writes them for an index (hats' ``write_parquet_metadata`` with
    ``order_by_healpix=False``): rows in id order, not HEALPix order, no thumbnail; streamed
    like :func:`write_dataset_metadata`. Returns the rows counted.
    """
    schema, files = _partition_files(fs, catalog)
    return write_streamed_metadata(fs, catalog, schema, files, order_by_healpix=False)


def write_collection(
    fs: fsspec.AbstractFileSystem,
    root: str,
    name: str,
    main: str,
    margins: Sequence[str],
    indexes: dict[str, str] | None = None,
) -> None:
    """``collection.properties``: the main catalog, its margins (the first is the default) and
    its index catalogs (``{column: folder}``; the first is the default)."""
    props = CollectionProperties.model_validate(
        {
            "obs_collection": name,
            "hats_primary_table_url": main,
            "all_margins": list(margins) or None,
            "default_margin": margins[0] if margins else None,
            "all_indexes": dict(indexes) if indexes else None,
            "default_index": next(iter(indexes)) if indexes else None,
        }
    )
    _publish(fs, root, props.to_properties_file, ["collection.properties"])


def read_properties(fs: fsspec.AbstractFileSystem, catalog: str) -> TableProperties:
    """A catalog's ``hats.properties`` as hats reads it."""
    return TableProperties.read_from_dir(upath(fs, catalog))
