"""Atomic writes: a file is the old one or the new one, never half; a full disk is one line."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from mbt.files import DiskFullError, atomic_path, write_atomic


def test_write_atomic_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    write_atomic(tmp_path / "log.csv", "a\n")
    write_atomic(tmp_path / "log.csv", b"b\n")
    assert (tmp_path / "log.csv").read_text() == "b\n"
    assert [p.name for p in tmp_path.iterdir()] == ["log.csv"]


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    write_atomic(tmp_path / "f", "old")
    with pytest.raises(KeyError), atomic_path(tmp_path / "f") as tmp:
        tmp.write_text("half")
        raise KeyError("a bug in the writer")
    assert (tmp_path / "f").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError("[enforce fail at inline_container.cc] No space left on device"),
    ],
)
def test_disk_full_is_one_line_and_cleans_up(tmp_path: Path, error: Exception) -> None:
    write_atomic(tmp_path / "w", "old")
    with pytest.raises(DiskFullError) as info, atomic_path(tmp_path / "w", "kept") as tmp:
        tmp.write_text("partial")
        raise error
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("no space left on ") and f"while writing {tmp_path / 'w'}" in message
    assert message.endswith("; kept")
    assert (tmp_path / "w").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["w"]


def test_other_errors_are_not_disk_full(tmp_path: Path) -> None:
    with pytest.raises(PermissionError), atomic_path(tmp_path / "x"):
        raise PermissionError(errno.EACCES, "denied")
