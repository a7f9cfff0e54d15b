"""Storage access: fsspec filesystems for catalog URLs, Arrow's view of them, and access errors.

:func:`make_filesystem` makes the fsspec filesystem that the catalog is read through (and that
the pipeline writes its output through) for a local path, ``memory://`` or ``s3://`` URL alike,
so tests pass local files, memory or a local S3 server without special cases. ``s3://`` defaults
to IRSA's region and to anonymous requests unless the standard AWS environment names
credentials. :func:`arrow_filesystem` hands such a filesystem to pyarrow without read-ahead
caching, and :func:`access_errors` turns a refused request into one clear
:class:`CatalogAccessError`.

The catalog's error base class lives here too, below :mod:`iic_survey.inputs.catalog`, because an
access error is one of the catalog's errors and this module imports nothing of ours.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import fsspec
import pyarrow as pa
import pyarrow.fs as pafs

logger = logging.getLogger(__name__)

IRSA_REGION = "us-west-2"
"""Region of IRSA's bucket; used for ``s3://`` unless ``AWS_REGION`` says otherwise."""


class CatalogError(Exception):
    """Base class of the catalog's own errors."""


class CatalogAccessError(CatalogError, PermissionError):
    """The storage refused access (S3 403 / AccessDenied, or a local permission error)."""


def _aws_credentials_in_env() -> bool:
    keys = ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE")
    return any(os.environ.get(k) for k in keys)


StorageOptions = dict[str, object]
"""fsspec storage options (``anon``, ``endpoint_url``, ``client_kwargs``, ...), as fsspec and
``UPath`` take them as keyword arguments."""


def options_for(
    url: str,
    *,
    anon: bool | None = None,
    endpoint_url: str | None = None,
    storage_options: StorageOptions | None = None,
) -> StorageOptions:
    """The fsspec storage options for ``url`` (give them to ``UPath`` or ``url_to_fs``).

    Parameters
    ----------
    url
        A local path, ``file://``, ``memory://``, ``s3://`` or any fsspec URL.
    anon
        For ``s3://`` only: unsigned requests. ``None`` (the default) means anonymous unless the
        standard AWS environment names credentials (``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE`` or
        ``AWS_WEB_IDENTITY_TOKEN_FILE``), in which case botocore finds and uses them.
    endpoint_url
        For ``s3://`` only: another S3 endpoint (a moto server in the tests, MinIO, ...).
    storage_options
        Further fsspec options, passed as they are (they win over the two above).
    """
    protocol = fsspec.core.split_protocol(url)[0] or "file"
    opts: StorageOptions = {}
    if protocol in ("s3", "s3a"):
        opts["anon"] = (not _aws_credentials_in_env()) if anon is None else bool(anon)
        if endpoint_url:
            opts["endpoint_url"] = endpoint_url
        if not (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")):
            opts["client_kwargs"] = {"region_name": IRSA_REGION}
        logger.debug("s3 filesystem for %s: anon=%s endpoint=%s", url, opts["anon"], endpoint_url)
    elif anon is not None or endpoint_url is not None:
        raise ValueError(f"anon= and endpoint_url= apply to s3:// URLs only, not {url!r}")
    opts.update(storage_options or {})
    return opts


def make_filesystem(
    url: str,
    *,
    anon: bool | None = None,
    endpoint_url: str | None = None,
    storage_options: StorageOptions | None = None,
) -> tuple[fsspec.AbstractFileSystem, str]:
    """An fsspec filesystem for ``url`` and the path of ``url`` on it (see :func:`options_for`)."""
    opts = options_for(url, anon=anon, endpoint_url=endpoint_url, storage_options=storage_options)
    fs, path = fsspec.core.url_to_fs(url, **opts)
    return fs, path


class NoCacheHandler(pafs.FSSpecHandler):
    """pyarrow's fsspec bridge, opening files without read-ahead caching.

    s3fs's default read-ahead fetches a whole block (50 MB) after every read; Parquet reads
    exact byte ranges (pre-buffered and coalesced by pyarrow), so caching only adds traffic.
    The existence check that FSSpecHandler makes before opening is skipped: ``open`` raises
    FileNotFoundError itself, and on S3 it would cost one more request per file.
    """

    def open_input_file(self, path: str) -> pa.PythonFile:
        try:
            f = self.fs.open(path, mode="rb", cache_type="none")
        except TypeError:  # a filesystem whose open() takes no caching options
            f = self.fs.open(path, mode="rb")
        return pa.PythonFile(f, mode="r")


def arrow_filesystem(fs: fsspec.AbstractFileSystem) -> pafs.FileSystem:
    """A pyarrow filesystem over ``fs`` that opens files without read-ahead caching."""
    return pafs.PyFileSystem(NoCacheHandler(fs))


@contextlib.contextmanager
def access_errors(what: str) -> Iterator[None]:
    """Turn storage-level permission failures into one clear :class:`CatalogAccessError`.

    The botocore chain is dropped (``from None``): its text is kept in one line, the stack is
    noise for a user whose bucket or credentials are wrong.
    """
    try:
        yield
    except CatalogError:
        raise
    except PermissionError as exc:
        hint = (
            " The IRSA bucket is public: use anonymous access (anon=True, the default when no "
            "AWS credentials are in the environment); for a private copy, check the credentials "
            "and the bucket policy."
            if what.startswith(("s3://", "s3a://"))
            else ""
        )
        raise CatalogAccessError(f"access denied reading {what} ({exc}).{hint}") from None
