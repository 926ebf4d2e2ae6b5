"""Find the clips of a data set on disk: files, labels, splits and a report of what is wrong.

:func:`scan` reads a data set in one of these formats (one module each, see its docstring):

- :mod:`~mbt.data.layouts.pjzuf`: ``video/`` and ``audio/`` folders (PJZUF-C101, the demo);
- :mod:`~mbt.data.layouts.ucf101`: class folders of videos, with the official split lists;
- ``csv`` tables (``data.manifest``, or the CSV file given as the root), told apart by their
  content: :mod:`~mbt.data.layouts.manifest` (``path,label[,audio][,split][,group]``),
  :mod:`~mbt.data.layouts.audioset` (segment CSVs) and :mod:`~mbt.data.layouts.vggsound`.

``data.layout`` picks one (``auto``: the CSV formats when there is a manifest, else the first
folder layout whose ``detect`` says yes). Then, whatever the format: every file is probed
(:mod:`~mbt.data.layouts.probe`: unreadable files are listed and left out, never replaced by
zeros; clips without any audio follow ``data.missing_audio``); a class left without clips
(every clip silent and ``missing_audio=skip``) is dropped, so the head has exactly the classes
there is data for; class ids index the format's class list (sorted case-insensitively, by
value when every name is a number, unless the data set fixes an order: ``classInd.txt``,
``class_labels_indices.csv``), so they are the same on every machine whatever order the file
system lists files in; and the splits are the data set's own or held out
(:mod:`~mbt.data.layouts.split`). A folder whose only subfolder holds the data set (an
archive's top folder) is read through. :class:`ScanReport` says what was found and left out.

Adding a format: a module with ``NAME``, ``LAYOUT``, ``DESCRIPTION``, ``detect(source)`` and
``gather(source, report)`` (the :class:`~mbt.data.layouts.base.Format` contract) and one line in
:data:`FORMATS` (a new folder layout also needs its name in ``DataConfig.layout``'s choices).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mbt.config import DataConfig
from mbt.data.layouts import audioset, manifest, pjzuf, ucf101, vggsound
from mbt.data.layouts.base import (
    AUDIO_EXTS,
    VIDEO_EXTS,
    Candidate,
    Clip,
    DataIndex,
    Format,
    Source,
    read_table,
)
from mbt.data.layouts.probe import probe_and_filter
from mbt.data.layouts.report import ScanReport
from mbt.data.layouts.split import split

__all__ = ["AUDIO_EXTS", "FORMATS", "VIDEO_EXTS", "Clip", "DataIndex", "ScanReport", "scan"]

# Every format, in the order data.layout=auto tries them (CSV formats: the first whose
# detect() accepts the table; folder layouts: the first whose detect() accepts the root).
FORMATS: tuple[Format, ...] = (manifest, audioset, vggsound, pjzuf, ucf101)


def scan(
    root: str | Path | None,
    cfg: DataConfig,
    *,
    require_video: bool = True,
    need_audio: bool = True,
    workers: int | None = None,
) -> DataIndex:
    """Find, probe, label and split the clips of a data set.

    Args:
        root: Data set folder (None: ``cfg.root``); for ``csv`` it may be the manifest itself.
        cfg: Data options: ``layout``, ``manifest``, ``split``, ``val_fraction``, ``split_seed``,
            ``multi_label``, ``missing_audio``, ``require_audio``.
        require_video: Keep only clips with a video; False lets audio files without a video
            (or audio-only manifest rows) become audio-only clips.
        need_audio: False when the model reads no audio: ``missing_audio`` is then not applied.
        workers: Threads probing files (None: up to 8).

    Returns:
        A :class:`DataIndex`; ``index.report.format()`` says what was found and left out.

    Raises:
        ValueError: no data set at ``root``, an unreadable manifest, no usable clip, or
            ``missing_audio=error`` and a clip without audio (naming the first such file).
    """
    given = _open_source(root, cfg, require_video)
    source = _one_level_down(given)
    fmt = _pick_format(source)
    report = ScanReport(
        root=str(source.root), layout=fmt.NAME, missing_audio_policy=cfg.missing_audio
    )
    if source.root != given.root:
        report.notes.append(f"the data set is the only folder inside {given.root}")
    cands, classes = fmt.gather(source, report)
    report.clips_found = len(cands)
    _check_labels(cands, source)
    if require_video:
        cands = _with_video(cands, report)
    had_clips = {n for c in cands for n in c.names}
    cands = probe_and_filter(cands, report, cfg, need_audio, workers)
    if not cands:
        raise ValueError(f"{source.root}: no usable clip found\n{report.format()}")
    # require_audio keeps only classes with sound (UCF101's class list names all 101); else a
    # class is dropped when it had clips and none is left (no sound and missing_audio=skip,
    # or every file unreadable): the head has exactly the classes there is data for.
    keep_if_unseen = not cfg.require_audio
    classes, source_ids = _drop_empty_classes(classes, cands, report, had_clips, keep_if_unseen)
    clips = _label(cands, classes)
    splits = split(cands, clips, cfg)
    report.classes = len(classes)
    report.split_sizes = {k: len(v) for k, v in splits.items()}
    return DataIndex(
        classes=classes, train=splits["train"], val=splits["val"], test=splits["test"],
        multi_label=cfg.multi_label, report=report, source_ids=source_ids,
    )  # fmt: skip


def _open_source(root: str | Path | None, cfg: DataConfig, require_video: bool) -> Source:
    """The data set folder and, for the CSV formats, the manifest read once."""
    root = Path(root if root is not None else cfg.root)
    if not str(root) or not root.exists():
        raise ValueError(f"{root}: data set folder not found (set data.root or --data)")
    path: Path | None = None
    if cfg.manifest:
        path = Path(cfg.manifest)
        if not path.is_absolute():
            path = root / path if root.is_dir() else root.parent / path
    elif root.is_file() and root.suffix.lower() == ".csv":
        path = root
    if cfg.layout not in ("auto", "csv"):  # a folder layout: a manifest plays no part
        return Source(root, cfg, require_video)
    if path is None and cfg.layout == "auto":
        return Source(root, cfg, require_video)
    if path is None or not path.is_file():
        raise ValueError(f"{path or root}: manifest not found (set data.manifest)")
    return Source(root, cfg, require_video, read_table(path))


def _folder_formats(source: Source) -> list[Format]:
    """The folder layouts ``data.layout`` allows (all of them for ``auto``)."""
    layout = source.cfg.layout
    if layout not in ("auto", "csv"):
        return [f for f in FORMATS if f.LAYOUT == layout]
    return [f for f in FORMATS if f.LAYOUT != "csv"]


def _one_level_down(source: Source) -> Source:
    """The folder's only subfolder, when no layout is found in the folder but one is found
    there (an archive that wraps its data set in a top folder: ``pjzufc101/video/...``)."""
    if source.table is not None or not source.root.is_dir():
        return source
    formats = _folder_formats(source)
    if any(f.detect(source) for f in formats):
        return source
    subs = [
        d for d in source.root.iterdir()
        if d.is_dir() and not d.name.startswith((".", "__MACOSX"))
    ]  # fmt: skip
    if len(subs) != 1:
        return source
    inner = dataclasses.replace(source, root=subs[0])
    return inner if any(f.detect(inner) for f in formats) else source


def _pick_format(source: Source) -> Format:
    """The format ``data.layout`` names, or the first that detects itself in ``source``."""
    layout = source.cfg.layout
    if layout == "auto":
        layout = "csv" if source.table is not None else ""
    if layout and layout != "csv":
        return next(f for f in FORMATS if f.LAYOUT == layout)
    tried = [f for f in FORMATS if (f.LAYOUT == "csv") == (layout == "csv")]
    for fmt in tried:
        if fmt.detect(source):
            return fmt
    expected = [f.DESCRIPTION for f in tried]
    if source.table is not None:
        options = ", ".join(expected[:-1]) + " or " + expected[-1]
        raise ValueError(f"{source.table.path}: expected {options}, got {source.table.rows[0]}")
    raise ValueError(
        f"{source.root}: cannot tell the data set layout: expected {', '.join(expected)}, "
        "or data.manifest (csv)"
    )


def _check_labels(cands: list[Candidate], source: Source) -> None:
    """Several labels on one clip need ``data.multi_label``."""
    if not source.cfg.multi_label and any(len(c.names) > 1 for c in cands):
        where = source.table.path if source.table is not None else source.root
        raise ValueError(f"{where}: some clips have several labels; set data.multi_label=true")


def _with_video(cands: list[Candidate], report: ScanReport) -> list[Candidate]:
    """The clips with a video; audio-only ones are reported, not silently lost."""
    report.unpaired_audio += [str(c.audio) for c in cands if c.video is None]
    return [c for c in cands if c.video is not None]


def _drop_empty_classes(
    classes: list[str],
    cands: list[Candidate],
    report: ScanReport,
    had_clips: set[str],
    keep_if_unseen: bool,
) -> tuple[list[str], dict[str, int] | None]:
    """The classes that kept a clip (ids made contiguous again) and each kept class's id
    before the remap (None when nothing was dropped and ``keep_if_unseen``).

    Args:
        had_clips: the classes that had clips before probing.
        keep_if_unseen: keep the classes that never had a clip (a fixed class list, such as
            AudioSet's, stays whole); False drops them too (``data.require_audio``).
    """
    used = {n for c in cands for n in c.names}
    dropped = [n for n in classes if n not in used and (n in had_clips or not keep_if_unseen)]
    if not dropped and keep_if_unseen:
        return classes, None
    report.dropped_classes = dropped
    gone = set(dropped)
    source_ids = {n: i for i, n in enumerate(classes) if n not in gone}
    return [n for n in classes if n not in gone], source_ids


def _label(cands: list[Candidate], classes: list[str]) -> dict[str, Clip]:
    """key -> :class:`Clip` with class ids for names."""
    ids = {n: i for i, n in enumerate(classes)}
    return {
        c.key: Clip(
            video=c.video,
            audio=c.audio,
            labels=tuple(sorted(ids[n] for n in c.names)),
            key=c.key,
            group=c.group,
            has_audio=c.has_audio,
        )  # fmt: skip
        for c in cands
    }
