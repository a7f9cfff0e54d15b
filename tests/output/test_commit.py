"""A pixel's ``_done`` marker comes after its data (iic_survey.output.commit), crash or no crash.

A resumed run skips every pixel that has a marker, so a marker written before the pixel's
partition file turns a crash between the two into lost rows. The commit runs here on a memory
file system that records every file written, in order, and can fail the partition write.
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from iic_survey.core import sky
from iic_survey.output import commit, schema
from iic_survey.output import writer as output
from iic_survey.testing.catalog import fake_results

ORDER = 3


class RecordingFS(MemoryFileSystem):
    """Memory file system that logs each file written and can fail writes under ``crash_on``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.writes: list[str] = []
        self.crash_on: str | None = None

    def _written(self, path: str) -> None:
        path = self._strip_protocol(path)
        if self.crash_on and self.crash_on in path:
            raise OSError(f"injected: the store failed writing {path}")
        self.writes.append(path)

    def pipe_file(self, path, value, *args, **kwargs):
        self._written(path)
        self._piping = True  # MemoryFileSystem's pipe_file opens the file itself: count it once
        try:
            return super().pipe_file(path, value, *args, **kwargs)
        finally:
            self._piping = False

    def _open(self, path, mode="rb", *args, **kwargs):
        if ("w" in mode or "a" in mode) and not getattr(self, "_piping", False):
            self._written(path)
        return super()._open(path, mode, *args, **kwargs)


@pytest.fixture
def staged() -> tuple[RecordingFS, str, int, int]:
    """A planned pixel with all its rows staged on a fresh RecordingFS: (fs, root, pixel, n)."""
    df, _ = fake_results(600, seed=11)
    pixels = sky.pixel_of(df["ra"].to_numpy(), df["dec"].to_numpy(), ORDER)
    values, counts = np.unique(pixels, return_counts=True)
    pixel, n = int(values[counts.argmax()]), int(counts.max())
    fs = RecordingFS(skip_instance_cache=True)
    root = f"/iic-commit-order-{uuid.uuid4().hex}/catalog"
    output.prepare_output(root, {"healpix_order": ORDER, "model": "test"}, fs=fs)
    output.write_plan(root, ORDER, {pixel: n}, fs=fs)
    rows = df[pixels == pixel]
    output.write_part(root, ORDER, pixel, "c0", rows.iloc[: n // 2], fs)
    output.write_part(root, ORDER, pixel, "c1", rows.iloc[n // 2 :], fs)
    yield fs, root, pixel, n
    fs.rm(root.split("/catalog")[0], recursive=True)


def test_the_marker_is_the_last_file_a_commit_writes(staged) -> None:
    fs, root, pixel, n = staged
    fs.writes.clear()
    assert commit.commit_pixel(root, ORDER, pixel, n, fs) == n
    marker = schema.marker_path(root, ORDER, pixel)
    data = [w for w in fs.writes if w.startswith(f"{root}/{schema.MAIN}/dataset/")]
    assert data, f"no partition file written: {fs.writes}"
    assert fs.writes.count(marker) == 1, f"the marker was written {fs.writes.count(marker)} times"
    assert fs.writes[-1] == marker, (
        f"written after the marker: {fs.writes[fs.writes.index(marker) + 1 :]}"
    )


def test_a_commit_that_fails_writing_data_leaves_no_marker_and_reruns(staged) -> None:
    fs, root, pixel, n = staged
    fs.crash_on = f"{root}/{schema.MAIN}/dataset/"  # the partition file's write fails
    with pytest.raises(OSError, match="injected"):
        commit.commit_pixel(root, ORDER, pixel, n, fs)
    assert not commit.is_finished(root, ORDER, pixel, fs), "a marker without its data"
    assert output.staged_rows(root, ORDER, pixel, fs) == n  # the staged rows are kept
    fs.crash_on = None
    assert commit.commit_pixel(root, ORDER, pixel, n, fs) == n  # the rerun commits it
    assert commit.is_finished(root, ORDER, pixel, fs)
