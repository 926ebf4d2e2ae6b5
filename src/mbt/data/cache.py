"""Decode every clip once into a lean cache, and read training items from it.

``mbt prepare`` (:func:`prepare`) writes::

    <out>/index.json                    root, settings, classes, splits, one entry per clip
    <out>/clips/<name>-<id>.jpgs        frames: offsets + one JPEG per stored frame (or .npy)
    <out>/clips/<name>-<id>.fbank.npy   float16 (N_a, F) log-mel of the whole track
    <out>/prepare.lock                  held by the prepare run writing the cache (if any)

(``<id>``: the settings the files were made with, so files of other settings never collide.)

What is stored, and what the sampling loses:

* **Frames at the rate sampling needs, not every frame.** Stored frame ``k`` is source frame
  ``k * step``, i.e. the cache holds ``source_fps / step`` frames per second:

  - ``data.sampling=window`` with ``frame_stride=s``: ``step = s`` (12.5 fps from 25 fps with
    the official stride 2). Every window is served exactly by consecutive stored frames; what
    is lost is the windows that start on the other ``s - 1`` source frames: the window start
    moves on an ``s / source_fps`` grid (80 ms) instead of the frame grid (40 ms).
  - ``data.sampling=uniform`` (paper): ``step = ceil(source_fps / UNIFORM_FPS)``, at most
    12.5 fps (25 fps -> 12.5, 30 -> 10, 50 -> 12.5, 24 -> 12, 12 -> 12). Training jitter
    inside each segment lands on an 80 ms grid instead of a 40 ms one (a 7-s clip sampled
    with 8 frames has 11 positions per segment instead of 22); test frames move by <= 40 ms;
    the 4 test views of a 7-s clip are 0.22 s apart, so they stay distinct.
  - ``prepare(fps=...)`` (``mbt prepare --fps``) sets the rate bound instead (``fps`` >= the
    source rate stores every frame, exactly what decoding the media gives).

  Frames are read back as the stored frame nearest to each wanted time. Decoding the media
  (:class:`mbt.data.clip.MediaReader`) keeps the exact frame grid.
* **The short side the transforms need, never upscaled**: ``data.resize_short`` (or
  S * 256 / 224) if the source is larger, else the source size (a 240-line clip stays 240; the
  transforms resize anyway, so upscaling would only store bytes).
* **JPEG 4:2:0 at quality 80** (``--jpeg-quality``): the sources are 4:2:0, so 4:4:4 would
  store chroma that never existed. On UCF101-sized clips (320x240, 25 fps, H.264 + wav) this
  keeps the cache near 1.3x the source media (``benchmarks/cache.py`` measures it).
  ``frame_format="npy"`` stores raw uint8 frames (bit-exact, ~15x larger).
* **Audio as float16 log-mel of the whole track**, before normalisation (the statistics stay
  a training-time choice); a window is read as a slice.
* **Frames as shown**: the source's display orientation (a phone's portrait clip, stored as
  landscape pixels plus a display matrix) is applied before storing, and the entry records
  which (``orientation``: ``upright``, ``rot90``, ...; :mod:`mbt.data.orientation`). Entries
  written before mbt read the orientation are refused by the readers; ``mbt prepare`` checks
  their sources' orientation (one frame each) and decodes again only the turned ones.

Frames are decoded with ``simplejpeg`` (libjpeg-turbo in a wheel): ~2x faster than Pillow.

Safety: one ``prepare`` at a time per cache (a lock on ``prepare.lock``: a second run refuses,
or waits with ``wait=True``; the lock dies with its process, so a killed run leaves no stale
lock). Every entry records the settings it was made with: entries of other settings are
decoded again, never reused. Every file is written to a temporary name and renamed
(:mod:`mbt.files`), so an interrupted run leaves a usable cache; a full disk stops the run
with one line, and the next run goes on from there. Media paths in the index are
relative to the data root. The reader checks every file against the index (frame count and
size, log-mel shape) and names the file in a one-line :class:`MediaError` when they differ.

Decoding runs in worker processes with a per-file timeout: a file that hangs or crashes the
decoder is killed, reported and skipped; the rest goes on. Re-running only decodes files that
are new or changed (size or mtime) or were made with other settings.

:class:`CachedDataset` gives the same items as :class:`mbt.data.dataset.AVDataset` (same
sampling, alignment and augmentation code) from the cache; :func:`mbt.data.loaders.open_source`
picks the cache, its tar shards (``mbt prepare --shards``) or the media files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import multiprocessing as mp
import os
import re
import socket
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import simplejpeg
import torch

from mbt.config import DataConfig, ModelConfig
from mbt.data.audio import load_audio, log_mel
from mbt.data.clip import resolve_short_side
from mbt.data.dataset import AVDataset
from mbt.data.layouts import Clip, DataIndex, scan
from mbt.data.orientation import UPRIGHT
from mbt.data.video import MediaError, VideoFile, probe_video
from mbt.errors import DataError
from mbt.files import DiskFullError, remove_temporaries, write_atomic
from mbt.progress import progress_bar

try:  # POSIX record locks; on Windows the cache is not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

CACHE_VERSION = 2  # 1: every frame, upscaled, JPEG 4:4:4; no per-entry settings
UNIFORM_FPS = 12.5  # stored frames per second (at most) for uniform sampling
JPEG_QUALITY = 80  # 4:2:0; q85 sat exactly at 1.5x the source on UCF101-sized clips
JPEG_MAGIC = b"MBTJPG1\0"  # then uint32 count, (count + 1) int64 offsets, the JPEG bytes
LOCK_NAME = "prepare.lock"
INDEX_FLUSH_S = 30.0  # rewrite index.json at least this often during a long run
FULL = "the cache is intact; free space and run mbt prepare again to go on"  # disk-full message
# What decode_clip writes into a clip's index entry (and a later run keeps when it reuses it).
DECODED_FIELDS = (
    "has_audio", "duration", "source_fps", "fps", "step", "num_frames", "height", "width",
    "orientation", "frames", "fbank", "fbank_rows",
)  # fmt: skip
REBUILD = "re-run `mbt prepare` for this cache"
KEPT = "_kept"  # in decode_clip's result: an earlier entry kept, nothing decoded again


class CacheBusyError(DataError):
    """Another ``mbt prepare`` holds the cache's lock."""


