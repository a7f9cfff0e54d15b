"""Writing a file so that readers see either nothing or all of it, on any fsspec file system."""

from __future__ import annotations

import os
import uuid

import fsspec
from fsspec.implementations.local import LocalFileSystem


def write_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, creating the parent folder.

    Local: a dot-named temporary file in the same folder, flushed to disk, then ``os.replace``
    (a crash leaves either the old file or the new one, never half of one; the temporary file
    is removed on error). Object stores and memory: one put, which is atomic per object.
    """
    parent, name = path.rsplit("/", 1) if "/" in path else (".", path)
    fs.makedirs(parent, exist_ok=True)
    if not isinstance(fs, LocalFileSystem):
        fs.pipe_file(path, data)
        return
    tmp = f"{parent}/.{name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
