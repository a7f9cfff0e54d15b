"""iic_survey.core.atomic: a file appears whole or not at all, locally and on other file systems."""

from __future__ import annotations

import pathlib

import fsspec
import pytest

from iic_survey.core.atomic import atomic_output, write_atomic


def test_write_atomic_creates_the_folder_and_replaces_the_file(tmp_path: pathlib.Path) -> None:
    fs = fsspec.filesystem("file")
    path = tmp_path / "a" / "b" / "x.json"
    write_atomic(fs, str(path), b"first")
    write_atomic(fs, str(path), b"second")
    assert path.read_bytes() == b"second"
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.json"]  # no temporary left


def test_write_atomic_on_memory() -> None:
    fs = fsspec.filesystem("memory")
    write_atomic(fs, "/atomic_test/dir/x.bin", b"\x00\x01")
    assert fs.cat_file("/atomic_test/dir/x.bin") == b"\x00\x01"
    fs.rm("/atomic_test", recursive=True)


def test_a_failed_local_write_leaves_the_old_file_and_no_temporary(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs = fsspec.filesystem("file")
    path = tmp_path / "x.bin"
    path.write_bytes(b"old")

    def crash(src: str, dst: str) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr("iic_survey.core.atomic.os.replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        write_atomic(fs, str(path), b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


@pytest.mark.parametrize("protocol", ["file", "memory"])
def test_atomic_output_appears_only_when_the_block_ends(
    tmp_path: pathlib.Path, protocol: str
) -> None:
    fs = fsspec.filesystem(protocol)
    path = f"{tmp_path}/out/_metadata"
    with atomic_output(fs, path) as f:
        f.write(b"part one, ")
        assert not fs.exists(path)
        f.write(b"part two")
    assert fs.cat_file(path) == b"part one, part two"
    if protocol == "file":
        assert [p.name for p in (tmp_path / "out").iterdir()] == ["_metadata"]
    else:
        fs.rm(str(tmp_path), recursive=True)


@pytest.mark.parametrize("protocol", ["file", "memory"])
def test_atomic_output_leaves_nothing_on_error(tmp_path: pathlib.Path, protocol: str) -> None:
    fs = fsspec.filesystem(protocol)
    path = f"{tmp_path}/out/_metadata"
    with pytest.raises(RuntimeError), atomic_output(fs, path) as f:
        f.write(b"half")
        raise RuntimeError("writer failed")
    assert not fs.exists(path)
    if protocol == "file":
        assert list((tmp_path / "out").iterdir()) == []