@dataclass
class PrepareReport:
    """What :func:`prepare` did."""

    out: str
    clips: int = 0  # clips in the cache after this run
    processed: int = 0  # decoded in this run
    reused: int = 0  # unchanged since the last run
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    bytes: int = 0  # size of the clip files
    seconds: float = 0.0
    scan: str = ""  # the scan report table

    def format(self) -> str:
        lines = [
            f"cache {self.out}: {self.clips} clips ({self.processed} decoded, {self.reused} "
            f"unchanged, {len(self.failed)} failed), {self.bytes / 2**20:.1f} MiB, "
            f"{self.seconds:.1f} s"
        ]
        lines += [f"  failed {p}: {why}" for p, why in self.failed]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# settings: what the cached files depend on


def cache_settings(
    cfg: DataConfig,
    model_cfg: ModelConfig,
    *,
    fps: float | None = None,
    frame_format: str = "jpeg",
    jpeg_quality: int = JPEG_QUALITY,
) -> dict[str, Any]:
    """The settings a cache is built with (a cache built with others is rebuilt).

    ``frame_step`` (window sampling: every ``frame_stride``-th frame) or ``max_fps`` (uniform
    sampling, or an explicit ``fps``: the largest rate ``source_fps / k`` not above it) says
    which frames are stored; see the module docstring.
    """
    if frame_format not in ("jpeg", "npy"):
        raise ValueError(f"frame_format must be 'jpeg' or 'npy', got {frame_format!r}")
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    by_stride = fps is None and cfg.sampling == "window"
    return {
        "version": CACHE_VERSION,
        "short_side": resolve_short_side(model_cfg, cfg),
        "frame_step": cfg.frame_stride if by_stride else None,
        "max_fps": None if by_stride else float(fps or UNIFORM_FPS),
        "mel_bins": model_cfg.mel_bins,
        "frame_format": frame_format,
        "jpeg_quality": jpeg_quality if frame_format == "jpeg" else None,
    }


def settings_id(settings: dict[str, Any]) -> str:
    """A short stable name of ``settings`` (recorded in every entry and its file names)."""
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def frame_step(source_fps: float, settings: dict[str, Any]) -> int:
    """Stored frame k is source frame ``k * frame_step``."""
    if settings["frame_step"]:
        return int(settings["frame_step"])
    return max(1, math.ceil(source_fps / settings["max_fps"] - 1e-6))


def check_settings(
    data: dict[str, Any], model_cfg: ModelConfig, data_cfg: DataConfig, where: Path
) -> None:
    """Refuse (ValueError, one line) a cache or shard index built for other inputs."""
    settings = data["settings"]
    if settings.get("version") != CACHE_VERSION:
        raise ValueError(
            f"{where}: written by an older mbt (cache format {settings.get('version')}, this "
            f"version reads {CACHE_VERSION}): {REBUILD}"
        )
    want = {"short_side": resolve_short_side(model_cfg, data_cfg), "mel_bins": model_cfg.mel_bins}
    for name, value in want.items():
        if settings.get(name) != value:
            raise ValueError(
                f"{where}: cache built with {name}={settings.get(name)}, the config needs "
                f"{value}; re-run `mbt prepare` with this config"
            )
    sid = settings_id(settings)
    stale = [k for k, e in data["clips"].items() if e.get("settings") != sid]
    if stale:
        raise ValueError(
            f"{where}: {len(stale)} entries (e.g. {stale[0]}) were written with other settings "
            f"than the index says (two prepare runs at once?): {REBUILD}"
        )
    unturned = [k for k, e in data["clips"].items() if "frames" in e and "orientation" not in e]
    if unturned:
        raise ValueError(
            f"{where}: {len(unturned)} entries (e.g. {unturned[0]}) were written before mbt "
            "applied the display rotation (a phone clip would be read sideways): re-run `mbt "
            "prepare` for this cache (it decodes again only the rotated clips)"
        )
    if data_cfg.sampling == "window":
        bad = [k for k, e in data["clips"].items() if data_cfg.frame_stride % e.get("step", 1)]
        if bad:
            step = data["clips"][bad[0]]["step"]
            raise ValueError(
                f"{where}: the cache stores one frame in {step} of {bad[0]} (and "
                f"{len(bad) - 1} more), window sampling with data.frame_stride="
                f"{data_cfg.frame_stride} needs frames {data_cfg.frame_stride} apart; re-run "
                "`mbt prepare` with this config"
            )


