"""Decode every clip once into a compact cache, and read training items from it.

``mbt prepare`` (:func:`prepare`) writes::

    <out>/index.json              classes, splits, per-clip metadata, source size + mtime
    <out>/clips/<name>.jpgs       frames: JPEG per frame + offsets (or <name>.npy, raw uint8)
    <out>/clips/<name>.fbank.npy  float16 (N_a, F) log-mel of the whole track, un-normalised

Frames are resized to the training short side (``data.resize_short`` or S * 256 / 224) and kept
at the clip's own frame rate up to ``max_fps`` (25 by default: every frame of UCF101 and
VGGSound, so window sampling with a stride keeps working). The log-mel is stored before
normalisation, so the statistics stay a training-time choice.

Decoding runs in worker processes with a per-file timeout: a file that hangs or crashes the
decoder is killed, reported and skipped; the rest goes on. Re-running only decodes files that
are new or changed (size or mtime), and every file (clip files and the index) is written to a
temporary name and renamed, so an interrupted run leaves a usable cache.

:class:`CachedDataset` gives the same items as :class:`mbt.data.dataset.AVDataset` (same
sampling, alignment and augmentation code) from the cache; :func:`open_dataset` picks the cache
when ``data.cache`` is set and the media files otherwise.
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing as mp
import os
import re
import struct
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from mbt.config import DataConfig, ModelConfig
from mbt.data.audio import load_audio, log_mel
from mbt.data.clip import resolve_short_side
from mbt.data.dataset import AVDataset
from mbt.data.layouts import Clip, DataIndex, scan
from mbt.data.video import MediaError, probe_video, read_frames
from mbt.progress import progress_bar

CACHE_VERSION = 1
JPEG_MAGIC = b"MBTJPG1\0"  # then uint32 count, (count + 1) int64 offsets, the JPEG bytes
INDEX_FLUSH_S = 30.0  # rewrite index.json at least this often during a long run
# What decode_clip writes into a clip's index entry (and a later run keeps when it reuses it).
DECODED_FIELDS = ("has_audio", "duration", "source_fps", "fps", "num_frames", "frames", "fbank")

try:  # Pillow encodes JPEG; without it the cache stores raw frames
    from PIL import Image
except ImportError:  # pragma: no cover
    Image = None


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


@dataclass(frozen=True)
class _Job:
    """One clip to decode (sent to a worker process)."""

    key: str
    video: str | None
    audio: str | None  # separate audio file; None with has_audio: the video's own track
    has_audio: bool
    frames_path: str  # where to write, without extension
    short_side: int
    max_fps: float
    mel_bins: int
    frame_format: str
    jpeg_quality: int


def decode_clip(job: _Job) -> dict[str, Any]:
    """Decode one clip and write its cache files; returns its index entry (runs in a worker)."""
    entry: dict[str, Any] = {"has_audio": job.has_audio}
    if job.video is not None:
        info = probe_video(job.video)
        fps = min(info.fps, job.max_fps)
        n = max(1, round(info.duration * fps))
        times = [i / fps for i in range(n)]  # with fps == source fps: exactly its frames
        frames = read_frames(job.video, times, short_side=job.short_side).numpy()  # (N, H, W, 3)
        if job.frame_format == "jpeg":
            name = _write_atomic(job.frames_path + ".jpgs", _encode_jpegs(frames, job.jpeg_quality))
        else:
            name = _write_atomic(job.frames_path + ".npy", _npy_bytes(frames))
        # source_fps times the sampling (as the media reader's), fps indexes the stored frames
        entry.update(
            duration=info.duration, source_fps=info.fps, fps=fps, num_frames=n, frames=name
        )
    if job.has_audio:
        wav = load_audio(job.audio or job.video)  # (N,) 16 kHz mono
        fbank = log_mel(wav, num_mel_bins=job.mel_bins).numpy().astype(np.float16)  # (N_a, F)
        entry["fbank"] = _write_atomic(job.frames_path + ".fbank.npy", _npy_bytes(fbank))
    return entry


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _write_atomic(path: str | Path, data: bytes) -> str:
    """Write ``data`` to a temporary file beside ``path`` and rename; returns the file name."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path.name


def _encode_jpegs(frames: np.ndarray, quality: int) -> bytes:
    """(N, H, W, 3) uint8 -> one blob: magic, count, offsets, then each frame as a JPEG."""
    blobs = []
    for f in frames:
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, format="JPEG", quality=quality, subsampling=0)  # 4:4:4
        blobs.append(buf.getvalue())
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype("<i8")  # (N + 1,)
    return JPEG_MAGIC + struct.pack("<I", len(blobs)) + offsets.tobytes() + b"".join(blobs)


