"""What every data set format shares: the clip records, the format contract, file listing,
class-name order, and the file names of downloaded YouTube segments (VGGSound, AudioSet)."""

from __future__ import annotations

import csv
import os
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np

from mbt.config import DataConfig
from mbt.data.layouts.report import ScanReport

VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg")
AUDIO_EXTS = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".opus", ".aac")
UCF_STEM = re.compile(r"^v_(?P<cls>[^_]+)_g(?P<group>\d+)_c(?P<clip>\d+)$")
SPLIT_NAMES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "eval": "test", "evaluation": "test",
}  # fmt: skip


@dataclass(frozen=True)
class Clip:
    """One labelled clip: where its picture and sound are, and how to keep it apart."""

    video: Path | None  # None: audio-only clip (only with scan(require_video=False))
    audio: Path | None  # separate audio file; None = the video's own track, if it has one
    labels: tuple[int, ...]  # class ids; one entry unless multi-label
    key: str  # stable id, e.g. "Class/v_Class_g01_c01" (relative path without extension)
    group: str | None = None  # clips of one group never straddle train and val (UCF "g07")
    has_audio: bool = True  # an audio file or track exists; False only with missing_audio=silence


@dataclass
class DataIndex:
    """The clips of a data set split three ways, with their class names and the scan report."""

    classes: list[str]
    train: list[Clip]
    val: list[Clip]
    test: list[Clip]  # may be empty
    multi_label: bool
    report: ScanReport
    source_ids: dict[str, int] | None = None  # classes dropped: class -> id before the remap

    def split(self, name: str) -> list[Clip]:
        """The clips of ``"train"``, ``"val"`` or ``"test"``."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {name!r}")
        return getattr(self, name)


# ---------------------------------------------------------------------------------------------
# the format contract


@dataclass
class Candidate:
    """A clip before probing: files, class names (not ids yet), group and declared split."""

    video: Path | None
    audio: Path | None
    names: tuple[str, ...]
    key: str
    group: str | None = None
    split: str | None = None  # "train" / "val" / "test" when the data set says
    has_audio: bool = True  # set by probing


class Found(NamedTuple):
    """What a format's ``gather`` returns: the candidates and the class names in id order."""

    candidates: list[Candidate]
    classes: list[str]


@dataclass(frozen=True)
class Table:
    """A CSV file read once: its raw lines (for formats with comment lines) and its rows."""

    path: Path
    lines: list[str]
    rows: list[list[str]]  # csv-parsed, rows without any non-blank cell dropped


@dataclass(frozen=True)
class Source:
    """What :func:`mbt.data.layouts.scan` was asked to read."""

    root: Path  # the data set folder (or the manifest itself, when given as the root)
    cfg: DataConfig
    require_video: bool
    table: Table | None = None  # the manifest, for the CSV formats

    @property
    def files_root(self) -> Path:
        """Where the files named by stem only (YouTube segments) are looked for."""
        if self.root.is_dir() or self.table is None:
            return self.root
        return self.table.path.parent


class Format(Protocol):
    """A data set format: a module with these names, listed in ``layouts.FORMATS``."""

    NAME: str  # ScanReport.layout, e.g. "pjzuf"
    LAYOUT: str  # the data.layout value that selects it: its NAME, or "csv" for a table format
    DESCRIPTION: str  # what it looks like, for "cannot tell the layout" errors

    def detect(self, source: Source) -> bool:
        """Whether ``source`` looks like this format (``data.layout=auto``)."""
        ...

    def gather(self, source: Source, report: ScanReport) -> Found:
        """The candidate clips and the class names; missing files and notes go to ``report``.

        Raises:
            ValueError: naming the file and line that cannot be read.
        """
        ...