# ---------------------------------------------------------------------------------------------
# decoding one clip (runs in a worker process)


@dataclass(frozen=True)
class _Job:
    """One clip to decode (sent to a worker process)."""

    key: str
    video: str | None
    audio: str | None  # separate audio file; None with has_audio: the video's own track
    has_audio: bool
    stem: str  # where to write, without extension
    settings: dict[str, Any]
    # the decoded fields of an entry written before the orientation was recorded
    unturned: dict[str, Any] | None = None


def decode_clip(job: _Job) -> dict[str, Any]:
    """Decode one clip and write its cache files; returns its index entry (runs in a worker).

    An entry written before the orientation was recorded (``job.unturned``) is kept as it is
    when its source is shown upright (one frame decoded), and decoded again otherwise.
    """
    if job.unturned is not None and job.video is not None:
        if probe_video(job.video).orientation == UPRIGHT:
            return {**job.unturned, "orientation": UPRIGHT.name, KEPT: True}
    entry: dict[str, Any] = {"has_audio": job.has_audio}
    if job.video is not None:
        entry.update(_write_frames(job))
    if job.has_audio:
        wav = load_audio(job.audio or job.video)  # (N,) 16 kHz mono
        fbank = log_mel(wav, num_mel_bins=job.settings["mel_bins"]).numpy()  # (N_a, F)
        path = Path(job.stem + ".fbank.npy")
        write_atomic(path, _npy_bytes(fbank.astype(np.float16)), FULL)
        entry.update(fbank=path.name, fbank_rows=len(fbank))
    return entry


def _write_frames(job: _Job) -> dict[str, Any]:
    """Store the frames sampling can use (module docstring); their part of the entry."""
    st = job.settings
    with VideoFile(job.video) as video:
        info = video.info
        step = frame_step(info.fps, st)
        fps = info.fps / step
        n = max(1, math.ceil(info.duration * fps - 1e-6))
        times = [k / fps for k in range(n)]  # source frames 0, step, 2 step, ...
        short = min(st["short_side"], info.width, info.height)  # never upscale
        frames = video.frames(times, short_side=short).numpy()  # (N, H, W, 3) as shown
    if st["frame_format"] == "jpeg":
        path, data = Path(job.stem + ".jpgs"), encode_jpegs(frames, st["jpeg_quality"])
    else:
        path, data = Path(job.stem + ".npy"), _npy_bytes(frames)
    write_atomic(path, data, FULL)
    # source_fps times the sampling (as the media reader's), fps indexes the stored frames
    return {
        "duration": info.duration, "source_fps": info.fps, "fps": fps, "step": step,
        "num_frames": n, "height": frames.shape[1], "width": frames.shape[2],
        "orientation": info.orientation.name, "frames": path.name,
    }  # fmt: skip


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def encode_jpegs(frames: np.ndarray, quality: int) -> bytes:
    """(N, H, W, 3) uint8 -> one blob: magic, count, offsets, then each frame as a JPEG 4:2:0."""
    blobs = [
        simplejpeg.encode_jpeg(np.ascontiguousarray(f), quality=quality, colorsubsampling="420")
        for f in frames
    ]
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype("<i8")  # (N + 1,)
    return JPEG_MAGIC + struct.pack("<I", len(blobs)) + offsets.tobytes() + b"".join(blobs)


# ---------------------------------------------------------------------------------------------
# reading cache files: only the wanted frames / rows, checked against the index


def read_jpegs(
    f: BinaryIO, indices: Sequence[int], where: str, shape: tuple[int, int, int]
) -> np.ndarray:
    """Frames ``indices`` of a ``.jpgs`` blob as uint8 (T, H, W, 3); only those are decoded.

    Args:
        f: The blob, open (a file, or a shard member in memory).
        indices: Stored frame numbers (repeats are decoded once).
        where: The file's name, for errors.
        shape: (count, H, W) the index says the blob holds.

    Raises:
        MediaError: not a frame blob, truncated, corrupt, or not the index's shape.
    """
    head = f.read(len(JPEG_MAGIC) + 4)
    if len(head) < len(JPEG_MAGIC) + 4 or head[: len(JPEG_MAGIC)] != JPEG_MAGIC:
        raise MediaError(f"{where}: not a frame cache file ({REBUILD})")
    (count,) = struct.unpack("<I", head[len(JPEG_MAGIC) :])
    if count != shape[0]:
        raise MediaError(f"{where}: {count} frames, the index says {shape[0]} ({REBUILD})")
    offsets = np.frombuffer(f.read(8 * (count + 1)), dtype="<i8")  # (count + 1,)
    base = f.tell()
    if len(offsets) < count + 1 or _size(f) < base + int(offsets[-1]):
        raise MediaError(f"{where}: truncated frame cache file ({REBUILD})")
    decoded: dict[int, np.ndarray] = {}
    for i in dict.fromkeys(indices):
        f.seek(base + int(offsets[i]))
        try:
            decoded[i] = simplejpeg.decode_jpeg(f.read(int(offsets[i + 1] - offsets[i])))
        except ValueError as e:
            raise MediaError(f"{where}: corrupt JPEG frame {i} ({e})") from e
        if decoded[i].shape != (*shape[1:], 3):
            raise MediaError(
                f"{where}: frame of {decoded[i].shape[1]}x{decoded[i].shape[0]}, the index says "
                f"{shape[2]}x{shape[1]} ({REBUILD})"
            )
    return np.stack([decoded[i] for i in indices])  # (T, H, W, 3)


