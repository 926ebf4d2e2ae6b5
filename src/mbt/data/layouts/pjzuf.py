"""PJZUF-C101 (the seed's data set, and the demo): ``video/`` and ``audio/`` folders.

The layouts found in copies of the data set::

    video/[<Class>/]<stem>.mp4            audio/[<Class>/]<stem>.wav
    video/<split>/[<Class>/]<stem>.mp4    audio/<split>/[<Class>/]<stem>.wav   (or audio/...)
    <split>/video/[<Class>/]<stem>.mp4    <split>/audio/[<Class>/]<stem>.wav

``<split>`` folders (``train``, ``val``, ``test`` and their spellings in
:data:`~mbt.data.layouts.base.SPLIT_NAMES`) are the data set's own split, never classes: a
``video/`` whose subfolders all have split names is split that way. Audio and video are paired
by relative path (or, failing that, by a stem that is unique on both sides), never by listing
order. The class is the folder (names, or numbers ``0``..``100`` whose ids follow their value),
or for a flat folder the ``<Class>`` of a UCF-style stem ``v_<Class>_g<gg>_c<cc>`` (whose
``g<gg>`` is the clip's group). A video without a wav uses its own audio track if it has one;
a wav without a video is reported, and becomes an audio-only clip with
``scan(require_video=False)``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import NamedTuple

from mbt.data.layouts.base import (
    AUDIO_EXTS,
    SPLIT_NAMES,
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


class Part(NamedTuple):
    """One split folder of the data set (or the whole of it): where its files are."""

    split: str | None  # "train" / "val" / "test"; None: no split folder
    prefix: str  # the split folder's own name, prefixed to its clip keys ("" for none)
    video: Path
    audio: Path


def detect(source: Source) -> bool:
    """A ``video/`` folder in the root, or in split folders of the root."""
    return bool(parts(source.root))


def gather(source: Source, report: ScanReport) -> Found:
    """Pair the files of every part, name their classes (see the module docstring)."""
    found = parts(source.root)
    if not found:
        raise ValueError(f"{source.root}: layout pjzuf needs a video/ folder")
    audio_files = {p.audio: _files(p.audio, AUDIO_EXTS) for p in found}
    used: set[Path] = set()
    cands, unlabelled = [], []
    for part in found:
        videos = _files(part.video, VIDEO_EXTS)
        for key, vpath, apath in _pair(videos, audio_files[part.audio], report):
            if apath is not None:
                used.add(apath)
            cand = _labelled(key, vpath, apath, part)
            if cand is None:
                unlabelled.append(str(vpath))
            else:
                cands.append(cand)
    _unpaired_audio(audio_files, used, found, report, cands, source.require_video)
    if unlabelled:
        report.notes.append(
            f"{len(unlabelled)} file(s) with no class (neither a class folder nor a "
            f"v_<Class>_gXX_cYY name) ignored, e.g. {unlabelled[0]}"
        )
    if any(p.split for p in found):
        names = ", ".join(f"{p.prefix or '.'} -> {p.split}" for p in found)
        report.notes.append(f"split folders: {names}")
    return Found(cands, canonicalise(cands, report))


def parts(root: Path) -> list[Part]:
    """The parts of a PJZUF tree at ``root`` ([] when it is none)."""
    vdir, adir = root / "video", root / "audio"
    if vdir.is_dir():
        splits = _split_folders(vdir, every=True)
        if not splits:
            return [Part(None, "", vdir, adir)]
        return [
            Part(split, name, vdir / name, adir / name if (adir / name).is_dir() else adir)
            for name, split in splits
        ]
    return [
        Part(split, name, root / name / "video", root / name / "audio")
        for name, split in _split_folders(root, every=False)
        if (root / name / "video").is_dir()
    ]


def _split_folders(folder: Path, every: bool) -> list[tuple[str, str]]:
    """(folder name, split) of the subfolders named like a split; with ``every``, none unless
    every subfolder is (a class may not sit beside split folders)."""
    subs = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    named = [(n, SPLIT_NAMES[n.lower()]) for n in subs if n.lower() in SPLIT_NAMES]
    if every and len(named) != len(subs):
        return []
    return named


def _files(folder: Path, exts: tuple[str, ...]) -> dict[str, Path]:
    """Relative key (``Class/stem``) -> file, for the media files below ``folder``."""
    if not folder.is_dir():
        return {}
    return {rel_key(p, folder): p for p in media_files(folder, exts)}


def _pair(videos: dict[str, Path], audios: dict[str, Path], report: ScanReport) -> list[Pair]:
    """Pair by relative key (Class/stem); fall back to the stem when it is unique on both sides
    (e.g. foldered videos with flat audio). Never by position in a listing."""
    audio_by_stem: dict[str, list[str]] = defaultdict(list)
    for k in audios:
        audio_by_stem[k.rsplit("/", 1)[-1]].append(k)
    video_stems = Counter(k.rsplit("/", 1)[-1] for k in videos)
    pairs: list[Pair] = []
    for key, vpath in sorted(videos.items()):
        stem = key.rsplit("/", 1)[-1]
        akey = key if key in audios else None
        if akey is None and len(audio_by_stem[stem]) == 1 and video_stems[stem] == 1:
            akey = audio_by_stem[stem][0]
        if akey is None:
            report.unpaired_video.append(str(vpath))
        pairs.append((key, vpath, audios[akey] if akey else None))
    return pairs


def _unpaired_audio(
    audio_files: dict[Path, dict[str, Path]],
    used: set[Path],
    found: list[Part],
    report: ScanReport,
    cands: list[Candidate],
    require_video: bool,
) -> None:
    """Report the audio files no video took; without ``require_video`` they become clips."""
    part_of = {p.audio: p for p in found}
    for adir, files in audio_files.items():
        for akey, apath in sorted(files.items()):
            if apath in used:
                continue
            report.unpaired_audio.append(str(apath))
            if not require_video:
                cand = _labelled(akey, None, apath, part_of[adir])
                if cand is not None:
                    cands.append(cand)


def _labelled(key: str, video: Path | None, audio: Path | None, part: Part) -> Candidate | None:
    """The candidate with its class (folder, else UCF-style stem), group and split; None if
    it has no class."""
    names = key.split("/")
    ucf = ucf_group(names[-1])
    if len(names) > 1:
        name = names[0]
    elif ucf is not None:
        name = ucf[0]
    else:
        return None
    full_key = f"{part.prefix}/{key}" if part.prefix else key
    # Groups are global group numbers ("g07"), as the official UCF101 splits use them.
    group = ucf[1] if ucf else None
    return Candidate(video, audio, (name,), full_key, group=group, split=part.split)
