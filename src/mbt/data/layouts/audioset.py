"""AudioSet segment CSVs: ``# Segments csv`` comment lines, then
``YTID, start_seconds, end_seconds, "mid1,mid2,..."`` rows.

The classes are ``class_labels_indices.csv`` (``index,mid,display_name``), next to the CSV, in
the root or in ``<root>/metadata/``: ids in its ``index`` order (the official order, not
re-sorted), names its ``display_name``. Every row is multi-label (``data.multi_label=true`` is
required) and has no declared split (validation is held out of it as usual). A segment's file
is looked up by stem anywhere below the root (two folders deep): the VGGSound stems (see
:mod:`mbt.data.layouts.vggsound`, with the row's own end time) and ``<ytid>`` alone; a video
file, or an audio file alone (an audio-only clip, kept with ``scan(require_video=False)``;
a wav with the same stem as a video is its sound). Rows without a file are counted and
skipped.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

from mbt.data.layouts.base import (
    AUDIO_EXTS,
    VIDEO_EXTS,
    Candidate,
    Found,
    Source,
    is_number,
    note_missing,
    stem_index,
    youtube_key,
    youtube_stems,
)
from mbt.data.layouts.report import ScanReport

NAME = "csv (AudioSet segments)"
LAYOUT = "csv"
DESCRIPTION = "an AudioSet segment CSV 'YTID, start_seconds, end_seconds, \"mids\"'"
CLASSES_FILE = "class_labels_indices.csv"


def detect(source: Source) -> bool:
    """Its ``# Segments csv`` comment, or a first data row shaped ``YTID, start, end, "mids"``
    (two numbers, then quoted or /m/-style MIDs)."""
    assert source.table is not None
    lines = source.table.lines
    if any(ln.lstrip().lower().startswith("# segments csv") for ln in lines[:5]):
        return True
    data = [ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not data:
        return False
    row = next(csv.reader(data[:1], skipinitialspace=True))
    return (
        len(row) == 4
        and is_number(row[1])
        and is_number(row[2])
        and all(m.strip().startswith("/") for m in row[3].split(","))
    )


def gather(source: Source, report: ScanReport) -> Found:
    """One candidate per segment with a video or audio file."""
    assert source.table is not None
    manifest, root = source.table.path, source.files_root
    classes_file = _find_classes(manifest, root)
    by_mid = read_class_indices(classes_file)
    videos, audios = stem_index(root, VIDEO_EXTS), stem_index(root, AUDIO_EXTS)
    cands, rows = [], 0
    for lineno, line in enumerate(source.table.lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        rows += 1
        ytid, start, end, names = _parse_row(line, f"{manifest}:{lineno}", by_mid, classes_file)
        stems = youtube_stems(ytid, start, end, bare=True)
        video = next((p for n in stems for p in videos.get(n, [])), None)
        audio = next((p for n in stems for p in audios.get(n, [])), None)
        key = youtube_key(ytid, start)
        if video is None and audio is None:
            report.missing.append(key)
            continue
        cands.append(Candidate(video, audio, names, key))
    if rows == 0:
        raise ValueError(f"{manifest}: no segment rows")
    note_missing(report, rows)
    classes = [name for _, name in sorted(by_mid.values())]
    report.notes.append(f"classes: {classes_file} ({len(classes)}, official index order)")
    if not source.cfg.multi_label:
        raise ValueError(
            f"{manifest}: an AudioSet segment CSV is multi-label; set data.multi_label=true"
        )
    return Found(cands, classes)


def _parse_row(
    line: str, where: str, by_mid: dict[str, tuple[int, str]], classes_file: Path
) -> tuple[str, float, float, tuple[str, ...]]:
    """(ytid, start, end, class names) of one segment row."""
    row = next(csv.reader([line], skipinitialspace=True))
    if len(row) != 4 or not is_number(row[1]) or not is_number(row[2]):
        raise ValueError(f"{where}: expected 'YTID, start, end, \"mids\"', got {row}")
    mids = [m.strip() for m in row[3].split(",") if m.strip()]
    unknown = [m for m in mids if m not in by_mid]
    if not mids or unknown:
        raise ValueError(f"{where}: label(s) {unknown or row[3]!r} not in {classes_file}")
    names = tuple(dict.fromkeys(by_mid[m][1] for m in mids))
    return row[0].strip(), float(row[1]), float(row[2]), names


def _find_classes(manifest: Path, root: Path) -> Path:
    for folder in dict.fromkeys((manifest.parent, root, root / "metadata")):
        if (folder / CLASSES_FILE).is_file():
            return folder / CLASSES_FILE
    raise ValueError(
        f"{manifest}: AudioSet segment CSV without {CLASSES_FILE} (index,mid,display_name) "
        f"next to it or in {root}"
    )


def read_class_indices(path: Path) -> dict[str, tuple[int, str]]:
    """mid -> (index, display_name) from ``class_labels_indices.csv`` (with its header)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f, skipinitialspace=True) if r and any(r)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{path}: cannot read the class list ({e})") from None
    if rows and not rows[0][0].strip().isdigit():
        rows = rows[1:]  # header: index,mid,display_name
    out: dict[str, tuple[int, str]] = {}
    for row in rows:
        if len(row) != 3 or not row[0].strip().isdigit():
            raise ValueError(f"{path}: expected rows 'index,mid,display_name', got {row}")
        out[row[1].strip()] = (int(row[0]), row[2].strip())
    indices = sorted(i for i, _ in out.values())
    if indices != list(range(len(out))):
        raise ValueError(f"{path}: indices must be 0..{len(out) - 1}, each once")
    names = [n for _, n in out.values()]
    if len(set(names)) != len(names):
        dup = sorted(n for n, k in Counter(names).items() if k > 1)
        raise ValueError(f"{path}: display names must be unique, {dup} repeat")
    return out
