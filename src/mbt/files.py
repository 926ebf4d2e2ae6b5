"""Files that are either whole or absent: atomic writes, and a full disk as a one-line error.

Every file a run or a cache writes (weights, state, logs, plots, indexes, clip files) is
written to a hidden temporary name beside its target, flushed to disk, and renamed over the
target: a reader, or a run resumed after ``kill -9``, sees the old file or the new one, never a
half-written one. A write that fails removes its temporary file; ``ENOSPC`` (disk full) and
``EDQUOT`` (quota) become :class:`DiskFullError`, one line naming the device and the file::

    write_atomic(run / "training_log.csv", text)
    with atomic_path(run / "plot.png") as tmp:  # for writers that need a file name
        fig.savefig(tmp)
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """No space (or quota) left while writing a file; what was there before is intact."""

    def __init__(self, path: str | Path, what: str = "the previous file is intact") -> None:
        path = Path(path)
        super().__init__(
            errno.ENOSPC, f"no space left on {_device(path)} while writing {path}; {what}"
        )
        self.path = path

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
    except OSError as e:
        if e.errno in _FULL:
            raise DiskFullError(path, what) from None
        raise
    except RuntimeError as e:  # torch.save / safetensors wrap the OSError in a RuntimeError
        if "No space left on device" in str(e) or "Disk quota exceeded" in str(e):
            raise DiskFullError(path, what) from None
        raise


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
