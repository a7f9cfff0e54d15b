"""iic_survey.core.atomic: a file appears whole or not at all, locally and on other file systems."""

from __future__ import annotations

import pathlib

import pytest
from upath import UPath

from iic_survey.core.atomic import atomic_output, write_atomic


def _where(tmp_path: pathlib.Path, protocol: str) -> UPath:
    """A folder on local disk or in memory (one per test)."""
    if protocol == "file":
        return UPath(tmp_path)
    return UPath(f"memory:///atomic_test/{tmp_path.name}")


def test_write_atomic_creates_the_folder_and_replaces_the_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "a" / "b" / "x.json"
    write_atomic(UPath(path), b"first")
    write_atomic(UPath(path), b"second")
    assert path.read_bytes() == b"second"
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.json"]  # no temporary left


def test_write_atomic_on_memory(tmp_path: pathlib.Path) -> None:
    root = _where(tmp_path, "memory")
    write_atomic(root / "dir/x.bin", b"\x00\x01")
    assert root.fs.cat_file((root / "dir/x.bin").path) == b"\x00\x01"
    root.fs.rm(root.path, recursive=True)


def test_a_failed_local_write_leaves_the_old_file_and_no_temporary(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(b"old")

    def crash(src: str, dst: str) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr("iic_survey.core.atomic.os.replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        write_atomic(UPath(path), b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


@pytest.mark.parametrize("protocol", ["file", "memory"])
def test_atomic_output_appears_only_when_the_block_ends(
    tmp_path: pathlib.Path, protocol: str
) -> None:
    root = _where(tmp_path, protocol)
    path = root / "out/_metadata"
    with atomic_output(path) as f:
        f.write(b"part one, ")
        assert not path.exists()
        f.write(b"part two")
    assert root.fs.cat_file(path.path) == b"part one, part two"
    if protocol == "file":
        assert [p.name for p in (tmp_path / "out").iterdir()] == ["_metadata"]
    else:
        root.fs.rm(root.path, recursive=True)


@pytest.mark.parametrize("protocol", ["file", "memory"])
def test_atomic_output_leaves_nothing_on_error(tmp_path: pathlib.Path, protocol: str) -> None:
    root = _where(tmp_path, protocol)
    path = root / "out/_metadata"
    with pytest.raises(RuntimeError), atomic_output(path) as f:
        f.write(b"half")
        raise RuntimeError("writer failed")
    assert not path.exists()
    if protocol == "file":
        assert list((tmp_path / "out").iterdir()) == []
