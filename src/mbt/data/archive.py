"""Data set archives: ``--data pjzufc101.zip`` is unpacked once, safely, atomically, resumably.

:func:`open_data_path` is what the commands call: a folder comes back unchanged, a ``.zip`` is
unpacked by :func:`unpack_archive` and its folder comes back::

    pjzufc101.zip  ->  pjzufc101/        (beside the archive; ``into``: inside that folder)

- **Safe.** Every member name is checked before anything is written: absolute paths, drive
  letters, ``..`` parts, symbolic links and special files are refused (a data set archive has
  no use for them, and each can write outside the target). ``__MACOSX/`` and ``.DS_Store``
  entries are skipped. The uncompressed size is checked against the free space first.
- **Atomic.** Members are written into a hidden ``.<name>.unpacking/`` folder beside the
  target, each file under a temporary name renamed once it is whole (``zipfile`` has checked
  its CRC-32); only when every member is there is the folder renamed to the target. A target
  folder therefore always holds a whole archive, never part of one.
- **Resumable.** An interrupted unpack leaves its ``.unpacking`` folder; the next call keeps
  each file that is already whole (its size and CRC-32 match the archive) and writes the rest.
  A work folder left by another archive of the same name is started afresh.
- **Once.** The target holds ``.mbt-archive.json`` (the archive's name, size and modification
  time, the member count): a later call finds it and unpacks nothing. A target folder without
  it (made by hand) or from another version of the archive is an error, never overwritten.
- **One process at a time.** A lock file beside the target makes concurrent callers (the
  processes of a ``torchrun`` job, two runs started together) wait for the first to finish.

Where the archive holds one extra folder level (``pjzufc101/video/...``), the data set
scanner looks one level down (:func:`mbt.data.layouts.scan`), so nothing needs moving.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import tempfile
import time
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mbt.files import fsync_dir, tmp_name, translate_disk_full, write_atomic
from mbt.progress import progress_bar

try:  # POSIX file locks; without them (Windows) concurrent unpacks are not coordinated
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

ARCHIVE_SUFFIXES = (".zip",)
MARKER = ".mbt-archive.json"  # in an unpacked folder: which archive it holds
SKIPPED = ("__MACOSX/", ".DS_Store")  # macOS resource forks and Finder files
_CHUNK = 1 << 20  # 1 MiB copy / checksum buffer
_DRIVE = re.compile(r"^[A-Za-z]:")  # "C:..." (a Windows absolute path)


@dataclass(frozen=True)
class Unpacked:
    """What :func:`unpack_archive` did."""

    archive: Path
    folder: Path
    files: int  # regular files in the archive (skipped entries not counted)
    bytes: int  # their uncompressed size
    written: int  # files written by this call (0: already unpacked; < files: resumed)
    seconds: float

    def describe(self) -> str:
        """One line for the run's log."""
        size = f"{self.files} files, {self.bytes / 1e9:.2f} GB"
        if self.written == 0:
            return f"archive: {self.archive} already unpacked in {self.folder} ({size})"
        resumed = f", resumed: {self.files - self.written} were already there" * (
            self.written < self.files
        )
        return (
            f"archive: unpacked {self.archive} into {self.folder} ({size}{resumed}) "
            f"in {self.seconds:.1f} s"
        )


def is_archive(path: str | Path) -> bool:
    """Whether ``path`` is an archive file this module unpacks (by its suffix)."""
    p = Path(path)
    return p.suffix.lower() in ARCHIVE_SUFFIXES and p.is_file()


def open_data_path(
    path: str | Path, into: str | Path | None = None, *, announce: bool = True
) -> Path:
    """The data set folder of ``path``: itself, or the folder a ``.zip`` is unpacked into.

    Args:
        path: a data set folder, manifest or archive.
        into: the folder to unpack into (default: beside the archive).
        announce: print what was unpacked (one line).

    Raises:
        ValueError: an unsafe or unreadable archive, too little disk space, or a target folder
            that this module did not write.
    """
    if not is_archive(path):
        return Path(path)
    result = unpack_archive(path, into)
    if announce:
        print(result.describe())
    return result.folder