def read_npy_rows(
    f: BinaryIO, rows: Sequence[int] | slice, where: str, shape: tuple[int, ...], dtype: str
) -> np.ndarray:
    """Rows (first-axis entries) of an ``.npy`` file, reading only those; header checked.

    Raises:
        MediaError: not an npy file, truncated, or not the ``shape`` / ``dtype`` of the index.
    """
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            stored, fortran, stored_dtype = np.lib.format.read_array_header_1_0(f)
        else:
            stored, fortran, stored_dtype = np.lib.format.read_array_header_2_0(f)
    except (ValueError, OSError, EOFError) as e:
        raise MediaError(f"{where}: cannot read the cache file ({e})") from e
    if tuple(stored) != tuple(shape) or stored_dtype != np.dtype(dtype) or fortran:
        raise MediaError(
            f"{where}: {stored_dtype} array of shape {tuple(stored)}, the index says {dtype} "
            f"{tuple(shape)} ({REBUILD})"
        )
    row = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
    base = f.tell()
    if _size(f) < base + row * shape[0]:
        raise MediaError(f"{where}: truncated cache file ({REBUILD})")
    if isinstance(rows, slice):
        start, stop, _ = rows.indices(shape[0])
        f.seek(base + start * row)
        data = f.read(max(0, stop - start) * row)
        return np.frombuffer(data, dtype=dtype).reshape(-1, *shape[1:])
    out = []
    for i in rows:
        f.seek(base + int(i) * row)
        out.append(np.frombuffer(f.read(row), dtype=dtype).reshape(shape[1:]))
    return np.stack(out)


def _size(f: BinaryIO) -> int:
    """Bytes in ``f`` (a file or an in-memory buffer)."""
    here = f.tell()
    end = f.seek(0, os.SEEK_END)
    f.seek(here)
    return end


class CacheReader:
    """:class:`mbt.data.clip.ClipReader` over cache entries (frames and log-mel files).

    Reads only the frames and log-mel rows asked for. A file that is missing, truncated or not
    what the index says raises a one-line :class:`MediaError` naming it, like a broken media
    file. Subclasses read the files from elsewhere by overriding :meth:`open`.

    Args:
        folder: The cache folder (files under ``folder / "clips"``).
        entries: The index entries by clip key.
        mel_bins: F of the stored log-mels.
    """

    def __init__(self, folder: Path, entries: dict[str, dict[str, Any]], mel_bins: int) -> None:
        self.folder = folder
        self.entries = entries
        self.mel_bins = mel_bins

    def open(self, key: str, name: str) -> tuple[BinaryIO, str]:
        """The file ``name`` of clip ``key``, open for reading, and how to name it in errors."""
        path = self.folder / "clips" / name
        try:
            return open(path, "rb"), str(path)
        except OSError as e:
            raise MediaError(f"{path}: cannot read the cache file ({e.strerror}; {REBUILD})") from e

    def video_info(self, clip: Clip) -> tuple[float, float]:
        e = self.entries[clip.key]
        return e["duration"], e["source_fps"]

    def frames(self, clip: Clip, times: Sequence[float]) -> torch.Tensor:
        """uint8 (T, H, W, 3): the stored frame nearest to each time (ties to the earlier)."""
        e = self.entries[clip.key]
        fps, n = e["fps"], e["num_frames"]
        idx = [min(n - 1, max(0, math.ceil(t * fps - 0.5))) for t in times]
        f, where = self.open(clip.key, e["frames"])
        with f:
            if e["frames"].endswith(".jpgs"):
                frames = read_jpegs(f, idx, where, (n, e["height"], e["width"]))
            else:
                shape = (n, e["height"], e["width"], 3)
                frames = read_npy_rows(f, idx, where, shape, "uint8")
        return torch.from_numpy(frames)  # (T, H, W, 3)

    def audio_frames(self, clip: Clip) -> int:
        """Log-mel rows of the whole track (0: no sound), from the index."""
        return self.entries[clip.key].get("fbank_rows", 0)

    def fbank(self, clip: Clip, start: int = 0, count: int | None = None) -> torch.Tensor:
        """float32 (<= count, F): rows [start, start + count) of the whole track's log-mel."""
        e = self.entries[clip.key]
        rows = e["fbank_rows"]
        stop = rows if count is None else min(rows, start + count)
        f, where = self.open(clip.key, e["fbank"])
        with f:
            x = read_npy_rows(f, slice(start, stop), where, (rows, self.mel_bins), "float16")
        return torch.from_numpy(x.astype(np.float32))  # (<= count, F)


