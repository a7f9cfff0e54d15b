"""Parquet footers as bytes: what the planner needs from a ``_metadata`` without parsing it whole.

A ``_metadata`` file is one Parquet footer holding every row group of every partition file:
for IRSA's AllWISE (12,288 files x 300 columns) about 0.6 GB, which pyarrow parses into about
3.9 GB of memory (measured 2026-12-02 on a synthetic ``_metadata`` of that shape: 5 s, 3.9 GB
peak RSS). The planner needs two facts per file, its path and its row count, so it reads the
bytes in fixed-size windows and picks those facts out of the Thrift compact encoding
(:func:`scan_metadata`); memory stays at one window whatever the catalog's size.

The footer is a Thrift ``FileMetaData`` in the compact protocol (parquet-format's
``parquet.thrift``). Every ``ColumnChunk`` of a ``_metadata`` names its file (field 1,
``file_path``), followed by ``file_offset`` (field 2) and its ``ColumnMetaData`` (field 3), whose
fields 1-5 are ``type``, ``encodings``, ``path_in_schema``, ``codec`` and ``num_values``. For a
flat column ``num_values`` is the row group's row count (nulls included), so the chunk of the
schema's first column gives each row group's rows. Writers emit fields in id order (parquet-cpp
and parquet-mr both do: the Thrift generated code writes them so); a file the pattern does not
match is reported as seen without a count, and the planner then reads that file's own footer.
The result is checked against pyarrow's full parse in the tests.

:func:`scan_metadata` is this module's own; the Thrift helpers it re-exports (``varint``,
``top_level_fields``, ...) live in :mod:`iic_survey.core.parquet_footer`, where the output layer
can use them too (to write a ``_metadata`` one footer at a time).
"""

from __future__ import annotations

import re
from typing import Protocol

from iic_survey.core.parquet_footer import (  # re-exported: the helpers moved to core
    MAGIC,
    STRUCT,
    encode_varint,
    encode_zigzag,
    footer_struct,
    list_header,
    read_list_header,
    skip,
    top_level_fields,
    varint,
    zigzag,
)

__all__ = [
    "MAGIC",
    "STRUCT",
    "encode_varint",
    "encode_zigzag",
    "footer_struct",
    "list_header",
    "read_list_header",
    "scan_metadata",
    "skip",
    "top_level_fields",
    "varint",
    "zigzag",
]

_WINDOW = 1 << 24
"""Bytes read at a time (16 MiB)."""
_OVERLAP = 1 << 12
"""Bytes a window re-reads from the previous one, longer than any match (paths < 256 bytes)."""

_PATH = rb"(healpix_k0=\d{1,2}/healpix_k5=\d{1,5}/[^\x00-\x1f/]{1,200}?\.parquet)"
_VARINT = rb"[\x80-\xff]{0,9}[\x00-\x7f]"


# --------------------------------------------------------------------------------- scanning


def _chunk_pattern(first_column: str) -> re.Pattern[bytes]:
    """file_path, file_offset, then ColumnMetaData fields 1-5 of the first column's chunk."""
    name = first_column.encode()
    return re.compile(
        _PATH
        + rb"\x16" + _VARINT  # field 2 file_offset (i64)
        + rb"\x1c"  # field 3 meta_data (struct)
        + rb"\x15" + _VARINT  # field 1 type (i32)
        + rb"\x19[\x15-\xf5](?:[\x00-\x7f]){0,14}?"  # field 2 encodings (list<i32>, short)
        + rb"\x19\x18" + re.escape(encode_varint(len(name)) + name)  # path_in_schema [name]
        + rb"\x15" + _VARINT  # field 4 codec
        + rb"\x16(" + _VARINT + rb")",  # field 5 num_values (i64)
        re.DOTALL,
    )  # fmt: skip


class Readable(Protocol):
    """What :func:`scan_metadata` reads from: a binary file, or any object with ``read(n)``."""

    def read(self, n: int, /) -> bytes: ...


def scan_metadata(
    f: Readable, first_column: str, window: int = _WINDOW
) -> tuple[dict[str, int], set[str]]:
    """Row counts of the files a ``_metadata`` lists, read in windows of ``window`` bytes.

    Parameters
    ----------
    f
        The ``_metadata`` file, open for reading from its start.
    first_column
        The schema's first (flat) column, whose chunks carry each row group's count.

    Returns
    -------
    (counts, paths)
        ``counts``: relative file path -> rows, summed over its row groups, for every file
        whose chunks match; ``paths``: every file path the footer names (a path in ``paths``
        but not in ``counts`` needs its own footer read).
    """
    chunk_re = _chunk_pattern(first_column)
    path_re = re.compile(_PATH)
    counts: dict[str, int] = {}
    paths: set[str] = set()
    carry = b""
    offset = 0  # file offset of carry[0]
    seen_until = 0  # matches starting before this file offset were taken already
    while True:
        block = f.read(window)
        data = carry + block
        last = not block
        limit = len(data) if last else max(len(data) - _OVERLAP, 0)
        for m in chunk_re.finditer(data):
            at = offset + m.start()
            if at < seen_until or m.start() >= limit:
                continue
            rel = m.group(1).decode()
            counts[rel] = counts.get(rel, 0) + zigzag(varint(m.group(2), 0)[0])
        for m in path_re.finditer(data, 0, len(data)):
            if offset + m.start() >= seen_until and m.start() < limit:
                paths.add(m.group(1).decode())
        seen_until = offset + limit
        if last:
            return counts, paths
        carry = data[limit:]
        offset += limit
