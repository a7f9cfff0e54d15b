"""Parquet footers in the Thrift compact protocol: reading and writing their top-level fields.

A Parquet footer is a Thrift ``FileMetaData`` in the compact protocol (parquet-format's
``parquet.thrift``): fields 1 ``version``, 2 ``schema``, 3 ``num_rows``, 4 ``row_groups``, then
key-value metadata, writer and column orders. These helpers walk that encoding without parsing
it whole, so a ``_metadata`` of thousands of files can be read in windows
(:mod:`iic_survey.inputs.footer_bytes`) or written one file's row groups at a time
(:mod:`iic_survey.output.metadata_stream`, :mod:`iic_survey.synthetic.metadata_file`).
"""

from __future__ import annotations

MAGIC = b"PAR1"

# Thrift compact protocol element types (the low nibble of a field or list header).
_TRUE, _FALSE, _I8, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT = range(1, 13)
STRUCT = _STRUCT


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
