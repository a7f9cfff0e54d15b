"""Writing a catalog's ``_metadata`` one partition at a time, in flat memory.

pyarrow builds a ``_metadata`` from the footers of all files held at once
(``pq.write_metadata(..., metadata_collector=...)``): for 12,288 files of 300 columns that is
about 3.9 GB (measured, :mod:`iic_survey.inputs.footer_bytes`). :class:`MetadataWriter` instead
takes each file's footer as it is written, keeps only its row groups' bytes (spooled to a
temporary file) and composes the ``_metadata`` at the end: the first footer's version and
schema, the total row count, the row-group list, and the first footer's remaining fields
(key-value metadata, writer, column orders). Every file must have the same schema and writer
fields, as the files of one catalog do; a footer that differs is refused.
"""

from __future__ import annotations

import io
import os
import pathlib
import shutil
import tempfile

import pyarrow.parquet as pq

from iic_survey.inputs import footer_bytes as fb

_ROW_GROUPS_FIELD, _NUM_ROWS_FIELD, _SCHEMA_FIELD = 4, 3, 2
_LIST_FIELD_DELTA1, _I64_FIELD_DELTA1 = 0x19, 0x16


class MetadataWriter:
    """Collects the footers of a catalog's files and writes their ``_metadata``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = pathlib.Path(path)
        # Closed by close(); a writer dropped without it leaves nothing (an unnamed file).
        self._spool = tempfile.TemporaryFile(dir=self.path.parent)  # noqa: SIM115
        self._head: bytes | None = None  # fields 1-2: version, schema
        self._tail: bytes | None = None  # fields 5.. and the stop byte
        self.row_groups = 0
        self.rows = 0

    def add(self, metadata: pq.FileMetaData, rel: str) -> None:
        """Add the footer of the file at ``rel`` (relative to the catalog root)."""
        metadata.set_file_path(rel)
        buf = io.BytesIO()
        metadata.write_metadata_file(buf)
        struct = fb.footer_struct(buf.getvalue())
        if self._head is None or self._tail is None:
            self._head, self._tail = self._split(struct, rel)
        elif not (struct.startswith(self._head) and struct.endswith(self._tail)):
            raise ValueError(f"{rel}: its schema or writer fields differ from the first file's")
        # Between the shared head and tail: num_rows (field 3), then the row-group list.
        pos = len(self._head)
        if struct[pos] != _I64_FIELD_DELTA1:
            raise ValueError(f"{rel}: footer field 3 (num_rows) not where expected")
        _, pos = fb.varint(struct, pos + 1)
        if struct[pos] != _LIST_FIELD_DELTA1:
            raise ValueError(f"{rel}: footer field 4 (row_groups) not where expected")
        n, _elem, first = fb.read_list_header(struct, pos + 1)
        self._spool.write(struct[first : len(struct) - len(self._tail)])
        self.row_groups += n
        self.rows += metadata.num_rows

    @staticmethod
    def _split(struct: bytes, rel: str) -> tuple[bytes, bytes]:
        """The bytes before field 3 (version, schema) and after field 4 (the rest)."""
        fields = fb.top_level_fields(struct)
        if list(fields)[:4] != [1, 2, _NUM_ROWS_FIELD, _ROW_GROUPS_FIELD]:
            raise ValueError(f"{rel}: footer fields {list(fields)}, expected 1, 2, 3, 4 first")
        return struct[: fields[_SCHEMA_FIELD][2]], struct[fields[_ROW_GROUPS_FIELD][2] :]

    def close(self) -> None:
        """Write ``_metadata`` (atomically: a temporary name, then renamed)."""
        if self._head is None or self._tail is None:
            raise ValueError("no file footers were added")
        body = (
            self._head
            + bytes([_I64_FIELD_DELTA1])
            + fb.encode_zigzag(self.rows)
            + bytes([_LIST_FIELD_DELTA1])
            + fb.list_header(self.row_groups, fb.STRUCT)
        )
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        length = len(body) + self._spool.tell() + len(self._tail)
        with open(tmp, "wb") as out:
            out.write(fb.MAGIC + body)
            self._spool.seek(0)
            shutil.copyfileobj(self._spool, out, 1 << 22)
            out.write(self._tail + length.to_bytes(4, "little") + fb.MAGIC)
        self._spool.close()
        tmp.replace(self.path)
