"""Files that are either whole or absent: atomic writes, and a full disk as a one-line error.

Every file a run or a cache writes (weights, state, logs, plots, indexes, clip files) is
written to a hidden temporary name beside its target, flushed to disk, and renamed over the
target: a reader, or a run resumed after ``kill -9``, sees the old file or the new one, never a
half-written one. A write that fails removes its temporary file; ``ENOSPC`` (disk full) and
``EDQUOT`` (quota) become :class:`DiskFullError`, one line naming the device and the file::

    write_atomic(run / "training_log.csv", text)
    with atomic_path(run / "plot.png") as tmp:  # for writers that need a file name
        fig.savefig(tmp, format="png")

A folder of files that belong together (a checkpoint) carries ``SHA256SUMS``, in the format
``sha256sum`` writes and checks (``cd folder && sha256sum -c SHA256SUMS``): a file damaged after
it was written (bit rot, a truncated copy, flipped bytes) is found before it is used.

A process killed in the middle of a write leaves its temporary file behind (nothing runs after
``kill -9``); :func:`remove_temporaries` is how the next run of the same job cleans up.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from mbt.errors import MbtError

_FULL = (errno.ENOSPC, errno.EDQUOT)
SUMS = "SHA256SUMS"  # a folder's checksums, in sha256sum's format
_CHUNK = 1 << 20  # bytes hashed at a time: a checkpoint is never read into memory at once
_TMP = re.compile(r"^\..+?(?:\.(?P<pid>\d+))?\.tmp$")  # what tmp_name (or a folder writer) makes


class DiskFullError(MbtError, OSError):
    """No space (or quota) left while writing a file; what was there before is intact.

    Args:
        path: the file being written (its final name, not the temporary one).
        what: the end of the message: what the user still has.
        message: the whole one-line message, when it was made elsewhere (a worker process
            reports its error as text).
    """

    def __init__(
        self, path: str | Path, what: str = "the previous file is intact", message: str = ""
    ) -> None:
        path = Path(path)
        message = message or f"no space left on {_device(path)} while writing {path}; {what}"
        super().__init__(errno.ENOSPC, message)
        self.path = path
        self.what = what

    def __str__(self) -> str:
        return self.strerror


def _device(path: Path) -> str:
    """The mount point that holds ``path`` (what ``df`` would name), for the message."""
    p = path.resolve().parent
    while not p.exists():
        p = p.parent
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return str(p)


def tmp_name(path: Path) -> Path:
    """A hidden temporary name beside ``path``, unique per process."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def translate_disk_full(
    path: str | Path, what: str = "the previous file is intact"
) -> Iterator[None]:
    """Turn ``ENOSPC`` / ``EDQUOT`` (and libraries' wrappings of it) into :class:`DiskFullError`."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as e:
        if _is_disk_full(e):
            raise DiskFullError(path, what) from None
        raise


def _is_disk_full(error: BaseException | None) -> bool:
    """``ENOSPC`` / ``EDQUOT``, raised as such or wrapped by a library: ``torch.save`` into a
    file object raises ``RuntimeError("... unexpected pos ...")`` whose context is the OSError;
    safetensors raises ``SafetensorError("... No space left on device (os error 28)")``."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _FULL:
            return True
        if any(text in str(error) for text in ("No space left on device", "Disk quota exceeded")):
            return True
        error = error.__cause__ or error.__context__
    return False


@contextlib.contextmanager
def atomic_path(path: str | Path, what: str = "the previous file is intact") -> Iterator[Path]:
    """Yield a temporary path to write; on success it is fsynced and renamed to ``path``.

    On any failure the temporary file is removed and ``path`` is left as it was; a full disk
    raises :class:`DiskFullError` (``what`` completes its message).
    """
    path = Path(path)
    tmp = tmp_name(path)
    try:
        with translate_disk_full(path, what):
            yield tmp
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def write_atomic(
    path: str | Path, data: bytes | str, what: str = "the previous file is intact"
) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically; see :func:`atomic_path`."""
    payload = data.encode() if isinstance(data, str) else data
    with atomic_path(path, what) as tmp:
        tmp.write_bytes(payload)
    return Path(path)


# ---------------------------------------------------------------------------------------------
# Checksums


def sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def write_checksums(folder: str | Path, names: Iterable[str]) -> Path:
    """Write ``folder/SHA256SUMS`` for the files ``names`` of ``folder`` (atomically)."""
    folder = Path(folder)
    lines = "".join(f"{sha256(folder / n)}  {n}\n" for n in names)
    return write_atomic(folder / SUMS, lines)


def read_checksums(folder: str | Path) -> dict[str, str] | None:
    """``{name: hex}`` from ``folder/SHA256SUMS``; None when the folder has none.

    Raises:
        ValueError: the file is there but not in ``sha256sum`` format (it is damaged).
    """
    path = Path(folder) / SUMS
    if not path.is_file():
        return None
    sums = {}
    try:
        for line in path.read_text().splitlines():
            digest, name = line.split("  ", 1)
            if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
                raise ValueError(digest)
            sums[name] = digest
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"{path}: damaged checksum file") from None
    return sums


def damaged_files(folder: str | Path, names: Iterable[str]) -> list[str]:
    """Those of ``names`` whose content differs from ``folder/SHA256SUMS``.

    A name the checksum file does not list, or a folder without one (written before checksums,
    or not by a run), cannot be checked and counts as intact; so does a file that is not there
    (whether it must be is the caller's question). A damaged checksum file is reported as
    ``SHA256SUMS``: nothing in the folder can be vouched for.
    """
    folder = Path(folder)
    try:
        sums = read_checksums(folder)
    except ValueError:
        return [SUMS]
    if sums is None:
        return []
    bad = []
    for name in names:
        if name not in sums:
            continue
        path = folder / name
        if path.is_file() and sha256(path) != sums[name]:
            bad.append(name)
    return bad


# ---------------------------------------------------------------------------------------------
# Leftovers of a killed writer


def remove_temporaries(folder: str | Path, *, dead_only: bool = False) -> list[Path]:
    """Delete the temporary files (and folders) a killed writer left in ``folder``.

    Args:
        folder: where to look (not recursive).
        dead_only: only those whose writer (the process id in the name) is gone, for a folder
            other processes may be writing right now (a name without a process id is kept).

    Returns:
        What was removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.iterdir():
        m = _TMP.match(p.name)
        if m is None or (dead_only and (m["pid"] is None or _alive(int(m["pid"])))):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
