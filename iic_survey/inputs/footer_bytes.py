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

:func:`top_level_fields` walks the top level of one footer (used to write a ``_metadata`` from
many footers without holding them: :mod:`iic_survey.synthetic.metadata_file`).
"""

from __future__ import annotations

import re
from typing import BinaryIO

MAGIC = b"PAR1"

# Thrift compact protocol element types (the low nibble of a field or list header).
_TRUE, _FALSE, _I8, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT = range(1, 13)
STRUCT = _STRUCT

_WINDOW = 1 << 24
"""Bytes read at a time (16 MiB)."""
_OVERLAP = 1 << 12
"""Bytes a window re-reads from the previous one, longer than any match (paths < 256 bytes)."""

_PATH = rb"(healpix_k0=\d{1,2}/healpix_k5=\d{1,5}/[^\x00-\x1f/]{1,200}?\.parquet)"
_VARINT = rb"[\x80-\xff]{0,9}[\x00-\x7f]"


def varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """The unsigned LEB128 varint at ``pos`` and the position after it."""
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def zigzag(n: int) -> int:
    """Decode a zigzag-encoded integer (Thrift compact i16/i32/i64)."""
    return (n >> 1) ^ -(n & 1)


def encode_varint(n: int) -> bytes:
    """Unsigned LEB128 varint of ``n`` >= 0."""
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_zigzag(n: int) -> bytes:
    """Zigzag varint of a signed 64-bit integer."""
    return encode_varint((n << 1) ^ (n >> 63))


def list_header(size: int, elem_type: int) -> bytes:
    """A compact-protocol list header of ``size`` elements of ``elem_type``."""
    if size < 15:
        return bytes([(size << 4) | elem_type])
    return bytes([0xF0 | elem_type]) + encode_varint(size)


def read_list_header(buf: bytes | memoryview, pos: int) -> tuple[int, int, int]:
    head = buf[pos]
    size, elem, pos = head >> 4, head & 0x0F, pos + 1
    if size == 15:
        size, pos = varint(buf, pos)
    return size, elem, pos


def skip(buf: bytes | memoryview, pos: int, ctype: int) -> int:
    """Position after the value of compact type ``ctype`` starting at ``pos``."""
    if ctype in (_TRUE, _FALSE):
        return pos  # a field's bool is in its header (list elements are handled below)
    if ctype == _I8:
        return pos + 1
    if ctype in (_I16, _I32, _I64):
        return varint(buf, pos)[1]
    if ctype == _DOUBLE:
        return pos + 8
    if ctype == _BINARY:
        n, pos = varint(buf, pos)
        return pos + n
    if ctype in (_LIST, _SET):
        size, elem, pos = read_list_header(buf, pos)
        for _ in range(size):
            pos = pos + 1 if elem in (_TRUE, _FALSE) else skip(buf, pos, elem)
        return pos
    if ctype == _MAP:
        size, pos = varint(buf, pos)
        if size:
            kinds, pos = buf[pos], pos + 1
            for _ in range(size):
                pos = skip(buf, skip(buf, pos, kinds >> 4), kinds & 0x0F)
        return pos
    if ctype == _STRUCT:
        fid = 0
        while (field := _field_header(buf, pos, fid)) is not None:
            fid, ftype, pos = field
            pos = skip(buf, pos, ftype)
        return pos + 1  # the stop byte
    raise ValueError(f"not a Thrift compact type: {ctype}")


def _field_header(buf: bytes | memoryview, pos: int, last_fid: int) -> tuple[int, int, int] | None:
    """(field id, type, value start) of the field header at ``pos``; None at the stop byte.

    ``last_fid`` is the previous field's id (the header may give only the difference).
    """
    head = buf[pos]
    if head == 0:
        return None
    delta, ftype, pos = head >> 4, head & 0x0F, pos + 1
    if delta:
        return last_fid + delta, ftype, pos
    raw, pos = varint(buf, pos)
    return zigzag(raw), ftype, pos


def top_level_fields(footer: bytes) -> dict[int, tuple[int, int, int]]:
    """Field id -> (header start, value start, value end) of a footer's ``FileMetaData``.

    ``footer`` is the Thrift struct alone (no ``PAR1`` magic, length or trailing magic).
    """
    out: dict[int, tuple[int, int, int]] = {}
    pos = fid = 0
    while (field := _field_header(footer, pos, fid)) is not None:
        start = pos
        fid, ftype, value = field
        pos = skip(footer, value, ftype)
        out[fid] = (start, value, pos)
    return out


def footer_struct(file_bytes: bytes) -> bytes:
    """The ``FileMetaData`` bytes of a complete footer-only file (``PAR1`` ... len ``PAR1``)."""
    if file_bytes[:4] != MAGIC or file_bytes[-4:] != MAGIC:
        raise ValueError("not a Parquet footer file (no PAR1 magic at both ends)")
    length = int.from_bytes(file_bytes[-8:-4], "little")
    return file_bytes[-8 - length : -8]


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


def scan_metadata(
    f: BinaryIO, first_column: str, window: int = _WINDOW
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