# ---------------------------------------------------------------------------------------------
# The unpack, in steps


def unpack_archive(archive: str | Path, into: str | Path | None = None) -> Unpacked:
    """Unpack ``archive`` into ``<into or its folder>/<its stem>/`` (see the module docstring).

    Returns:
        An :class:`Unpacked` (``written == 0`` when it was unpacked before).

    Raises:
        ValueError: a member that would escape the target, a corrupt archive, too little disk
            space, or a target that holds something else.
    """
    archive = Path(archive)
    start = time.perf_counter()
    target = Path(into or archive.parent) / archive.stem
    identity = _identity(archive)
    members = _safe_members(archive)
    total = sum(m.file_size for m in members if not m.is_dir())
    done = _finished(target, identity, archive)
    if done is None:
        _make_parent(target.parent, archive)
        with _lock(target):
            done = _finished(target, identity, archive)  # another process may have finished
            if done is None:
                work = _work_folder(target, identity)
                done = _extract(archive, members, work, total)
                _complete(work, target, identity, len(members))
    files = sum(1 for m in members if not m.is_dir())
    return Unpacked(archive, target, files, total, done, time.perf_counter() - start)


def _identity(archive: Path) -> dict[str, object]:
    """What tells one version of an archive from another (cheap: no checksum of gigabytes)."""
    st = archive.stat()
    return {"archive": archive.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _safe_members(archive: Path) -> list[zipfile.ZipInfo]:
    """The members to write (the last of any repeated name), every name checked first.

    Raises:
        ValueError: the file is not a zip archive, or a member is unsafe (naming it).
    """
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"{archive}: not a readable zip archive ({e})") from None
    keep: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        rel = member_path(info, archive)
        if rel is not None:
            keep[rel] = info
    if not keep:
        raise ValueError(f"{archive}: the archive holds no files")
    return list(keep.values())


def member_path(info: zipfile.ZipInfo, archive: Path) -> str | None:
    """The relative path a member is written to; None for entries that are skipped.

    Raises:
        ValueError: an absolute path, a drive letter, a ``..`` part, a symbolic link or
            another special file.
    """
    name = info.filename.replace("\\", "/")  # Windows tools write backslashes
    if name.startswith(SKIPPED[0]) or f"/{SKIPPED[0]}" in name or name.endswith(SKIPPED[1]):
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    unsafe = (
        "an absolute path" if name.startswith("/") or _DRIVE.match(name)
        else "a '..' part" if ".." in parts
        else None
    )  # fmt: skip
    mode = info.external_attr >> 16  # Unix st_mode, when the archiver stored one
    kind = stat.S_IFMT(mode)
    if unsafe is None and kind == stat.S_IFLNK:
        unsafe = "a symbolic link"
    elif unsafe is None and kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        unsafe = "a special file"
    if unsafe:
        raise ValueError(
            f"{archive}: member {info.filename!r} is {unsafe}; refusing to unpack this archive"
        )
    return "/".join(parts) if parts else None


def _finished(target: Path, identity: dict[str, object], archive: Path) -> int | None:
    """0 when ``target`` already holds this archive, None when it does not exist yet.

    Raises:
        ValueError: ``target`` holds something else.
    """
    if not target.exists():
        return None
    marker = target / MARKER
    if not marker.is_file():
        raise ValueError(
            f"{target} already exists and was not unpacked by mbt from {archive.name}: pass "
            f"--data {target} to use that folder, or move it away to unpack the archive"
        )
    try:
        saved = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        saved = {}
    if {k: saved.get(k) for k in identity} != identity:
        raise ValueError(
            f"{target} holds another version of {archive.name} (size or date differ): "
            "remove that folder to unpack this archive again"
        )
    return 0


