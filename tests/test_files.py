"""Atomic writes: a file is the old one or the new one, never half; a full disk is one line."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mbt.files import (
    SUMS,
    DiskFullError,
    atomic_path,
    damaged_files,
    read_checksums,
    remove_temporaries,
    sha256,
    write_atomic,
    write_checksums,
)


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


def test_torch_save_into_a_file_object_on_a_full_disk_is_disk_full(tmp_path: Path) -> None:
    # torch.save says only "unexpected pos"; the ENOSPC is its context (measured on a tmpfs).
    with pytest.raises(DiskFullError), atomic_path(tmp_path / "state.pt") as tmp:
        tmp.write_bytes(b"PK")
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 5")  # noqa: B904
    assert list(tmp_path.iterdir()) == []


def test_checksums_find_a_changed_file(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"weights")
    (tmp_path / "b").write_bytes(b"state")
    write_checksums(tmp_path, ["a", "b"])
    assert read_checksums(tmp_path)["a"] == sha256(tmp_path / "a")
    assert damaged_files(tmp_path, ["a", "b", "not-listed"]) == []
    (tmp_path / "b").write_bytes(b"stat\xe5")
    assert damaged_files(tmp_path, ["a", "b"]) == ["b"]
    (tmp_path / SUMS).write_text("garbage\n")
    assert damaged_files(tmp_path, ["a"]) == [SUMS]
    (tmp_path / SUMS).unlink()
    assert damaged_files(tmp_path, ["a", "b"]) == []  # nothing to check against


def test_remove_temporaries_of_dead_writers_only(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    for name in (f".x.npy.{dead}.tmp", f".y.npy.{os.getpid()}.tmp", ".last.tmp", "keep.npy"):
        (tmp_path / name).write_text("")
    remove_temporaries(tmp_path, dead_only=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".last.tmp", f".y.npy.{os.getpid()}.tmp", "keep.npy"
    ]  # fmt: skip
    remove_temporaries(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.npy"]
