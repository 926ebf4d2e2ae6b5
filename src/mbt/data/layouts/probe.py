"""Probe every file of the candidate clips: leave out unreadable ones, find which have sound.

Probing reads headers only (a thread pool for large data sets). An unreadable video drops its
clip; an unreadable audio file falls back to the video's own track. Clips without any sound
then follow ``data.missing_audio`` (or ``data.require_audio``); classes none of whose clips has
sound are listed in ``report.silent_classes``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av

from mbt.config import DataConfig
from mbt.data.layouts.base import Candidate, class_sort
from mbt.data.layouts.report import ScanReport
from mbt.data.video import MediaError, header_has_audio, open_media

PROBE_BYTES = 65536  # header probe of audio files
POOL_THRESHOLD = 32  # probe serially below this many files (the demo): a pool costs more
MAX_WORKERS = 8

Probed = tuple[str | None, str | None, bool]  # (video error, audio-file error, video has a track)


def probe_and_filter(
    cands: list[Candidate],
    report: ScanReport,
    cfg: DataConfig,
    need_audio: bool,
    workers: int | None,
) -> list[Candidate]:
    """Probe every file; drop unreadable clips; apply require_audio and missing_audio."""
    kept = []
    for c, (verr, aerr, track) in zip(cands, _probe_all(cands, workers), strict=True):
        if verr is not None:
            report.unreadable.append((str(c.video), verr))
            continue
        if aerr is not None:
            report.unreadable.append((str(c.audio), aerr))
            if c.video is None:
                continue
            c.audio = None  # fall back to the video's own track, if any
        c.has_audio = c.audio is not None or track
        kept.append(c)
    without = [c for c in kept if not c.has_audio]
    report.no_audio = [str(c.video) for c in without]
    with_sound = {n for c in kept if c.has_audio for n in c.names}
    report.silent_classes = class_sort({n for c in without for n in c.names} - with_sound)
    if cfg.require_audio:
        return [c for c in kept if c.has_audio]
    if not need_audio or not without:
        return kept
    if cfg.missing_audio == "error":
        raise ValueError(
            f"{without[0].video}: no audio (no audio file and no audio track; {len(without)} "
            "clip(s) in all); set data.missing_audio=skip or silence"
        )
    if cfg.missing_audio == "skip":
        return [c for c in kept if c.has_audio]
    return kept


def _probe_all(cands: list[Candidate], workers: int | None) -> list[Probed]:
    if len(cands) < POOL_THRESHOLD:
        return [_probe(c) for c in cands]
    n = workers or min(MAX_WORKERS, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(_probe, cands, chunksize=16))


def _probe(c: Candidate) -> Probed:
    """(video error, audio-file error, video has an audio track) of one candidate."""
    verr = aerr = None
    track = False
    if c.video is not None:
        try:
            track = header_has_audio(c.video)
        except (MediaError, av.FFmpegError, OSError) as e:
            verr = str(e).removeprefix(f"{c.video}: ")
    if c.audio is not None:
        try:
            probe_audio_file(c.audio)
        except (MediaError, av.FFmpegError, OSError) as e:
            aerr = str(e).removeprefix(f"{c.audio}: ")
    return verr, aerr, track


def probe_audio_file(path: Path) -> None:
    """Raise :class:`MediaError` unless ``path`` opens and holds an audio stream.

    A small probe size keeps this a header read: FFmpeg's default (5 MB) decodes ~60 ms of a
    44.1 kHz wav just to confirm what its header says.
    """
    p = Path(path)
    if not p.is_file() or p.stat().st_size == 0:
        return open_media(p).close()  # raises the usual one-line MediaError
    try:
        container = av.open(str(p), "r", options={"probesize": str(PROBE_BYTES)})
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise MediaError(f"{path}: not a readable media file ({e})") from e
    try:
        if not container.streams.audio:
            raise MediaError(f"{path}: no audio stream")
    finally:
        container.close()
