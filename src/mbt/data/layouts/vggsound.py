"""VGGSound's CSV: rows ``youtube_id,start_seconds,label,split`` (an optional header row).

Start times are integer or decimal seconds; every clip lasts 10 s. A clip's video is looked up
by stem anywhere below the root (two folders deep), with a video extension, preferring
``<root>/<split>/``: ``<ytid>_<start:06d>``, ``<ytid>_<start>``, ``<ytid>_<start:.1f>``,
``<ytid>_<start:.3f>``, ``<ytid>_<start*1000>``, ``<ytid>_<start*1000>_<end*1000>`` and
``<ytid>_<start:.3f>_<end:.3f>``. About 20 % of VGGSound is gone from YouTube: rows without a
file are counted and skipped, and class ids still count their labels.
"""

from __future__ import annotations

from mbt.data.layouts.base import (
    VIDEO_EXTS,
    Candidate,
    Found,
    Source,
    class_sort,
    is_number,
    note_missing,
    parse_split,
    stem_index,
    youtube_key,
    youtube_stems,
)
from mbt.data.layouts.report import ScanReport

NAME = "csv (VGGSound)"
LAYOUT = "csv"
DESCRIPTION = "VGGSound rows 'youtube_id,start_seconds,label,split'"
CLIP_SECONDS = 10.0


def detect(source: Source) -> bool:
    """Four columns, the second a number and the third not (after an optional header row)."""
    assert source.table is not None
    rows = source.table.rows
    first = rows[0]
    data = rows[1:] if first and not is_number(first[1] if len(first) > 1 else "") else rows
    return bool(data) and len(data[0]) == 4 and is_number(data[0][1]) and not is_number(data[0][2])


def gather(source: Source, report: ScanReport) -> Found:
    """One candidate per row whose video is on disk."""
    assert source.table is not None
    manifest, rows = source.table.path, source.table.rows
    stems = stem_index(source.files_root, VIDEO_EXTS)
    cands = []
    labels: list[str] = []  # of every row, missing files too: ids must not depend on downloads
    if rows and len(rows[0]) > 1 and not is_number(rows[0][1]):  # a header row
        rows = [[], *rows[1:]]  # keep line numbers
    for lineno, row in enumerate(rows, 1):
        if not row:
            continue
        where = f"{manifest}:{lineno}"
        if len(row) != 4 or not is_number(row[1]):
            raise ValueError(f"{where}: expected 'youtube_id,start_seconds,label,split', got {row}")
        ytid, start, label, split = row[0].strip(), float(row[1]), row[2].strip(), row[3]
        split_name = parse_split(split, where)
        labels.append(label)
        names = youtube_stems(ytid, start, start + CLIP_SECONDS, bare=False)
        found = [p for n in names for p in stems.get(n, [])]
        key = youtube_key(ytid, start)
        if not found:
            report.missing.append(key)
            continue
        preferred = [p for p in found if p.parent.name.lower() == split.strip().lower()]
        cands.append(Candidate((preferred or found)[0], None, (label,), key, split=split_name))
    note_missing(report, sum(1 for r in rows if r))
    return Found(cands, class_sort(labels))
