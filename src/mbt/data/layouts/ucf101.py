"""UCF101: ``<Class>/v_<Class>_g<gg>_c<cc>.avi`` folders and the official split lists.

The class folders sit in the root or in ``UCF-101/``. With the official ``classInd.txt`` /
``trainlist0{k}.txt`` / ``testlist0{k}.txt`` (in the root or in ``ucfTrainTestlist/``), classes
are in ``classInd.txt`` order and ``data.split = k`` picks the split; without them classes are
the folders (sorted) and validation is held out by group. Names are matched case-insensitively
(the ``HandstandPushups`` folder holds ``v_HandStandPushups_*``). Only about half the classes
have sound: each file is probed for its track.
"""

from __future__ import annotations

from pathlib import Path

from mbt.data.layouts.base import (
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

NAME = "ucf101"
LAYOUT = "ucf101"
DESCRIPTION = "class folders of videos (ucf101)"
LIST_DIRS = ("", "ucfTrainTestlist", "UCF101TrainTestSplits-RecognitionTask")
VIDEO_DIRS = ("", "UCF-101", "UCF101")


def detect(source: Source) -> bool:
    """Folders of videos in the root or in ``UCF-101/``."""
    return _video_root(source.root) is not None


def gather(source: Source, report: ScanReport) -> Found:
    """The clips of the official split ``data.split``, or of every class folder without lists."""
    root = source.root
    vroot = _video_root(root)
    if vroot is None:
        raise ValueError(f"{root}: no <Class>/ folders of videos (layout ucf101)")
    files = {rel_key(p, vroot).lower(): p for p in media_files(vroot, VIDEO_EXTS, max_depth=1)}
    lists = _list_dir(root)
    if lists is None:
        report.notes.append("no classInd.txt: classes from folders, group-aware held-out split")
        return _from_folders(files, vroot, report)
    return _from_lists(files, vroot, lists, source.cfg.split, report)


def _from_folders(files: dict[str, Path], vroot: Path, report: ScanReport) -> Found:
    """Every video in a class folder; the folder names the class."""
    cands = [
        _candidate(path, vroot, path.parent.name)
        for key_lower, path in files.items()
        if "/" in key_lower
    ]
    return Found(cands, canonicalise(cands, report))


def _from_lists(
    files: dict[str, Path], vroot: Path, lists: Path, split: int, report: ScanReport
) -> Found:
    """The videos of ``trainlist0{split}.txt`` and ``testlist0{split}.txt``."""
    classes = _read_class_ind(lists / "classInd.txt")
    by_lower = {n.lower(): n for n in classes}
    cands: list[Candidate] = []
    for name, tag in ((f"trainlist0{split}.txt", "train"), (f"testlist0{split}.txt", "test")):
        path = lists / name
        if not path.is_file():
            raise ValueError(f"{path}: official split list not found (data.split={split})")
        for rel, folder in _read_list(path, by_lower):
            vpath = files.get(str(Path(rel).with_suffix("")).lower())
            if vpath is None:
                report.missing.append(rel)
                continue
            cands.append(_candidate(vpath, vroot, by_lower[folder.lower()], split=tag))
    listed = {c.key.lower() for c in cands}
    extra = len([k for k in files if k not in listed])
    if extra:
        report.notes.append(f"{extra} video(s) in neither official list of split {split}: ignored")
    return Found(cands, classes)


def _candidate(path: Path, vroot: Path, name: str, split: str | None = None) -> Candidate:
    ucf = ucf_group(path.stem)
    group = ucf[1] if ucf else None
    return Candidate(path, None, (name,), rel_key(path, vroot), group=group, split=split)


def _read_list(path: Path, by_lower: dict[str, str]) -> list[tuple[str, str]]:
    """(relative path, class folder) of each line of a train/test list (a label column, if
    any, is ignored: the folder names the class)."""
    out = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        rel = line.split()[0].replace("\\", "/")
        folder = rel.split("/")[0]
        if folder.lower() not in by_lower:
            raise ValueError(f"{path}:{lineno}: class {folder!r} is not in classInd.txt")
        out.append((rel, folder))
    return out


def _read_class_ind(path: Path) -> list[str]:
    """Class names in id order from ``classInd.txt`` (``<1-based id> <name>`` lines)."""
    entries = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise ValueError(f"{path}:{lineno}: expected '<id> <ClassName>', got {line!r}")
        entries[int(parts[0])] = parts[1]
    if sorted(entries) != list(range(1, len(entries) + 1)):
        raise ValueError(f"{path}: ids must be 1..{len(entries)} (1-based, no gaps)")
    return [entries[i] for i in range(1, len(entries) + 1)]


def _video_root(root: Path) -> Path | None:
    """The folder holding ``<Class>/*.avi`` (root itself or ``root/UCF-101``), if any."""
    for cand in (root / d for d in VIDEO_DIRS):  # root / "" is root
        if cand.is_dir() and any(
            d.is_dir() and any(f.suffix.lower() in VIDEO_EXTS for f in d.iterdir())
            for d in cand.iterdir()
            if not d.name.startswith(".")
        ):
            return cand
    return None


def _list_dir(root: Path) -> Path | None:
    """The folder holding ``classInd.txt``, if any."""
    for cand in (root / d for d in LIST_DIRS):
        if (cand / "classInd.txt").is_file():
            return cand
    return None
