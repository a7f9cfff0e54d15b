"""Checking a whole catalog: everything wrong with it, as sentences a person can act on.

:func:`validate_catalog` compares the partition sets (plan, commit markers,
``partition_info.csv``, the files), each file with its marker (rows, sha256), and every row with
the format's rules (order, ``_healpix_29`` equal to the index of its ra/dec and inside its
partition, unique ``cntr``, probabilities, class and confidence that agree with them).
It reads every file once, so it is a check for tests and audits, not a step of the run.
"""

from __future__ import annotations

import hashlib
import io
import re

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from iic_survey.core import healpix
from iic_survey.core.constants import CLASSES
from iic_survey.output.reader import PROB_COLUMNS, partitions, read_properties
from iic_survey.output.schema import catalog_dir, pixel_file, resolve
from iic_survey.output.staging import commit_markers, read_plan


def validate_catalog(
    path: str, filesystem: fsspec.AbstractFileSystem | None = None, tol: float = 1e-3
) -> list[str]:
    """Everything wrong with a catalog, as readable sentences (empty when it is sound).

    Checks the partition sets (plan, markers, partition_info.csv, files), each file against its
    marker (rows, sha256), row order, every row's ``_healpix_29`` against its own ra/dec and its
    partition, ``cntr`` unique across the catalog, the probabilities (all three or none, in
    [0, 1], summing to 1 within ``tol``), and that ``class`` and ``confidence`` agree with them.
    Reads every file once: at sky scale it needs memory for all ``cntr`` values (8 bytes a row).
    """
    fs, root = resolve(path, filesystem)
    markers = commit_markers(root, fs)
    entries = {
        (int(e["order"]), int(e["pixel"])): e
        for pix in markers.values()
        for m in pix.values()
        for e in m["partitions"]
    }
    problems = _set_problems(fs, root, markers, set(entries))
    on_disk = _files_on_disk(fs, root)
    all_cntr, total = [], 0
    for (order, pixel), entry in sorted(entries.items()):
        if (order, pixel) not in on_disk:
            continue
        data = fs.cat_file(pixel_file(root, order, pixel))
        table = pq.read_table(io.BytesIO(data))
        total += table.num_rows
        where = f"pixel {pixel} (order {order})"
        if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
            problems.append(f"{where}: file checksum differs from its marker")
        if table.num_rows != entry.get("rows"):
            problems.append(f"{where}: {table.num_rows} rows, marker says {entry.get('rows')}")
        problems += [f"{where}: {p}" for p in _row_problems(table, order, pixel, tol)]
        all_cntr.append(table.column("cntr").to_numpy())
    cntr = np.concatenate(all_cntr) if all_cntr else np.zeros(0, np.int64)
    uniq, counts_ = np.unique(cntr, return_counts=True)
    if len(uniq) != len(cntr):
        problems.append(
            f"{len(cntr) - len(uniq)} repeated cntr values across pixels "
            f"(e.g. {uniq[counts_ > 1][:5].tolist()})"
        )
    props = read_properties(root, fs)
    if props and int(props.get("hats_nrows", -1)) != total:
        problems.append(f"hats_nrows={props.get('hats_nrows')} but the files hold {total} rows")
    return problems


def _files_on_disk(fs: fsspec.AbstractFileSystem, root: str) -> set[tuple[int, int]]:
    on_disk = set()
    for f in fs.glob(f"{catalog_dir(root)}/dataset/Norder=*/Dir=*/Npix=*.parquet"):
        m = re.search(r"Norder=(\d+)/Dir=\d+/Npix=(\d+)\.parquet$", f)
        if m:
            on_disk.add((int(m[1]), int(m[2])))
    return on_disk


def _set_problems(
    fs: fsspec.AbstractFileSystem,
    root: str,
    markers: dict[int, dict[int, dict]],
    listed: set[tuple[int, int]],
) -> list[str]:
    """Disagreements between the files, the markers, partition_info.csv and the plan."""
    problems = []
    on_disk = _files_on_disk(fs, root)
    if listed != on_disk:
        problems.append(
            f"pixel files without marker: {sorted(on_disk - listed)[:10]}; "
            f"markers without file: {sorted(listed - on_disk)[:10]}"
        )
    if not read_properties(root, fs):
        problems.append("no hats.properties: the catalog was not finalized")
    elif set(partitions(root, fs)) != listed:
        problems.append("partition_info.csv does not list exactly the committed pixels")
    plan = read_plan(root, fs)
    if plan is not None:
        k, counts = plan
        done = markers.get(k, {})
        missing = sorted(p for p in counts if p not in done)
        if missing:
            problems.append(f"{len(missing)} planned pixels missing: {missing[:10]}")
        for p, marker in sorted(done.items()):
            if counts.get(p, 0) != marker["rows"]:
                problems.append(f"pixel {p}: {marker['rows']} rows, {counts.get(p)} planned")
    return problems


def _row_problems(table: pa.Table, order: int, pixel: int, tol: float) -> list[str]:
    out = []
    h29 = table.column("_healpix_29").to_numpy()
    if np.any(np.diff(h29) < 0):
        out.append("rows are not sorted by _healpix_29")
    if np.any(h29 >> (2 * (healpix.MAX_ORDER - order)) != pixel):
        out.append("rows with _healpix_29 outside the pixel")
    ra = table.column("ra").to_numpy(zero_copy_only=False).astype(np.float64)
    dec = table.column("dec").to_numpy(zero_copy_only=False).astype(np.float64)
    ok = healpix.valid_coordinates(ra, dec)
    if ok.any() and np.any(healpix.healpix_29(ra[ok], dec[ok]) != h29[ok]):
        n = int(np.sum(healpix.healpix_29(ra[ok], dec[ok]) != h29[ok]))
        out.append(f"{n} rows whose _healpix_29 is not the index of their ra/dec")
    probs = np.stack(
        [table.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in PROB_COLUMNS],
        axis=1,
    )
    null = np.isnan(probs)
    if np.any(null.any(axis=1) != null.all(axis=1)):
        out.append("rows with some but not all probabilities null")
    ok = ~null.any(axis=1)
    p = probs[ok]
    if np.any((p < -tol) | (p > 1 + tol)):
        out.append("probabilities outside [0, 1]")
    if np.any(np.abs(p.sum(axis=1) - 1) > tol):
        out.append(
            f"{int(np.sum(np.abs(p.sum(axis=1) - 1) > tol))} rows whose probabilities "
            f"do not sum to 1"
        )
    cls = table.column("class").cast(pa.string()).to_numpy(zero_copy_only=False)
    if np.any(pd.isna(cls) != ~ok):
        out.append("class is null where probabilities exist, or set where they are null")
    if ok.any():
        best = np.asarray(CLASSES, dtype=object)[np.argmax(p, axis=1)]
        conf = table.column("confidence").to_numpy(zero_copy_only=False)[ok]
        if np.any(best != cls[ok]):
            out.append(
                f"{int(np.sum(best != cls[ok]))} rows whose class is not the most probable one"
            )
        if np.any(np.abs(conf - p.max(axis=1)) > tol):
            out.append("confidence differs from the largest probability")
    return out
