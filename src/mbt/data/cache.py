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
from mbt.data.audio import FBANK_RATE, load_audio, log_mel
from mbt.data.clip import resolve_short_side
from mbt.data.dataset import AVDataset
from mbt.data.layouts import Clip, DataIndex, scan
from mbt.data.video import MediaError, probe_video, read_frames

CACHE_VERSION = 1
JPEG_MAGIC = b"MBTJPG1\0"  # then uint32 count, (count + 1) int64 offsets, the JPEG bytes
INDEX_FLUSH_S = 30.0  # rewrite index.json at least this often during a long run

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
        entry.update(
            duration=info.duration, source_fps=info.fps, fps=fps, num_frames=n,
            height=int(frames.shape[1]), width=int(frames.shape[2]), frames=name,
        )  # fmt: skip
    if job.has_audio:
        wav = load_audio(job.audio or job.video)  # (N,) 16 kHz mono
        fbank = log_mel(wav, num_mel_bins=job.mel_bins).numpy().astype(np.float16)  # (N_a, F)
        entry["fbank"] = _write_atomic(job.frames_path + ".fbank.npy", _npy_bytes(fbank))
        entry["audio_frames"] = int(len(fbank))
        if job.video is None:
            entry["duration"] = len(fbank) / FBANK_RATE
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
    """Frames ``indices`` of a ``.jpgs`` file as uint8 (T, H, W, 3); only those are decoded."""
    with open(path, "rb") as f:
        head = f.read(len(JPEG_MAGIC) + 4)
        if head[: len(JPEG_MAGIC)] != JPEG_MAGIC:
            raise MediaError(f"{path}: not a frame cache file")
        (count,) = struct.unpack("<I", head[len(JPEG_MAGIC) :])
        offsets = np.frombuffer(f.read(8 * (count + 1)), dtype="<i8")
        base = f.tell()
        out = []
        for i in indices:
            f.seek(base + int(offsets[i]))
            data = f.read(int(offsets[i + 1] - offsets[i]))
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
    def __init__(self, ctx: Any, fn: Callable[[Any], Any]) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, fn), daemon=True)
        self.process.start()
        child.close()
        self.job: Any = None
        self.started = 0.0

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()


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
    methods = mp.get_all_start_methods()
    ctx = mp.get_context("fork" if "fork" in methods else "spawn")
    pending = deque(jobs)
    pool = [_Worker(ctx, fn) for _ in range(max(1, min(workers, len(pending))))]
    try:
        while pending or any(w.job is not None for w in pool):
            for w in pool:
                if w.job is None and pending:
                    w.job, w.started = pending.popleft(), time.monotonic()
                    w.conn.send(w.job)
            busy = [w for w in pool if w.job is not None]
            deadline = min(w.started for w in busy) + timeout
            ready = wait(
                [w.conn for w in busy] + [w.process.sentinel for w in busy],
                timeout=max(0.0, deadline - time.monotonic()),
            )
            for i, w in enumerate(pool):
                if w.job is None:
                    continue
                status = value = None
                if w.conn in ready or w.process.sentinel in ready:
                    try:
                        if w.conn.poll():
                            status, value = w.conn.recv()
                    except (EOFError, OSError):
                        pass
                    if status is None and not w.process.is_alive():
                        status, value = "error", f"decoder crashed (exit code {w.process.exitcode})"
                hung = status is None and time.monotonic() - w.started > timeout
                if hung:
                    status, value = "error", f"timed out after {timeout:g} s (decoder killed)"
                if status is None:
                    continue
                job, w.job = w.job, None
                if hung or not w.process.is_alive():
                    w.kill()
                    pool[i] = _Worker(ctx, fn)
                on_done(job, status, value)
    finally:
        for w in pool:
            if w.process.is_alive():
                try:
                    w.conn.send(None)
                except OSError:
                    pass
                w.process.join(timeout=1.0)
            if w.process.is_alive():
                w.kill()


# ---------------------------------------------------------------------------------------------
# prepare


