"""iic_survey.core.parquet_footer: the Thrift compact encoding, checked against pyarrow's own."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from iic_survey.core import parquet_footer as pf


@pytest.mark.parametrize("n", [0, 1, 127, 128, 300, 2**31, 2**63 - 1])
def test_varint_round_trip(n: int) -> None:
    encoded = pf.encode_varint(n)
    assert pf.varint(encoded + b"\xff", 0) == (n, len(encoded))


@pytest.mark.parametrize("n", [0, -1, 1, -64, 64, -(2**63), 2**63 - 1])
def test_zigzag_round_trip(n: int) -> None:
    value, _ = pf.varint(pf.encode_zigzag(n), 0)
    assert pf.zigzag(value) == n
    assert pf.encode_zigzag(-1) == b"\x01" and pf.encode_zigzag(1) == b"\x02"


@pytest.mark.parametrize("size", [0, 3, 14, 15, 1000])
def test_list_header_round_trip(size: int) -> None:
    head = pf.list_header(size, pf.STRUCT)
    assert pf.read_list_header(head, 0) == (size, pf.STRUCT, len(head))


def _footer_file(rows: int, row_group_size: int) -> tuple[bytes, pq.FileMetaData]:
    table = pa.table({"a": list(range(rows)), "s": [f"x{i}" for i in range(rows)]})
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=row_group_size)
    meta = pq.read_metadata(io.BytesIO(buf.getvalue()))
    out = io.BytesIO()
    meta.write_metadata_file(out)
    return out.getvalue(), meta


def test_top_level_fields_of_a_real_footer() -> None:
    """Fields 1-4 (version, schema, num_rows, row_groups) where the encoding puts them: the
    num_rows value decodes to pyarrow's count and the row-group list to its number."""
    data, meta = _footer_file(rows=25, row_group_size=10)
    struct = pf.footer_struct(data)
    fields = pf.top_level_fields(struct)
    assert {1, 2, 3, 4} <= set(fields)
    starts = [fields[k][0] for k in sorted(fields)]
    assert starts == sorted(starts) and fields[max(fields)][2] == len(struct) - 1  # then stop
    _, value, end = fields[3]
    rows, after = pf.varint(struct, value)
    assert pf.zigzag(rows) == meta.num_rows == 25 and after == end
    size, elem, _ = pf.read_list_header(struct, fields[4][1])
    assert (size, elem) == (meta.num_row_groups, pf.STRUCT) == (3, pf.STRUCT)
    assert pf.skip(struct, 0, pf.STRUCT) == len(struct)  # the whole struct, stop byte included


def test_footer_struct_refuses_a_file_without_magic() -> None:
    data, _ = _footer_file(rows=3, row_group_size=10)
    with pytest.raises(ValueError, match="PAR1"):
        pf.footer_struct(data[:-1] + b"X")
    with pytest.raises(ValueError, match="Thrift compact type"):
        pf.skip(b"\x00", 0, 13)
