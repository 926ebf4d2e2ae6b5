"""PJZUF-C101 (the seed's data set, and the demo): ``video/`` and ``audio/`` folders.

``video/[<Class>/]<stem>.mp4`` and ``audio/[<Class>/]<stem>.wav``. Audio and video are paired by
relative path (or, failing that, by a unique stem), never by listing order. The class is the
folder, or for a flat folder the ``<Class>`` of a UCF-style stem ``v_<Class>_g<gg>_c<cc>``
(whose ``g<gg>`` is the clip's group). A video without a wav uses its own audio track if it has
one; a wav without a video is reported, and becomes an audio-only clip with
``scan(require_video=False)``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

from mbt.data.layouts.base import (
    AUDIO_EXTS,
    VIDEO_EXTS,
    Candidate,
    Found,
    Source,
    canonicalise,
    media_files,
    rel_key,
    ucf_group,
)
from mbt.data.layouts.report import ScanReport

NAME = "pjzuf"
LAYOUT = "pjzuf"
DESCRIPTION = "video/ and audio/ folders (pjzuf)"

Pair = tuple[str, Path | None, Path | None]  # (key, video, audio)


def detect(source: Source) -> bool:
    """A ``video/`` folder in the root."""
    return (source.root / "video").is_dir()


def gather(source: Source, report: ScanReport) -> Found:
    """Pair the files, name their classes (see the module docstring)."""
    root = source.root
    if not (root / "video").is_dir():
        raise ValueError(f"{root}: layout pjzuf needs a video/ folder")
    vdir, adir = root / "video", root / "audio"
    videos = {rel_key(p, vdir): p for p in media_files(vdir, VIDEO_EXTS)}
    audios = {rel_key(p, adir): p for p in media_files(adir, AUDIO_EXTS)} if adir.is_dir() else {}
    pairs = _pair(videos, audios, report, source.require_video)
    cands, unlabelled = [], []
    for key, vpath, apath in pairs:
        cand = _labelled(key, vpath, apath)
        if cand is None:
            unlabelled.append(str(vpath or apath))
        else:
            cands.append(cand)
    if unlabelled:
        report.notes.append(
            f"{len(unlabelled)} file(s) with no class (neither a class folder nor a "
            f"v_<Class>_gXX_cYY name) ignored, e.g. {unlabelled[0]}"
        )
    return Found(cands, canonicalise(cands))


def _pair(
    videos: dict[str, Path], audios: dict[str, Path], report: ScanReport, require_video: bool
) -> list[Pair]:
    """Pair by relative key (Class/stem); fall back to the stem when it is unique on both sides
    (e.g. foldered videos with flat audio). Never by position in a listing."""
    audio_by_stem: dict[str, list[str]] = defaultdict(list)
    for k in audios:
        audio_by_stem[k.rsplit("/", 1)[-1]].append(k)
    video_stems = Counter(k.rsplit("/", 1)[-1] for k in videos)
    used: set[str] = set()
    pairs: list[Pair] = []
    for key, vpath in sorted(videos.items()):
        stem = key.rsplit("/", 1)[-1]
        akey = key if key in audios else None
        if akey is None and len(audio_by_stem[stem]) == 1 and video_stems[stem] == 1:
            akey = audio_by_stem[stem][0]
        if akey is not None:
            used.add(akey)
        else:
            report.unpaired_video.append(str(vpath))
        pairs.append((key, vpath, audios[akey] if akey else None))
    for akey in sorted(set(audios) - used):
        report.unpaired_audio.append(str(audios[akey]))
        if not require_video:
            pairs.append((akey, None, audios[akey]))
    return pairs


def _labelled(key: str, video: Path | None, audio: Path | None) -> Candidate | None:
    """The candidate with its class (folder, else UCF-style stem) and group; None if neither."""
    parts = key.split("/")
    ucf = ucf_group(parts[-1])
    if len(parts) > 1:
        name = parts[0]
    elif ucf is not None:
        name = ucf[0]
    else:
        return None
    # Groups are global group numbers ("g07"), as the official UCF101 splits use them.
    return Candidate(video, audio, (name,), key, group=ucf[1] if ucf else None)