# ---------------------------------------------------------------------------------------------
# worker pool with a per-file timeout


def _worker_main(conn: Any, fn: Callable[[Any], Any], parent_end: Any) -> None:
    # A forked worker starts with a copy of the parent's end of its pipe: closed, the worker
    # sees EOF and exits when the parent dies, even by SIGKILL (else it would wait forever).
    parent_end.close()
    torch.set_num_threads(1)  # parallelism comes from the processes
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        try:
            result = ("ok", fn(job))
        except BaseException as e:  # noqa: BLE001 - reported to the parent, which goes on
            msg = str(e).splitlines()[0] if str(e) else ""
            result = ("error", f"{type(e).__name__}: {msg}" if msg else type(e).__name__)
        conn.send(result)


class _Worker:
    """One worker process, the job it runs and since when."""

    def __init__(self, ctx: Any, fn: Callable[[Any], Any]) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, fn, self.conn), daemon=True)
        self.process.start()
        child.close()
        self.job: Any = None
        self.started = 0.0

    def start(self, job: Any) -> None:
        self.job, self.started = job, time.monotonic()
        self.conn.send(job)

    def outcome(self, ready: list[Any], timeout: float) -> tuple[str, Any] | None:
        """(status, value) of the running job once it is over (done, crashed or hung past
        ``timeout``: then the process is killed); None while it runs."""
        if self.job is None:
            return None
        if self.conn in ready or self.process.sentinel in ready:
            try:
                if self.conn.poll():
                    return self.conn.recv()
            except (EOFError, OSError):
                pass
            if not self.process.is_alive():
                return "error", f"decoder crashed (exit code {self.process.exitcode})"
        if time.monotonic() - self.started > timeout:
            self.kill()
            return "error", f"timed out after {timeout:g} s (decoder killed)"
        return None

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()

    def stop(self) -> None:
        """Ask the process to exit; kill it if it does not within a second."""
        if self.process.is_alive():
            try:
                self.conn.send(None)
            except OSError:
                pass
            self.process.join(timeout=1.0)
        if self.process.is_alive():
            self.kill()


def run_jobs(
    jobs: Sequence[Any],
    fn: Callable[[Any], Any],
    on_done: Callable[[Any, str, Any], None],
    *,
    workers: int,
    timeout: float,
) -> None:
    """Run ``fn(job)`` for every job in worker processes; call ``on_done(job, status, value)``.

    ``status`` is ``"ok"`` (value: the result) or ``"error"`` (value: a one-line reason). A job
    that runs longer than ``timeout`` seconds, or whose worker dies (a crash in native code),
    gets an error; its worker is killed and replaced, the other jobs go on. Workers are forked
    where the platform allows (no re-import, and ``fn`` need not be picklable).
    """
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    pending = deque(jobs)
    pool = [_Worker(ctx, fn) for _ in range(max(1, min(workers, len(pending))))]
    try:
        while pending or any(w.job is not None for w in pool):
            for w in pool:
                if w.job is None and pending:
                    w.start(pending.popleft())
            busy = [w for w in pool if w.job is not None]
            deadline = min(w.started for w in busy) + timeout  # the first that can hang
            ready = wait(
                [w.conn for w in busy] + [w.process.sentinel for w in busy],
                timeout=max(0.0, deadline - time.monotonic()),
            )
            for i, w in enumerate(pool):
                result = w.outcome(ready, timeout)
                if result is None:
                    continue
                job, w.job = w.job, None
                if not w.process.is_alive():  # crashed or killed: a fresh one takes its place
                    w.kill()
                    pool[i] = _Worker(ctx, fn)
                on_done(job, *result)
    finally:
        for w in pool:
            w.stop()


# ---------------------------------------------------------------------------------------------
# prepare


@contextlib.contextmanager
def cache_lock(out: Path, wait: bool = False) -> Iterator[None]:
    """Hold ``out/prepare.lock`` for one writer at a time.

    A POSIX record lock (``fcntl.lockf``), not ``flock``: it belongs to this process only, so
    the decoding processes forked while it is held do not hold it too (a hung decoder that
    outlived a killed parent would otherwise keep the cache locked), and the system drops it
    when the process dies however it dies: no stale lock to clean up.

    Raises:
        CacheBusyError: another process holds it and ``wait`` is False.
    """
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    with _HELD_GUARD:  # POSIX locks do not exclude their own process: this set does
        if str(path.resolve()) in _HELD:
            raise CacheBusyError(f"{out}: this process is already writing this cache")
        _HELD.add(str(path.resolve()))
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _lock_holder(path)
                if not wait:
                    raise CacheBusyError(
                        f"{out}: another `mbt prepare` ({holder}) is writing this cache; wait "
                        "for it (prepare --wait) or use another --out"
                    ) from None
                print(f"{out}: waiting for the `mbt prepare` writing it ({holder}) ...")
                fcntl.lockf(fd, fcntl.LOCK_EX)
        note = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, note.encode(), 0)
        yield
        os.ftruncate(fd, 0)  # at rest the file says nothing (the same bytes after every run)
    finally:
        os.close(fd)  # releases the lock
        with _HELD_GUARD:
            _HELD.discard(str(path.resolve()))