def _make_parent(folder: Path, archive: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # A unique probe file: callers in other threads of this process probe at the same time.
        fd, probe = tempfile.mkstemp(prefix=".mbt-write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(
            f"{archive}: cannot unpack into {folder} ({e.strerror or e}); copy the archive to "
            "a writable folder, or unzip it yourself and pass the folder as --data"
        ) from None


@contextlib.contextmanager
def _lock(target: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``.<name>.unpack.lock`` beside ``target`` (POSIX only)."""
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    path = target.with_name(f".{target.name}.unpack.lock")
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            # Removed while still held: a waiter then holds a lock on a removed file, re-checks
            # and finds the target finished; a newcomer makes a fresh lock file.
            if target.exists():
                path.unlink(missing_ok=True)
            fcntl.flock(f, fcntl.LOCK_UN)


def _work_folder(target: Path, identity: dict[str, object]) -> Path:
    """``.<name>.unpacking/`` beside the target: kept when it is this archive's (resume),
    emptied when it was another archive's."""
    work = target.with_name(f".{target.name}.unpacking")
    marker = work / MARKER
    if work.exists():
        try:
            saved = json.loads(marker.read_text())
        except (OSError, json.JSONDecodeError):
            saved = {}
        if {k: saved.get(k) for k in identity} != identity:
            shutil.rmtree(work)
    work.mkdir(exist_ok=True)
    if not marker.is_file():
        write_atomic(marker, json.dumps({**identity, "complete": False}))
    return work


def _extract(archive: Path, members: list[zipfile.ZipInfo], work: Path, total: int) -> int:
    """Write every member not already whole in ``work``; returns how many were written.

    Raises:
        ValueError: a corrupt member (CRC mismatch, truncated archive) or too little space.
    """
    todo = [m for m in members if m.is_dir() or not _whole(work / member_path(m, archive), m)]
    need = sum(m.file_size for m in todo if not m.is_dir())
    _check_space(work, need, archive)
    written = 0
    bar = progress_bar(total=total, initial=total - need, unit="B", unit_scale=True,
                       desc=f"unpack {archive.name}", leave=False)  # fmt: skip
    with zipfile.ZipFile(archive) as zf:
        for info in todo:
            path = work / member_path(info, archive)
            if info.is_dir():
                path.mkdir(parents=True, exist_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_member(zf, info, path, archive, bar)
            written += 1
    bar.close()
    return written


def _whole(path: Path, info: zipfile.ZipInfo) -> bool:
    """Whether ``path`` already holds this member (size, then CRC-32 as in the archive)."""
    if not path.is_file() or path.stat().st_size != info.file_size:
        return False
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc == info.CRC


def _write_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, archive, bar) -> None:
    """One file under a temporary name, renamed when whole (zipfile checks the CRC at EOF)."""
    tmp = tmp_name(path)
    try:
        with translate_disk_full(path, "run again to resume the unpack"):
            with zf.open(info) as src, open(tmp, "wb") as dst:
                while chunk := src.read(_CHUNK):
                    dst.write(chunk)
                    bar.update(len(chunk))
            os.replace(tmp, path)
    except (zipfile.BadZipFile, EOFError, zlib.error) as e:
        raise ValueError(f"{archive}: member {info.filename!r} is corrupt ({e})") from None
    finally:
        tmp.unlink(missing_ok=True)


def _check_space(folder: Path, need: int, archive: Path) -> None:
    free = shutil.disk_usage(folder).free
    if need > free:
        raise ValueError(
            f"{archive}: unpacking needs {need / 1e9:.2f} GB, only {free / 1e9:.2f} GB free "
            f"on the disk of {folder.parent}"
        )


def _complete(work: Path, target: Path, identity: dict[str, object], members: int) -> None:
    """Make the files durable, mark the work folder complete, rename it to the target."""
    if hasattr(os, "sync"):  # one flush of everything written, not one fsync per member
        os.sync()
    write_atomic(work / MARKER, json.dumps({**identity, "members": members, "complete": True}))
    os.replace(work, target)
    fsync_dir(target.parent)