def read_jpegs(path: str | Path, indices: Sequence[int]) -> np.ndarray:
    """Frames ``indices`` of a ``.jpgs`` file as uint8 (T, H, W, 3); only those are decoded.

    Raises:
        MediaError: not a frame cache file, or a truncated one (e.g. a full disk).
        OSError: the file cannot be opened, or a JPEG in it is corrupt.
    """
    head_size = len(JPEG_MAGIC) + 4
    with open(path, "rb") as f:
        head = f.read(head_size)
        if len(head) < head_size or head[: len(JPEG_MAGIC)] != JPEG_MAGIC:
            raise MediaError(f"{path}: not a frame cache file")
        (count,) = struct.unpack("<I", head[len(JPEG_MAGIC) :])
        table = f.read(8 * (count + 1))
        if len(table) < 8 * (count + 1):
            raise MediaError(f"{path}: truncated frame cache file (re-run mbt prepare)")
        offsets = np.frombuffer(table, dtype="<i8")  # (count + 1,)
        base = f.tell()
        out = []
        for i in indices:
            if not 0 <= i < count:
                raise MediaError(f"{path}: frame {i} asked, the file holds {count}")
            f.seek(base + int(offsets[i]))
            size = int(offsets[i + 1] - offsets[i])
            data = f.read(size)
            if len(data) < size:
                raise MediaError(f"{path}: truncated frame cache file (re-run mbt prepare)")
            out.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    return np.stack(out)


# ---------------------------------------------------------------------------------------------
# worker pool with a per-file timeout


def _worker_main(conn: Any, fn: Callable[[Any], Any]) -> None:
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
        self.process = ctx.Process(target=_worker_main, args=(child, fn), daemon=True)
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


def prepare(
    root: str | Path | None,
    out: str | Path,
    cfg: DataConfig,
    model_cfg: ModelConfig,
    *,
    workers: int = 2,
    timeout: float = 60.0,
    progress: bool = True,
    max_fps: float = 25.0,
    frame_format: Literal["jpeg", "npy"] = "jpeg",
    jpeg_quality: int = 90,
    retry_failed: bool = False,
    index: DataIndex | None = None,
    decode: Callable[[_Job], dict[str, Any]] = decode_clip,
) -> PrepareReport:
    """Decode the data set at ``root`` once into a cache folder ``out``.

    Args:
        root: Data set (as for :func:`mbt.data.layouts.scan`; None: ``cfg.root``).
        out: Cache folder (created).
        cfg: Data options (layout, splits, ``missing_audio``, ``resize_short``).
        model_cfg: ``image_size`` (for the default short side), ``mel_bins``, ``modalities``.
        workers: Decoding processes.
        timeout: Seconds one file may take; a slower (hung) file is killed and skipped.
        progress: Print the scan report, a progress bar (in a terminal) and the summary.
        max_fps: Frame rate kept; clips with a higher rate are subsampled to it.
        frame_format: ``"jpeg"`` (about 10x smaller) or ``"npy"`` (raw uint8, bit-exact).
        jpeg_quality: JPEG quality 1-95.
        retry_failed: Decode files that failed in an earlier run again even if unchanged.
        index: An already scanned data set (skips the scan).
        decode: The per-clip decode function (tests inject hanging or crashing ones).

    Returns:
        A :class:`PrepareReport`.
    """
    start = time.monotonic()
    out = Path(out)
    settings = _settings(cfg, model_cfg, max_fps, frame_format, jpeg_quality)
    index = index if index is not None else _scan(root, cfg, model_cfg)
    if progress:
        print(index.report.format())
    (out / "clips").mkdir(parents=True, exist_ok=True)
    report = PrepareReport(out=str(out), scan=index.report.format())
    cache = _IndexFile(out, settings, index)
    jobs = cache.plan(retry_failed, report)
    _decode_all(jobs, decode, cache, report, workers=workers, timeout=timeout, progress=progress)
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
        cache.record(job.key, status, value)
        report.processed += status == "ok"
        bar.update(1)
        cache.write(every=INDEX_FLUSH_S)

    try:
        if jobs:
            run_jobs(jobs, decode, on_done, workers=workers, timeout=timeout)
    finally:
        bar.close()
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


def _settings(
    cfg: DataConfig, model_cfg: ModelConfig, max_fps: float, frame_format: str, jpeg_quality: int
) -> dict[str, Any]:
    """What the cached files depend on: a cache built with other settings is rebuilt."""
    if frame_format == "jpeg" and Image is None:
        frame_format = "npy"
    if frame_format not in ("jpeg", "npy"):
        raise ValueError(f"frame_format must be 'jpeg' or 'npy', got {frame_format!r}")
    if max_fps <= 0:
        raise ValueError(f"max_fps must be > 0, got {max_fps}")
    return {
        "version": CACHE_VERSION,
        "short_side": resolve_short_side(model_cfg, cfg),
        "max_fps": max_fps,
        "mel_bins": model_cfg.mel_bins,
        "frame_format": frame_format,
        "jpeg_quality": jpeg_quality if frame_format == "jpeg" else None,
    }