_HELD: set[str] = set()  # the lock files this process holds
_HELD_GUARD = threading.Lock()


def _lock_holder(path: Path) -> str:
    """Who holds the lock, as its holder wrote it (read by a process that holds no lock on
    ``path``: with POSIX locks, closing any descriptor of the file drops the process's lock)."""
    try:
        return path.read_text().strip() or "starting"
    except OSError:
        return "unknown process"


# Longer than 60 lines only for its signature and docstring: one keyword per option of
# `mbt prepare`; the body is its steps.
def prepare(
    root: str | Path | None,
    out: str | Path,
    cfg: DataConfig,
    model_cfg: ModelConfig,
    *,
    workers: int = 2,
    timeout: float = 60.0,
    progress: bool = True,
    fps: float | None = None,
    frame_format: Literal["jpeg", "npy"] = "jpeg",
    jpeg_quality: int = JPEG_QUALITY,
    retry_failed: bool = False,
    wait: bool = False,
    index: DataIndex | None = None,
    decode: Callable[[_Job], dict[str, Any]] = decode_clip,
) -> PrepareReport:
    """Decode the data set at ``root`` once into a cache folder ``out``.

    Args:
        root: Data set (as for :func:`mbt.data.layouts.scan`; None: ``cfg.root``).
        out: Cache folder (created).
        cfg: Data options (layout, splits, ``missing_audio``, ``resize_short``, and
            ``sampling`` / ``frame_stride``, which decide the frames stored).
        model_cfg: ``image_size`` (for the default short side), ``mel_bins``, ``modalities``.
        workers: Decoding processes.
        timeout: Seconds one file may take; a slower (hung) file is killed and skipped.
        progress: Print the scan report, a progress bar (in a terminal) and the summary.
        fps: Store at most this many frames per second (``source_fps / k``); None: what
            ``cfg.sampling`` needs (module docstring). At least the source rate: every frame.
        frame_format: ``"jpeg"`` (4:2:0) or ``"npy"`` (raw uint8, bit-exact, ~15x larger).
        jpeg_quality: JPEG quality 1-100.
        retry_failed: Decode files that failed in an earlier run again even if unchanged.
        wait: Wait for another prepare run writing ``out`` to finish instead of refusing.
        index: An already scanned data set (skips the scan).
        decode: The per-clip decode function (tests inject hanging or crashing ones).

    Returns:
        A :class:`PrepareReport`.

    Raises:
        CacheBusyError: another prepare run is writing ``out`` (and not ``wait``).
    """
    start = time.monotonic()
    out = Path(out)
    settings = cache_settings(
        cfg, model_cfg, fps=fps, frame_format=frame_format, jpeg_quality=jpeg_quality
    )
    with cache_lock(out, wait):
        index = index if index is not None else _scan(root, cfg, model_cfg)
        if progress:
            print(index.report.format())
        (out / "clips").mkdir(parents=True, exist_ok=True)
        for folder in (out, out / "clips"):  # what a run killed mid-write left
            remove_temporaries(folder, dead_only=True)
        report = PrepareReport(out=str(out), scan=index.report.format())
        cache = _IndexFile(out, settings, index, split_settings(cfg))
        jobs = cache.plan(retry_failed, report)
        _decode_all(
            jobs, decode, cache, report, workers=workers, timeout=timeout, progress=progress
        )
        _remove_stale(out, cache.entries)
        _summarise(report, cache, start)
    if progress:
        print(report.format())
    return report


def _decode_all(
    jobs: list[_Job],
    decode: Callable[[_Job], dict[str, Any]],
    cache: _IndexFile,
    report: PrepareReport,
    *,
    workers: int,
    timeout: float,
    progress: bool,
) -> None:
    """Run the jobs, filing each result; ``index.json`` is written every ``INDEX_FLUSH_S``
    seconds and at the end, however the run ends (an interrupted run leaves a usable cache)."""
    bar = progress_bar(total=len(jobs), desc="prepare", unit="clip", disable=not progress)

    def on_done(job: _Job, status: str, value: Any) -> None:
        if status == "error" and value.startswith(f"{DiskFullError.__name__}: "):
            # No fault of the clip: stop, rather than file a failure a re-run would not retry.
            raise DiskFullError(job.stem, message=value.split(": ", 1)[1])
        kept = status == "ok" and value.pop(KEPT, False)
        cache.record(job.key, status, value)
        report.processed += status == "ok" and not kept
        report.reused += kept
        bar.update(1)
        cache.write(every=INDEX_FLUSH_S)

    try:
        if jobs:
            run_jobs(jobs, decode, on_done, workers=workers, timeout=timeout)
    finally:
        bar.close()
        remove_temporaries(cache.out / "clips", dead_only=True)  # of workers killed mid-write
        cache.write()


