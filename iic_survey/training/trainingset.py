"""The training set on disk: Parquet per split, tensor columns, and a manifest that says what it is.

Layout: ``<root>/_manifest.json`` beside ``<root>/split=<name>/part-NNNNN.parquet`` (a hive
partition, so ``pandas.read_parquet(root)`` sees a ``split`` column), with the 3x80x80 image and
the catalog features as ``arrow.fixed_shape_tensor`` columns. :class:`TrainingSetWriter` publishes
a set atomically; :func:`read_manifest` refuses sets this code cannot read (a newer format,
other classes, or splits drawn with another hash than :data:`iic_survey.core.hashing.HASH_NAME`);
:func:`read_split` and :func:`read_split_ray` read one split into numpy or a lazy Ray Dataset.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, TypedDict, cast

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa

from iic_survey.core.config import did_you_mean
from iic_survey.core.constants import CLASSES, __version__
from iic_survey.core.hashing import HASH_NAME
from iic_survey.training.splits import SPLITS

if TYPE_CHECKING:
    import pyarrow.compute as pc
    import ray.data

# ---------------------------------------------------------------------------------------------
# The training set on disk: <root>/_manifest.json + <root>/split=<name>/part-NNNNN.parquet

FORMAT_VERSION = 1
"""Version of the training-set layout; readers refuse a newer one."""
MANIFEST = "_manifest.json"
"""Manifest file name; the leading underscore makes Parquet readers skip it, like _metadata."""
IMAGE_SHAPE = (3, 80, 80)


class Manifest(TypedDict, total=False):
    """``_manifest.json``: what a training set is (written by :meth:`TrainingSetWriter.close`
    from the builder's ``meta`` and the writer's counts)."""

    format_version: int
    classes: list[str]
    image_shape: list[int]
    code_version: str
    split_hash: str
    counts: dict[str, dict[str, int]]
    """Rows per split, then per class."""
    source: str
    config: dict[str, object]
    feature_names: list[str]
    rgb: dict[str, object]
    cutout: dict[str, object]
    images: str
    dropped: int


def _fs(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


def to_arrow(df: pd.DataFrame, images: np.ndarray, features: np.ndarray) -> pa.Table:
    """A pyarrow table of the rows with ``image`` and ``features`` as fixed-shape tensor columns.

    ``arrow.fixed_shape_tensor`` is Arrow's canonical extension type: Ray Data reads it into
    (N, 3, 80, 80) numpy batches, and plain pyarrow/pandas keep the shape too.
    """

    images = np.ascontiguousarray(images, dtype=np.float32)
    features = np.ascontiguousarray(features, dtype=np.float32)
    if images.shape[1:] != IMAGE_SHAPE or len(images) != len(df) or len(features) != len(df):
        raise ValueError(
            f"images {images.shape} / features {features.shape} do not fit {len(df)} rows"
        )
    table = pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)
    table = table.append_column("image", pa.FixedShapeTensorArray.from_numpy_ndarray(images))
    return table.append_column("features", pa.FixedShapeTensorArray.from_numpy_ndarray(features))


class TrainingSetWriter:
    """Writes part files into a staging folder and publishes the set atomically on :meth:`close`.

    A reader never sees half a training set: everything goes to ``<root>.partial`` and is renamed
    to ``<root>`` once the manifest is written. An existing ``<root>`` is refused unless
    ``overwrite``.
    """

    def __init__(self, root: str, overwrite: bool = False) -> None:
        self.fs, self.root = _fs(root)
        if self.fs.exists(self.root) and not overwrite:
            raise FileExistsError(f"training set {root} exists; pass overwrite=True to replace it")
        self.staging = self.root.rstrip("/") + ".partial"
        if self.fs.exists(self.staging):
            self.fs.rm(self.staging, recursive=True)
        self.fs.makedirs(self.staging, exist_ok=True)
        self.counts: dict[str, dict[str, int]] = {s: dict.fromkeys(CLASSES, 0) for s in SPLITS}
        self.parts = 0

    def write(self, df: pd.DataFrame, images: np.ndarray, features: np.ndarray) -> None:
        """Write labelled rows (must have ``split``, ``class``) with their images and features."""
        import pyarrow.parquet as pq

        split = df["split"].to_numpy()
        for s in SPLITS:
            sel = np.flatnonzero(split == s)
            if not len(sel):
                continue
            table = to_arrow(df.iloc[sel].drop(columns="split"), images[sel], features[sel])
            path = f"{self.staging}/split={s}/part-{self.parts:05d}.parquet"
            self.fs.makedirs(f"{self.staging}/split={s}", exist_ok=True)
            with self.fs.open(path, "wb") as f:
                pq.write_table(table, f, compression="zstd", row_group_size=1024)
            for c, k in df.iloc[sel]["class"].value_counts().items():
                self.counts[s][str(c)] += int(k)
        self.parts += 1

    def close(self, meta: Manifest) -> Manifest:
        """Write the manifest (``meta``, the split hash's name, counts) and publish; returns the
        manifest."""

        manifest: Manifest = {
            "format_version": FORMAT_VERSION,
            "classes": list(CLASSES),
            "image_shape": list(IMAGE_SHAPE),
            "code_version": __version__,
            **meta,
            "split_hash": HASH_NAME,
            "counts": self.counts,
        }
        with self.fs.open(f"{self.staging}/{MANIFEST}", "w") as f:
            json.dump(manifest, f, indent=1, default=str)
        if self.fs.exists(self.root):
            self.fs.rm(self.root, recursive=True)
        self.fs.mv(self.staging, self.root, recursive=True)
        return manifest


def read_manifest(root: str) -> Manifest:
    """The manifest of a training set (classes, feature names, RGB parameters, counts)."""
    fs, path = _fs(root)
    try:
        with fs.open(f"{path}/{MANIFEST}", "r") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no training set at {root} (no {MANIFEST}); build one with jobs/build_training_set.py"
        ) from None
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"training set {root} has format {manifest['format_version']}, newer than "
            f"this code reads ({FORMAT_VERSION}); upgrade iic_survey"
        )
    if tuple(manifest.get("classes", ())) != CLASSES:
        raise ValueError(f"training set classes {manifest.get('classes')} differ from {CLASSES}")
    # Sets written before the split hash was recorded drew their splits with BLAKE2b.
    split_hash = manifest.get("split_hash", "blake2b")
    if split_hash != HASH_NAME:
        raise ValueError(
            f"training set {root} was split with hash {split_hash!r}, not this code's "
            f"{HASH_NAME!r}: its splits would not match the ones this code assigns; rebuild it "
            f"with jobs/build_training_set.py --overwrite"
        )
    return cast(Manifest, dict(manifest))


def split_path(root: str, split: str) -> str:
    """Folder of one split."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}{did_you_mean(split, SPLITS)}")
    return f"{root.rstrip('/')}/split={split}"