class _IndexFile:
    """``index.json`` while :func:`prepare` rebuilds it: the clips kept so far, the failures,
    and what the previous run left (reused when neither the settings nor the file changed)."""

    def __init__(self, out: Path, settings: dict[str, Any], index: DataIndex) -> None:
        self.out, self.settings, self.index = out, settings, index
        self.clips = {c.key: c for s in ("train", "val", "test") for c in index.split(s)}
        self.entries: dict[str, dict[str, Any]] = {}
        self.failed: dict[str, dict[str, Any]] = {}
        old = _load_index(out / "index.json", quiet=True)
        same = old is not None and old.get("settings") == settings
        self.old_entries = old.get("clips", {}) if same else {}
        self.old_failed = old.get("failed", {}) if same else {}
        self.written = time.monotonic()

    def plan(self, retry_failed: bool, report: PrepareReport) -> list[_Job]:
        """Reuse the unchanged clips, keep the unchanged failures; the rest are jobs."""
        jobs = []
        for key, clip in sorted(self.clips.items()):
            src = _stamps(clip)
            prev, prev_fail = self.old_entries.get(key), self.old_failed.get(key)
            if prev is not None and prev["src"] == src and _files_exist(self.out, prev):
                # Labels and groups come from this scan: class ids shift when classes change.
                decoded = {k: prev[k] for k in DECODED_FIELDS if k in prev}
                self.entries[key] = _clip_entry(clip, decoded, src)
                report.reused += 1
            elif prev_fail is not None and prev_fail["src"] == src and not retry_failed:
                self.failed[key] = prev_fail  # a hang would cost the timeout again
            else:
                jobs.append(self._job(clip))
        return jobs

    def _job(self, clip: Clip) -> _Job:
        st = self.settings
        return _Job(
            key=clip.key, video=str(clip.video) if clip.video else None,
            audio=str(clip.audio) if clip.audio else None, has_audio=clip.has_audio,
            frames_path=str(self.out / "clips" / _safe_name(clip.key)),
            short_side=st["short_side"], max_fps=st["max_fps"], mel_bins=st["mel_bins"],
            frame_format=st["frame_format"], jpeg_quality=st["jpeg_quality"] or 0,
        )  # fmt: skip

    def record(self, key: str, status: str, value: Any) -> None:
        """File a finished job: its entry (``"ok"``: ``value`` is decode's) or its failure."""
        clip = self.clips[key]
        src = _stamps(clip)
        if status == "ok":
            self.entries[key] = _clip_entry(clip, value, src)
        else:
            self.failed[key] = {"file": str(clip.video or clip.audio), "reason": value, "src": src}

    def write(self, every: float = 0.0) -> None:
        """Write ``index.json`` atomically (if ``every`` seconds passed since the last time)."""
        if time.monotonic() - self.written < every:
            return
        data = {
            "settings": self.settings,
            "classes": self.index.classes,
            "multi_label": self.index.multi_label,
            "splits": {
                s: [c.key for c in self.index.split(s) if c.key in self.entries]
                for s in ("train", "val", "test")
            },
            "clips": self.entries,
            "failed": self.failed,
        }
        _write_atomic(self.out / "index.json", json.dumps(data, indent=1).encode())
        self.written = time.monotonic()


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


def _clip_entry(clip: Clip, decoded: dict[str, Any], src: dict[str, Any]) -> dict[str, Any]:
    return {
        "video": str(clip.video) if clip.video else None,
        "audio": str(clip.audio) if clip.audio else None,
        "labels": list(clip.labels),
        "group": clip.group,
        "src": src,
        **decoded,
    }


def _files(entries: dict[str, dict[str, Any]]) -> list[str]:
    """The clip files the entries point to."""
    return [e[k] for e in entries.values() for k in ("frames", "fbank") if k in e]


def _files_exist(out: Path, entry: dict[str, Any]) -> bool:
    return all((out / "clips" / name).is_file() for name in _files({"": entry}))


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
# reading