def _scan(root: str | Path | None, cfg: DataConfig, model_cfg: ModelConfig) -> DataIndex:
    """The clips the model can use: with a video if it reads video, with sound if it reads audio."""
    modalities = model_cfg.modalities
    return scan(root, cfg, require_video="video" in modalities, need_audio="audio" in modalities)


def _summarise(report: PrepareReport, cache: _IndexFile, start: float) -> None:
    """Fill in what the cache holds after this run."""
    report.clips = len(cache.entries)
    report.failed = [(f["file"], f["reason"]) for _, f in sorted(cache.failed.items())]
    report.bytes = sum((cache.out / "clips" / n).stat().st_size for n in _files(cache.entries))
    report.seconds = time.monotonic() - start


class _IndexFile:
    """``index.json`` while :func:`prepare` rebuilds it: the clips kept so far, the failures,
    and what the previous run left (reused when neither the settings nor the file changed)."""

    def __init__(
        self, out: Path, settings: dict[str, Any], index: DataIndex, split: dict[str, Any]
    ) -> None:
        self.out, self.settings, self.index, self.split = out, settings, index, split
        self.id = settings_id(settings)
        self.root = Path(index.report.root).resolve()
        self.clips = {c.key: c for s in ("train", "val", "test") for c in index.split(s)}
        self.entries: dict[str, dict[str, Any]] = {}
        self.failed: dict[str, dict[str, Any]] = {}
        old = _load_index(out / "index.json", quiet=True) or {}
        self.old_entries = old.get("clips", {})
        self.old_failed = old.get("failed", {})
        self.written = time.monotonic()

    def plan(self, retry_failed: bool, report: PrepareReport) -> list[_Job]:
        """Reuse the unchanged clips made with these settings, keep the unchanged failures;
        the rest are jobs."""
        jobs = []
        for key, clip in sorted(self.clips.items()):
            src = _stamps(clip)
            prev, prev_fail = self.old_entries.get(key), self.old_failed.get(key)
            if self._reusable(prev, src):
                # Labels and groups come from this scan: class ids shift when classes change.
                decoded = {k: prev[k] for k in DECODED_FIELDS if k in prev}
                if "frames" in prev and "orientation" not in prev:  # written before it was
                    jobs.append(dataclasses.replace(self._job(clip), unturned=decoded))
                    continue
                self.entries[key] = self._entry(clip, decoded, src)
                report.reused += 1
            elif self._reusable(prev_fail, src, files=False) and not retry_failed:
                self.failed[key] = prev_fail  # a hang would cost the timeout again
            else:
                jobs.append(self._job(clip))
        return jobs

    def _reusable(
        self, prev: dict[str, Any] | None, src: dict[str, Any], files: bool = True
    ) -> bool:
        """An earlier entry (or failure) of the same file, made with these settings."""
        if prev is None or prev.get("src") != src or prev.get("settings") != self.id:
            return False
        return not files or all((self.out / "clips" / n).is_file() for n in _files({"": prev}))

    def _job(self, clip: Clip) -> _Job:
        return _Job(
            key=clip.key, video=str(clip.video) if clip.video else None,
            audio=str(clip.audio) if clip.audio else None, has_audio=clip.has_audio,
            stem=str(self.out / "clips" / f"{_safe_name(clip.key)}-{self.id}"),
            settings=self.settings,
        )  # fmt: skip

    def _entry(self, clip: Clip, decoded: dict[str, Any], src: dict[str, Any]) -> dict[str, Any]:
        return {
            "video": _relative(clip.video, self.root),
            "audio": _relative(clip.audio, self.root),
            "labels": list(clip.labels),
            "group": clip.group,
            "src": src,
            "settings": self.id,
            **decoded,
        }

    def record(self, key: str, status: str, value: Any) -> None:
        """File a finished job: its entry (``"ok"``: ``value`` is decode's) or its failure."""
        clip = self.clips[key]
        src = _stamps(clip)
        if status == "ok":
            self.entries[key] = self._entry(clip, value, src)
        else:
            file = str(clip.video or clip.audio)
            self.failed[key] = {"file": file, "reason": value, "src": src, "settings": self.id}

    def write(self, every: float = 0.0) -> None:
        """Write ``index.json`` atomically (if ``every`` seconds passed since the last time)."""
        if time.monotonic() - self.written < every:
            return
        data = {
            "root": str(self.root),
            "settings": self.settings,
            "classes": self.index.classes,
            "multi_label": self.index.multi_label,
            "split": self.split,
            "splits": {
                s: [c.key for c in self.index.split(s) if c.key in self.entries]
                for s in ("train", "val", "test")
            },
            "clips": self.entries,
            "failed": self.failed,
        }
        write_atomic(self.out / "index.json", json.dumps(data, indent=1), FULL)
        self.written = time.monotonic()