def read_table(path: Path) -> Table:
    """Read a CSV manifest (UTF-8, a byte order mark allowed)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
        rows = [r for r in csv.reader(lines) if r and any(x.strip() for x in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{path}: cannot read the manifest ({e})") from None
    if not rows:
        raise ValueError(f"{path}: empty manifest")
    return Table(path, lines, rows)


# ---------------------------------------------------------------------------------------------
# files and names


def media_files(folder: Path, exts: tuple[str, ...], max_depth: int | None = None) -> list[Path]:
    """Files below ``folder`` with one of ``exts`` (case-insensitive), sorted; no hidden files."""
    out = []
    base = len(folder.parts)
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if max_depth is not None and len(Path(dirpath).parts) - base >= max_depth:
            dirnames[:] = []
        for f in filenames:
            if not f.startswith(".") and f.lower().endswith(exts):
                out.append(Path(dirpath) / f)
    return sorted(out)


def rel_key(path: Path, base: Path) -> str:
    """The clip key of a file: its path below ``base`` without the extension."""
    return path.relative_to(base).with_suffix("").as_posix()


def class_sort(names: Iterable[str]) -> list[str]:
    """Sorted class names: case-insensitive, then case-sensitive to break ties. Names that are
    all whole numbers (class folders ``0``..``100``) sort by value, so folder ``k`` is id ``k``
    (``"10"`` after ``"9"``, not after ``"1"``)."""
    unique = set(names)
    if unique and all(n.strip().isdecimal() for n in unique):
        return sorted(unique, key=lambda s: (int(s), s))
    return sorted(unique, key=lambda s: (s.lower(), s))


def canonical(names: Iterable[str]) -> dict[str, str]:
    """Map each spelling to one spelling per case-insensitive name (the first in sort order)."""
    out: dict[str, str] = {}
    first: dict[str, str] = {}
    for n in class_sort(names):
        out[n] = first.setdefault(n.lower(), n)
    return out


def canonicalise(cands: list[Candidate], report: ScanReport | None = None) -> list[str]:
    """Give every candidate one spelling per class name; returns the sorted class list.

    Class folders whose names differ only in case (UCF101's ``HandstandPushups`` holds
    ``v_HandStandPushups_*`` files; a copy may have both folders) are one class; each such
    merge is listed in ``report.merged_classes`` as ``"Kept = Other"``.
    """
    canon = canonical(n for c in cands for n in c.names)
    for c in cands:
        c.names = tuple(canon[n] for n in c.names)
    if report is not None:
        report.merged_classes += [f"{kept} = {n}" for n, kept in canon.items() if n != kept]
    return class_sort(canon.values())


def ucf_group(stem: str) -> tuple[str, str] | None:
    """(class, group) of a UCF-style stem ``v_<Class>_g<gg>_c<cc>``; groups are ``g<gg>``."""
    m = UCF_STEM.match(stem)
    return (m["cls"], f"g{int(m['group']):02d}") if m else None


def is_number(value: str) -> bool:
    """Whether a CSV cell holds a finite number."""
    try:
        return bool(np.isfinite(float(value.strip())))
    except ValueError:
        return False


def parse_split(value: str, where: str) -> str | None:
    """``"train"`` / ``"val"`` / ``"test"`` for a split cell (None if empty)."""
    v = value.strip().lower()
    if not v:
        return None
    if v not in SPLIT_NAMES:
        raise ValueError(f"{where}: split {value!r} is not one of {sorted(set(SPLIT_NAMES))}")
    return SPLIT_NAMES[v]


# ---------------------------------------------------------------------------------------------
# downloaded YouTube segments (VGGSound, AudioSet)


def youtube_stems(ytid: str, start: float, end: float, *, bare: bool) -> list[str]:
    """File stems a downloaded YouTube segment may have (VGGSound and AudioSet)."""
    ms, end_ms = round(start * 1000), round(end * 1000)
    names = []
    if start == int(start):
        names += [f"{ytid}_{int(start):06d}", f"{ytid}_{int(start)}"]
    names += [
        f"{ytid}_{start:.1f}", f"{ytid}_{start:.3f}", f"{ytid}_{ms}", f"{ytid}_{ms}_{end_ms}",
        f"{ytid}_{start:.3f}_{end:.3f}",
    ]  # fmt: skip
    if bare:
        names.append(ytid)
    return list(dict.fromkeys(names))


def youtube_key(ytid: str, start: float) -> str:
    """The clip key: ``<ytid>_<start:06d>`` (``<ytid>_<start*1000>ms`` for a decimal start)."""
    return f"{ytid}_{int(start):06d}" if start == int(start) else f"{ytid}_{round(start * 1000)}ms"


def stem_index(root: Path, exts: tuple[str, ...]) -> dict[str, list[Path]]:
    """stem -> files with that stem and one of ``exts``, up to two folders below ``root``."""
    stems: dict[str, list[Path]] = defaultdict(list)
    for p in media_files(root, exts, max_depth=2):
        stems[p.stem].append(p)
    return stems


def note_missing(report: ScanReport, rows: int) -> None:
    """Add "k of n rows have no file" to the report's notes (if any row has none)."""
    if report.missing:
        share = 100 * len(report.missing) / max(1, rows)
        report.notes.append(f"{len(report.missing)} of {rows} rows ({share:.0f} %) have no file")