class CacheReader:
    """:class:`mbt.data.clip.ClipReader` over a prepared cache folder.

    A cache file that is missing, truncated (a full disk, an interrupted copy) or not what the
    index says raises a one-line :class:`MediaError` naming it, like a broken media file.
    """

    def __init__(self, folder: Path, entries: dict[str, dict[str, Any]]) -> None:
        self.folder = folder
        self.entries = entries

    def video_info(self, clip: Clip) -> tuple[float, float]:
        e = self.entries[clip.key]
        return e["duration"], e["source_fps"]

    def frames(self, clip: Clip, times: Sequence[float]) -> torch.Tensor:
        e = self.entries[clip.key]
        # The frame nearest to each time (ties to the earlier one), as read_frames picks.
        fps, n = e["fps"], e["num_frames"]
        idx = [min(n - 1, max(0, math.ceil(t * fps - 0.5))) for t in times]
        path = self.folder / "clips" / e["frames"]
        if e["frames"].endswith(".jpgs"):
            try:
                return torch.from_numpy(read_jpegs(path, idx))  # (T, H, W, 3)
            except OSError as err:  # unreadable file, or a corrupt JPEG in it
                raise MediaError(f"{path}: cannot read cached frames ({err})") from err
        frames = _load_npy(path, mmap=True)  # (N, H, W, 3)
        if len(frames) < n:
            raise MediaError(f"{path}: {len(frames)} frames, the index says {n}")
        return torch.from_numpy(frames[idx].copy())  # (T, H, W, 3)

    def audio_frames(self, clip: Clip) -> int:
        path = self.folder / "clips" / self.entries[clip.key]["fbank"]
        return len(_load_npy(path, mmap=True))  # N_a, from the npy header

    def fbank(self, clip: Clip, start: int, count: int) -> torch.Tensor:
        path = self.folder / "clips" / self.entries[clip.key]["fbank"]
        rows = _load_npy(path, mmap=True)[start : start + count]  # (<= count, F) float16
        return torch.from_numpy(rows.astype(np.float32))


def _load_npy(path: Path, mmap: bool = False) -> np.ndarray:
    """``np.load``; a missing, truncated or foreign file is a :class:`MediaError`."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None)
    except (OSError, ValueError, EOFError) as err:  # ValueError / EOFError: truncated
        raise MediaError(f"{path}: cannot read the cache file ({err})") from err


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
        data = _open_index(folder, model_cfg, data_cfg)
        if split not in data["splits"]:
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        entries = data["clips"]
        clips = [_clip(key, entries[key]) for key in data["splits"][split]]
        super().__init__(
            clips, data["classes"], model_cfg, data_cfg, train=train,
            multi_label=data["multi_label"], views=views, crops=crops, seed=seed,
            on_error=on_error, reader=CacheReader(folder, entries),
        )  # fmt: skip


def _open_index(folder: Path, model_cfg: ModelConfig, data_cfg: DataConfig) -> dict[str, Any]:
    """The cache's index, refused (ValueError) if it was built for other inputs."""
    data = _load_index(folder / "index.json")
    gone = [k for k in ("settings", "classes", "multi_label", "splits", "clips") if k not in data]
    if gone:
        raise ValueError(f"{folder / 'index.json'}: not a cache index (no {', '.join(gone)})")
    settings = data["settings"]
    if settings.get("version") != CACHE_VERSION:
        raise ValueError(f"{folder}: cache version {settings.get('version')}, re-run prepare")
    want = {
        "short_side": resolve_short_side(model_cfg, data_cfg),
        "mel_bins": model_cfg.mel_bins,
    }
    for name, value in want.items():
        if settings.get(name) != value:
            raise ValueError(
                f"{folder}: cache built with {name}={settings.get(name)}, the config needs "
                f"{value}; re-run `mbt prepare` with this config"
            )
    return data


def _clip(key: str, e: dict[str, Any]) -> Clip:
    """The :class:`Clip` of an index entry."""
    return Clip(
        video=Path(e["video"]) if e["video"] else None,
        audio=Path(e["audio"]) if e["audio"] else None,
        labels=tuple(e["labels"]),
        key=key,
        group=e["group"],
        has_audio=e["has_audio"],
    )


def open_dataset(
    data_cfg: DataConfig,
    model_cfg: ModelConfig,
    split: str,
    *,
    train: bool,
    views: int = 1,
    crops: int | None = None,
    seed: int = 0,
    on_error: Literal["raise", "skip"] = "raise",
    index: DataIndex | None = None,
) -> AVDataset:
    """The ``split`` of the configured data set: from ``data_cfg.cache`` if set, else decoded
    from the media under ``data_cfg.root`` (pass ``index`` to reuse one scan for all splits)."""
    if data_cfg.cache:
        return CachedDataset(
            data_cfg.cache, split, model_cfg, data_cfg, train=train, views=views, crops=crops,
            seed=seed, on_error=on_error,
        )  # fmt: skip
    index = index if index is not None else _scan(None, data_cfg, model_cfg)
    return AVDataset(
        index.split(split), index.classes, model_cfg, data_cfg, train=train,
        multi_label=index.multi_label, views=views, crops=crops, seed=seed, on_error=on_error,
    )  # fmt: skip
