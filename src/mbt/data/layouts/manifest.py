"""A CSV manifest with a header ``path,label[,audio][,split][,group]``.

Paths are relative to the manifest; ``;`` separates the labels of a multi-label row. ``audio``
names a separate sound file (default: the video's own track); a row whose ``path`` is an audio
file is an audio-only clip (kept with ``scan(require_video=False)``). ``split`` is ``train`` /
``val`` / ``test`` (or a synonym such as ``validation``), ``group`` keeps clips together when
validation is held out. Rows whose file is missing are counted and skipped; class ids still
count their labels, so they do not depend on which files were downloaded.
"""

from __future__ import annotations

from pathlib import Path

from mbt.data.layouts.base import AUDIO_EXTS, Candidate, Found, Source, class_sort, parse_split
from mbt.data.layouts.report import ScanReport

NAME = "csv"
LAYOUT = "csv"
DESCRIPTION = "a header 'path,label[,audio][,split][,group]'"
COLUMNS = ("path", "label", "audio", "split", "group")


def detect(source: Source) -> bool:
    """A header row with ``path`` and ``label``."""
    assert source.table is not None
    header = _header(source.table.rows)
    return "path" in header and "label" in header


def gather(source: Source, report: ScanReport) -> Found:
    """One candidate per row whose files exist."""
    assert source.table is not None
    manifest, rows = source.table.path, source.table.rows
    header = _header(rows)
    unknown = [h for h in header if h not in COLUMNS]
    if unknown:
        raise ValueError(f"{manifest}: unknown column(s) {unknown}; known: {sorted(COLUMNS)}")
    cands = []
    names: list[str] = []  # of every row, missing files too: ids must not depend on downloads
    for lineno, row in enumerate(rows[1:], 2):
        where = f"{manifest}:{lineno}"
        if len(row) != len(header):
            raise ValueError(f"{where}: expected {len(header)} columns, got {len(row)}")
        values = {h: cell.strip() for h, cell in zip(header, row, strict=True)}
        rel = values.get("path", "")
        labels = tuple(x.strip() for x in values.get("label", "").split(";") if x.strip())
        if not rel or not labels:
            raise ValueError(f"{where}: empty path or label")
        names.extend(labels)
        path = manifest.parent / rel
        audio = manifest.parent / values["audio"] if values.get("audio") else None
        gone = [p for p in (path, audio) if p is not None and not p.is_file()]
        if gone:
            report.missing.extend(str(p) for p in gone)
            continue
        cands.append(_candidate(rel, path, audio, labels, values, where))
    return Found(cands, class_sort(names))


def _header(rows: list[list[str]]) -> list[str]:
    return [h.strip().lower() for h in rows[0]]


def _candidate(
    rel: str, path: Path, audio: Path | None, labels: tuple[str, ...], values: dict[str, str],
    where: str,
) -> Candidate:  # fmt: skip
    """The candidate of one row whose files exist; a ``path`` with an audio extension is an
    audio-only clip (its sound: the ``audio`` column if given, else ``path``)."""
    is_audio = path.suffix.lower() in AUDIO_EXTS
    return Candidate(
        None if is_audio else path,
        path if is_audio and audio is None else audio,
        labels,
        Path(rel).with_suffix("").as_posix(),
        group=values.get("group", "") or None,
        split=parse_split(values.get("split", ""), where),
    )