def _file_stamp(path: Path | None) -> list[int] | None:
    if path is None:
        return None
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _safe_name(key: str) -> str:
    """File name for a clip key: readable, unique (a hash of the key), no folders."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", key)[-80:]
    return f"{readable}-{zlib.crc32(key.encode()):08x}"


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
        progress: Print the scan report and a progress bar.
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
    if frame_format == "jpeg" and Image is None:
        frame_format = "npy"
    if frame_format not in ("jpeg", "npy"):
        raise ValueError(f"frame_format must be 'jpeg' or 'npy', got {frame_format!r}")
    if max_fps <= 0:
        raise ValueError(f"max_fps must be > 0, got {max_fps}")
    modalities = model_cfg.modalities
    if index is None:
        index = scan(
            root, cfg, require_video="video" in modalities, need_audio="audio" in modalities
        )
    if progress:
        print(index.report.format())
    (out / "clips").mkdir(parents=True, exist_ok=True)
    settings = {
        "version": CACHE_VERSION,
        "short_side": resolve_short_side(model_cfg, cfg),
        "max_fps": max_fps,
        "mel_bins": model_cfg.mel_bins,
        "frame_format": frame_format,
        "jpeg_quality": jpeg_quality if frame_format == "jpeg" else None,
    }
    old = _load_index(out / "index.json", quiet=True)
    same_settings = old is not None and old.get("settings") == settings
    old_clips = old.get("clips", {}) if same_settings else {}
    old_failed = old.get("failed", {}) if same_settings else {}

    all_clips = {c.key: c for split in ("train", "val", "test") for c in index.split(split)}
    entries: dict[str, dict[str, Any]] = {}
    failed: dict[str, dict[str, Any]] = {}
    jobs = []
    report = PrepareReport(out=str(out), scan=index.report.format())
    for key, clip in sorted(all_clips.items()):
        src = {"video": _file_stamp(clip.video), "audio": _file_stamp(clip.audio)}
        prev = old_clips.get(key)
        if prev is not None and prev["src"] == src and _files_exist(out, prev):
            # Labels and groups come from this scan: class ids shift when classes change.
            entries[key] = {**prev, **_clip_entry(clip, {}, src)}
            report.reused += 1
            continue
        prev_fail = old_failed.get(key)
        if prev_fail is not None and prev_fail["src"] == src and not retry_failed:
            failed[key] = prev_fail
            continue
        jobs.append(
            _Job(
                key=key, video=str(clip.video) if clip.video else None,
                audio=str(clip.audio) if clip.audio else None, has_audio=clip.has_audio,
                frames_path=str(out / "clips" / _safe_name(key)), short_side=settings["short_side"],
                max_fps=max_fps, mel_bins=model_cfg.mel_bins, frame_format=frame_format,
                jpeg_quality=jpeg_quality,
            )
        )  # fmt: skip

    def write_index() -> None:
        data = {
            "settings": settings,
            "classes": index.classes,
            "multi_label": index.multi_label,
            "splits": {
                s: [c.key for c in index.split(s) if c.key in entries]
                for s in ("train", "val", "test")
            },
            "clips": entries,
            "failed": failed,
        }
        _write_atomic(out / "index.json", json.dumps(data, indent=1).encode())

    bar = None
    if progress and jobs:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="prepare", unit="clip")
    last_flush = time.monotonic()

    def on_done(job: _Job, status: str, value: Any) -> None:
        nonlocal last_flush
        clip = all_clips[job.key]
        src = {"video": _file_stamp(clip.video), "audio": _file_stamp(clip.audio)}
        if status == "ok":
            entries[job.key] = _clip_entry(clip, value, src)
            report.processed += 1
        else:
            failed[job.key] = {"file": str(clip.video or clip.audio), "reason": value, "src": src}
        if bar is not None:
            bar.update(1)
        if time.monotonic() - last_flush > INDEX_FLUSH_S:
            write_index()
            last_flush = time.monotonic()

    try:
        if jobs:
            run_jobs(jobs, decode, on_done, workers=workers, timeout=timeout)
    finally:
        if bar is not None:
            bar.close()
        write_index()
    _remove_stale(out, entries)
    report.clips = len(entries)
    report.failed = [(f["file"], f["reason"]) for _, f in sorted(failed.items())]
    report.bytes = sum(
        (out / "clips" / e[k]).stat().st_size for e in entries.values() for k in ("frames", "fbank")
        if k in e
    )  # fmt: skip
    report.seconds = time.monotonic() - start
    if progress:
        print(report.format())
    return report


def _clip_entry(clip: Clip, result: dict[str, Any], src: dict[str, Any]) -> dict[str, Any]:
    return {
        "video": str(clip.video) if clip.video else None,
        "audio": str(clip.audio) if clip.audio else None,
        "labels": list(clip.labels),
        "group": clip.group,
        "src": src,
        **result,
    }


def _files_exist(out: Path, entry: dict[str, Any]) -> bool:
    return all((out / "clips" / entry[k]).is_file() for k in ("frames", "fbank") if k in entry)


def _remove_stale(out: Path, entries: dict[str, dict[str, Any]]) -> None:
    """Delete clip files no index entry points to (left by changed settings or removed clips)."""
    keep = {e[k] for e in entries.values() for k in ("frames", "fbank") if k in e}
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
    """:class:`mbt.data.dataset.ClipReader` over a prepared cache folder."""

    def __init__(self, folder: Path, entries: dict[str, dict[str, Any]], frame_format: str):
        self.folder = folder
        self.entries = entries
        self.frame_format = frame_format

    def _entry(self, clip: Clip) -> dict[str, Any]:
        return self.entries[clip.key]

    def video_info(self, clip: Clip) -> tuple[float, float]:
        e = self._entry(clip)
        return e["duration"], e["source_fps"]

    def frames(self, clip: Clip, times: Sequence[float]) -> torch.Tensor:
        e = self._entry(clip)
        # The frame nearest to each time (ties to the earlier one), as read_frames picks.
        fps, n = e["fps"], e["num_frames"]
        idx = [min(n - 1, max(0, math.ceil(t * fps - 0.5))) for t in times]
        path = self.folder / "clips" / e["frames"]
        try:
            if e["frames"].endswith(".jpgs"):
                return torch.from_numpy(read_jpegs(path, idx))  # (T, H, W, 3)
            return torch.from_numpy(np.load(path, mmap_mode="r")[idx].copy())
        except (OSError, ValueError) as err:
            raise MediaError(f"{path}: cannot read cached frames ({err})") from err

    def fbank(self, clip: Clip) -> torch.Tensor:
        path = self.folder / "clips" / self._entry(clip)["fbank"]
        try:
            return torch.from_numpy(np.load(path).astype(np.float32))  # (N_a, F)
        except (OSError, ValueError) as err:
            raise MediaError(f"{path}: cannot read cached log-mel ({err})") from err


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
        data = _load_index(folder / "index.json")
        settings = data.get("settings", {})
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
        if split not in data["splits"]:
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        entries = data["clips"]
        clips = [
            Clip(
                video=Path(e["video"]) if e["video"] else None,
                audio=Path(e["audio"]) if e["audio"] else None,
                labels=tuple(e["labels"]),
                key=key,
                group=e["group"],
                has_audio=e["has_audio"],
            )
            for key in data["splits"][split]
            for e in (entries[key],)
        ]
        self.failed = data.get("failed", {})
        super().__init__(
            clips, data["classes"], model_cfg, data_cfg, train=train,
            multi_label=data["multi_label"], views=views, crops=crops, seed=seed,
            on_error=on_error,
            reader=CacheReader(folder, entries, settings["frame_format"]),
        )  # fmt: skip


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
    if index is None:
        modalities = model_cfg.modalities
        index = scan(
            None, data_cfg, require_video="video" in modalities, need_audio="audio" in modalities
        )
    return AVDataset(
        index.split(split), index.classes, model_cfg, data_cfg, train=train,
        multi_label=index.multi_label, views=views, crops=crops, seed=seed, on_error=on_error,
    )  # fmt: skip