def read_split(
    root: str, split: str, columns: list[str] | None = None, filter: pc.Expression | None = None
) -> dict[str, np.ndarray]:
    """One split as numpy arrays (``image`` (N, 3, 80, 80), ``features`` (N, F), ...), in memory;
    ``filter`` is a ``pyarrow.compute`` expression applied while reading."""
    import pyarrow.dataset as pds

    fs, path = _fs(split_path(root, split))
    if not fs.exists(path):
        return {}
    table = pds.dataset(path, filesystem=fs, format="parquet").to_table(
        columns=columns, filter=filter
    )
    out: dict[str, np.ndarray] = {}
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        out[name] = (
            col.to_numpy_ndarray()
            if hasattr(col, "to_numpy_ndarray")
            else col.to_numpy(zero_copy_only=False)
        )
    return out


def read_split_ray(root: str, split: str, columns: list[str] | None = None) -> ray.data.Dataset:
    """One split as a lazy Ray Dataset (tensor columns come out as (N, ...) numpy batches)."""
    import ray.data

    fs, path = _fs(split_path(root, split))
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    if "file" in protocols or "local" in protocols:
        ds = ray.data.read_parquet(path)
    else:
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        ds = ray.data.read_parquet(path, filesystem=PyFileSystem(FSSpecHandler(fs)))
    return ds if columns is None else ds.select_columns(columns)
