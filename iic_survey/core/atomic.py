"""Writing a file so that readers see either nothing or all of it, on any fsspec file system."""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator
from typing import BinaryIO

from fsspec.implementations.local import LocalFileSystem
from upath import UPath


def write_atomic(path: UPath, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, creating the parent folder.

    Local: a dot-named temporary file in the same folder, flushed to disk, then ``os.replace``
    (a crash leaves either the old file or the new one, never half of one; the temporary file
    is removed on error). Object stores and memory: one put, which is atomic per object.
    """
    fs, target = path.fs, path.path
    parent, name = target.rsplit("/", 1) if "/" in target else (".", target)
    fs.makedirs(parent, exist_ok=True)
    if not isinstance(fs, LocalFileSystem):
        fs.pipe_file(target, data)
        return
    tmp = f"{parent}/.{name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_output(path: UPath) -> Iterator[BinaryIO]:
    """A binary file to write ``path`` through, in pieces, that appears whole when the block ends.

    For files too large to hold as one ``bytes`` (a catalog's ``_metadata``). Local: as
    :func:`write_atomic`, a dot-named temporary file beside ``path``, fsync'd then renamed.
    Elsewhere: a local temporary file, uploaded in one ``put_file`` (an object appears only
    once its upload completes). On error nothing is left at ``path``.
    """
    fs, target = path.fs, path.path
    parent, name = target.rsplit("/", 1) if "/" in target else (".", target)
    fs.makedirs(parent, exist_ok=True)
    local = isinstance(fs, LocalFileSystem)
    tmp_dir = parent if local else None
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.{uuid.uuid4().hex}.", suffix=".tmp", dir=tmp_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if local:
            os.replace(tmp, target)
        else:
            fs.put_file(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
