"""The HATS metadata files, written with the ``hats`` library's own functions.

``hats`` tracks the HATS specification as it changes, so the files it defines are written by
it: ``dataset/_metadata``, ``_common_metadata`` and ``data_thumbnail.parquet``
(:func:`hats.io.write_parquet_metadata`), ``partition_info.csv``
(:class:`hats.catalog.PartitionInfo`), ``point_map.fits`` and ``skymap.fits``
(:func:`hats.io.file_io.write_fits_image`, :func:`hats.io.skymap.write_skymap`),
``hats.properties`` (:class:`hats.catalog.TableProperties`), an index catalog's metadata
(:func:`write_index_metadata`) and ``collection.properties``
(:class:`hats.catalog.CollectionProperties`). The staging/commit protocol stays ours: hats
writes each file into an in-memory scratch folder, and :func:`iic_survey.core.atomic.write_atomic`
puts it in place through the run's filesystem, so every file appears whole (local, S3, memory).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator, Sequence

import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem
from hats.catalog import CollectionProperties, PartitionInfo, TableProperties
from hats.io import file_io, write_parquet_metadata
from hats.io.skymap import write_skymap
from hats.pixel_math.healpix_pixel import HealpixPixel
from upath import UPath

from iic_survey.core import sky
from iic_survey.core.atomic import write_atomic


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


def write_dataset_metadata(fs: fsspec.AbstractFileSystem, catalog: str) -> int:
    """``dataset/_common_metadata``, ``dataset/_metadata`` and ``data_thumbnail.parquet``.

    hats reads every partition's footer (and one row of each, for the thumbnail); returns the
    rows it counted.
    """
    rows: list[int] = []

    def write(tmp: UPath) -> None:
        rows.append(
            write_parquet_metadata(upath(fs, catalog), output_path=tmp, create_thumbnail=True)
        )

    names = ["dataset/_common_metadata", "dataset/_metadata", "data_thumbnail.parquet"]
    _publish(fs, catalog, write, names)
    return rows[0]


def write_partition_info(
    fs: fsspec.AbstractFileSystem, catalog: str, pixels: Sequence[tuple[int, int]]
) -> None:
    """``partition_info.csv`` of the partitions ``(order, pixel)``."""
    info = PartitionInfo.from_healpix([HealpixPixel(k, p) for k, p in sorted(pixels)])
    _publish(fs, catalog, lambda tmp: info.write_to_file(tmp / "partition_info.csv"),
             ["partition_info.csv"])  # fmt: skip


def coverage_map(histograms: Sequence[Sequence[Sequence[int]]], order: int) -> np.ndarray:
    """Dense rows-per-pixel array at ``order`` from markers' sparse ``[[pixel, rows], ...]``."""
    counts = np.zeros(sky.npix(order), dtype=np.int64)
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

    As hats-import writes them for an index: rows in id order, not HEALPix order, no thumbnail.
    Returns the rows hats counted.
    """
    rows: list[int] = []

    def write(tmp: UPath) -> None:
        rows.append(write_parquet_metadata(upath(fs, catalog), order_by_healpix=False,
                                           output_path=tmp))  # fmt: skip

    _publish(fs, catalog, write, ["dataset/_common_metadata", "dataset/_metadata"])
    return rows[0]


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
    props = CollectionProperties(
        obs_collection=name,
        hats_primary_table_url=main,
        all_margins=list(margins) or None,
        default_margin=margins[0] if margins else None,
        all_indexes=dict(indexes) if indexes else None,
        default_index=next(iter(indexes)) if indexes else None,
    )
    _publish(fs, root, props.to_properties_file, ["collection.properties"])


def read_properties(fs: fsspec.AbstractFileSystem, catalog: str) -> TableProperties:
    """A catalog's ``hats.properties`` as hats reads it."""
    return TableProperties.read_from_dir(upath(fs, catalog))