def _relative(path: Path | None, root: Path) -> str | None:
    """``path`` relative to the data root (as POSIX), or absolute if it lies outside it."""
    if path is None:
        return None
    p = path.resolve()
    return p.relative_to(root).as_posix() if p.is_relative_to(root) else str(p)


def _stamps(clip: Clip) -> dict[str, list[int] | None]:
    """Size and mtime of the clip's files: a changed file is decoded again."""
    return {"video": _file_stamp(clip.video), "audio": _file_stamp(clip.audio)}


def _file_stamp(path: Path | None) -> list[int] | None:
    if path is None:
        return None
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _safe_name(key: str) -> str:
    """File name for a clip key: readable, unique (a hash of the key), no folders."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", key)[-80:]
    return f"{readable}-{zlib.crc32(key.encode()):08x}"


def _files(entries: dict[str, dict[str, Any]]) -> list[str]:
    """The clip files the entries point to."""
    return [e[k] for e in entries.values() for k in ("frames", "fbank") if k in e]


def _remove_stale(out: Path, entries: dict[str, dict[str, Any]]) -> None:
    """Delete clip files no index entry points to (left by changed settings or removed clips)."""
    keep = set(_files(entries))
    for p in (out / "clips").iterdir():
        if p.name not in keep and not p.name.startswith("."):
            p.unlink()


def _load_index(path: Path, quiet: bool = False) -> dict[str, Any] | None:
    if not path.is_file():
        if quiet:
            return None
        raise ValueError(f"{path}: no cache index (run `mbt prepare` first)")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        if quiet:
            return None
        raise ValueError(f"{path}: unreadable cache index ({e})") from None


# ---------------------------------------------------------------------------------------------
# the data set


class CachedDataset(AVDataset):
    """:class:`AVDataset` items read from a cache written by :func:`prepare`.

    Args:
        folder: The cache folder.
        split: ``"train"``, ``"val"`` or ``"test"``.
        model_cfg, data_cfg, train, views, crops, seed, on_error: as for :class:`AVDataset`.
    """

    def __init__(
        self,
        folder: str | Path,
        split: str,
        model_cfg: ModelConfig,
        data_cfg: DataConfig,
        *,
        train: bool,
        views: int = 1,
        crops: int | None = None,
        seed: int = 0,
        on_error: Literal["raise", "skip"] = "raise",
    ) -> None:
        folder = Path(folder)
        data = open_index(folder, model_cfg, data_cfg)
        if split not in data["splits"]:
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        entries = data["clips"]
        clips = [entry_clip(key, entries[key], data["root"]) for key in data["splits"][split]]
        super().__init__(
            clips, data["classes"], model_cfg, data_cfg, train=train,
            multi_label=data["multi_label"], views=views, crops=crops, seed=seed,
            on_error=on_error, reader=CacheReader(folder, entries, model_cfg.mel_bins),
        )  # fmt: skip


def read_index(folder: Path) -> dict[str, Any]:
    """The cache's ``index.json`` (ValueError, one line, if there is none or it is not one)."""
    data = _load_index(folder / "index.json")
    keys = ("root", "settings", "classes", "multi_label", "splits", "clips")
    gone = [k for k in keys if k not in data]
    if gone == ["root"]:  # written before the index had a data root
        raise ValueError(f"{folder}: written by an older mbt (cache format 1): {REBUILD}")
    if gone:
        raise ValueError(f"{folder / 'index.json'}: not a cache index (no {', '.join(gone)})")
    return data


def open_index(folder: Path, model_cfg: ModelConfig, data_cfg: DataConfig) -> dict[str, Any]:
    """The cache's index, refused (ValueError) if it was built for other inputs."""
    data = read_index(folder)
    check_settings(data, model_cfg, data_cfg, folder)
    check_split(data, data_cfg, folder)
    return data


def split_settings(data_cfg: DataConfig) -> dict[str, Any]:
    """The options that decide which clip goes to which split (fixed when a cache is made)."""
    return {k: getattr(data_cfg, k) for k in ("split", "val_fraction", "split_seed")}


def check_split(data: dict[str, Any], data_cfg: DataConfig, where: Path) -> None:
    """Refuse (ValueError, one line) a config whose split options differ from the cache's:
    the cache's splits would silently win. Caches made before the index recorded them pass."""
    made, now = data.get("split"), split_settings(data_cfg)
    if made is None:
        return
    diff = [k for k in now if made.get(k) != now[k]]
    if diff:
        raise ValueError(
            f"{where}: prepared with {', '.join(f'data.{k}={made.get(k)}' for k in diff)}, but "
            f"the config has {', '.join(f'data.{k}={now[k]}' for k in diff)}; the splits are "
            "fixed when the cache is made: prepare it again with this config, or use its values"
        )


def entry_clip(key: str, e: dict[str, Any], root: str) -> Clip:
    """The :class:`Clip` of an index entry (media paths relative to the data ``root``)."""
    return Clip(
        video=Path(root, e["video"]) if e["video"] else None,
        audio=Path(root, e["audio"]) if e["audio"] else None,
        labels=tuple(e["labels"]),
        key=key,
        group=e["group"],
        has_audio=e["has_audio"],
    )
