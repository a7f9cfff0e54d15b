"""A pixel's ``_done`` marker comes after its data (iic_survey.output.commit), crash or no crash.

A resumed run skips every pixel that has a marker, so a marker written before the pixel's
partition file turns a crash between the two into lost rows. The commit runs here on a memory
file system that records every file written, in order, and can fail the partition write.
"""

from __future__ import annotations

import uuid

import fsspec
import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from upath import UPath

from iic_survey.core import healpix
from iic_survey.output import commit, schema, staging
from iic_survey.testing.catalog import fake_results

ORDER = 3


class RecordingFS(MemoryFileSystem):
    """Memory file system that logs each file written and can fail writes under ``crash_on``.

    Registered as ``recording://`` so that a UPath reads and writes through it (paths are
    memory paths: ``recording:///a`` is ``/a``)."""

    protocol = ("recording",)

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        if path.startswith("recording://"):
            path = "memory://" + path[len("recording://") :]
        return super()._strip_protocol(path)

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


fsspec.register_implementation("recording", RecordingFS, clobber=True)
# UPath serves the protocol with its generic implementation, and says so once per path
pytestmark = pytest.mark.filterwarnings("ignore:UPath 'recording' filesystem")


@pytest.fixture
def staged() -> tuple[RecordingFS, UPath, int, int]:
    """A planned pixel with all its rows staged on a fresh RecordingFS: (fs, root, pixel, n)."""
    df, _ = fake_results(600, seed=11)
    pixels = healpix.pixel_of(df["ra"].to_numpy(), df["dec"].to_numpy(), ORDER)
    values, counts = np.unique(pixels, return_counts=True)
    pixel, n = int(values[counts.argmax()]), int(counts.max())
    # a fresh RecordingFS (no instance cache), shared by every path joined from ``root``
    root = UPath(f"recording:///iic-commit-order-{uuid.uuid4().hex}/catalog",
                 skip_instance_cache=True)  # fmt: skip
    fs = root.fs
    assert isinstance(fs, RecordingFS)
    staging.prepare_output(root, {"healpix_order": ORDER, "model": "test"})
    staging.write_plan(root, ORDER, {pixel: n})
    rows = df[pixels == pixel]
    staging.write_part(root, ORDER, pixel, "c0", rows.iloc[: n // 2])
    staging.write_part(root, ORDER, pixel, "c1", rows.iloc[n // 2 :])
    yield fs, root, pixel, n
    fs.rm(root.parent.path, recursive=True)


def test_the_marker_is_the_last_file_a_commit_writes(staged) -> None:
    fs, root, pixel, n = staged
    fs.writes.clear()
    assert commit.commit_pixel(root, ORDER, pixel, n) == n
    marker = schema.marker_path(root, ORDER, pixel).path
    data = [w for w in fs.writes if w.startswith(f"{root.path}/{schema.MAIN}/dataset/")]
    assert data, f"no partition file written: {fs.writes}"
    assert fs.writes.count(marker) == 1, f"the marker was written {fs.writes.count(marker)} times"
    assert fs.writes[-1] == marker, (
        f"written after the marker: {fs.writes[fs.writes.index(marker) + 1 :]}"
    )


def test_a_commit_that_fails_writing_data_leaves_no_marker_and_reruns(staged) -> None:
    fs, root, pixel, n = staged
    fs.crash_on = f"{root.path}/{schema.MAIN}/dataset/"  # the partition file's write fails
    with pytest.raises(OSError, match="injected"):
        commit.commit_pixel(root, ORDER, pixel, n)
    assert not commit.is_finished(root, ORDER, pixel), "a marker without its data"
    assert staging.staged_rows(root, ORDER, pixel) == n  # the staged rows are kept
    fs.crash_on = None
    assert commit.commit_pixel(root, ORDER, pixel, n) == n  # the rerun commits it
    assert commit.is_finished(root, ORDER, pixel)
