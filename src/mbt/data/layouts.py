"""Find the clips of a data set on disk: files, labels, splits and a report of what is wrong.

Three layouts are recognised (``data.layout``, or ``auto``):

- ``pjzuf`` (PJZUF-C101, the seed's data set and the demo): ``video/[<Class>/]<stem>.mp4`` and
  ``audio/[<Class>/]<stem>.wav``. Audio and video are paired by relative path (or, failing
  that, by a unique stem), never by listing order. The class is the folder, or for a flat
  folder the ``<Class>`` of a UCF-style stem ``v_<Class>_g<gg>_c<cc>``. A video without a wav
  uses its own audio track if it has one.
- ``ucf101``: ``<Class>/v_<Class>_g<gg>_c<cc>.avi`` (also under ``UCF-101/``), with the official
  ``classInd.txt`` / ``trainlist0{k}.txt`` / ``testlist0{k}.txt`` if they are in the root or in
  ``ucfTrainTestlist/``. Names are matched case-insensitively (the ``HandstandPushups`` folder
  holds ``v_HandStandPushups_*``).
- ``csv``: a manifest with a header ``path,label[,audio][,split][,group]`` (``;`` between the
  labels of a multi-label row, paths relative to the manifest), VGGSound's
  ``youtube_id,start_seconds,label,split`` (an optional header row; integer or decimal start
  times), or an AudioSet segment CSV (``# Segments csv`` comment lines, then rows
  ``YTID, start_seconds, end_seconds, "mid1,mid2,..."``) with ``class_labels_indices.csv``
  (``index,mid,display_name``) next to it or in the root. YouTube clips (VGGSound and AudioSet)
  are looked up by stem anywhere below the root (two levels deep): ``<ytid>_<start:06d>``,
  ``<ytid>_<start>``, ``<ytid>_<start:.1f>``, ``<ytid>_<start:.3f>``, ``<ytid>_<start*1000>``,
  ``<ytid>_<start*1000>_<end*1000>``, ``<ytid>_<start:.3f>_<end:.3f>`` (end = start + 10 for
  VGGSound) and, for AudioSet only, ``<ytid>`` alone; VGGSound with a video extension,
  preferring ``<root>/<split>/``; AudioSet with a video extension, or an audio one (an
  audio-only clip, kept with ``scan(require_video=False)``; a wav with the same stem as a video
  is its audio file). Rows whose file is missing are counted and skipped (about 20 % of
  VGGSound is gone from YouTube). AudioSet class ids are the ``index`` order of
  ``class_labels_indices.csv`` (the official order, not re-sorted), the class names its
  ``display_name``; every AudioSet row is multi-label (``data.multi_label=true`` is required)
  and has no declared split (validation is held out of it as usual).

Class ids index a sorted class list (case-insensitive order; ``classInd.txt`` order for UCF101,
``class_labels_indices.csv`` order for AudioSet),
so they are the same on every machine whatever order the file system lists files in. Splits:
the data set's own where it has one (official UCF101 lists, a ``split`` column); the validation
set is otherwise held out from the training clips, by whole groups when clips have groups
(UCF-style ``g<gg>``, as the official UCF101 splits) and stratified by class when not, with
``data.val_fraction`` and ``data.split_seed``.

Every file is probed (a thread pool for large data sets): unreadable files are listed and left
out, never replaced by zeros; clips without any audio follow ``data.missing_audio``.
"""

from __future__ import annotations

import csv
import json
import os
import re
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from mbt.config import DataConfig
from mbt.data.video import MediaError, open_media, probe_video

VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg")
AUDIO_EXTS = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".opus", ".aac")
UCF_STEM = re.compile(r"^v_(?P<cls>[^_]+)_g(?P<group>\d+)_c(?P<clip>\d+)$")
SPLIT_NAMES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "eval": "test", "evaluation": "test",
}  # fmt: skip
AUDIOSET_LAYOUT = "csv (AudioSet segments)"  # ScanReport.layout of an AudioSet segment CSV
AUDIOSET_CLASSES = "class_labels_indices.csv"
PROBE_BYTES = 65536  # header probe of audio files
POOL_THRESHOLD = 32  # probe serially below this many files (the demo): a pool costs more


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
class ScanReport:
    """What :func:`scan` found, kept and left out; ``format()`` is printed before training."""

    root: str
    layout: str
    clips_found: int = 0  # candidate clips before anything was left out
    classes: int = 0
    split_sizes: dict[str, int] = field(default_factory=dict)
    no_audio: list[str] = field(default_factory=list)  # neither an audio file nor a track
    missing_audio_policy: str = "skip"
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    unpaired_audio: list[str] = field(default_factory=list)  # audio files without a video
    unpaired_video: list[str] = field(default_factory=list)  # videos without an audio file
    missing: list[str] = field(default_factory=list)  # listed in a manifest, not on disk
    dropped_classes: list[str] = field(default_factory=list)  # require_audio: no clip left
    notes: list[str] = field(default_factory=list)

    def format(self, max_items: int = 5) -> str:
        """A readable table with counts and the first ``max_items`` files of each problem."""
        sizes = ", ".join(f"{k} {v}" for k, v in self.split_sizes.items())
        policy = {"skip": "skipped", "silence": "kept with silent audio", "error": "error"}
        rows = [
            ("data set", f"{self.root} (layout {self.layout})"),
            ("clips found", str(self.clips_found)),
            ("classes", str(self.classes)),
            ("splits", sizes or "-"),
            ("without audio", f"{len(self.no_audio)} ({policy[self.missing_audio_policy]})"),
            ("unreadable files", f"{len(self.unreadable)} (left out)"),
            ("videos without audio file", f"{len(self.unpaired_video)} (use their own track)"),
            ("audio without video", f"{len(self.unpaired_audio)} (ignored)"),
            ("missing files", f"{len(self.missing)} (skipped)"),
        ]
        if self.dropped_classes:
            rows.append(("classes without audio", f"{len(self.dropped_classes)} (dropped)"))
        width = max(len(r[0]) for r in rows)
        lines = [f"{name:<{width}}  {value}" for name, value in rows]
        details = [
            ("without audio", self.no_audio),
            ("unreadable", [f"{p}: {why}" for p, why in self.unreadable]),
            ("audio without video", self.unpaired_audio),
            ("missing", self.missing),
            ("dropped classes", self.dropped_classes),
        ]
        for title, items in details:
            if items:
                more = f" ... and {len(items) - max_items} more" if len(items) > max_items else ""
                lines.append(f"{title}: " + "; ".join(items[:max_items]) + more)
        lines.extend(self.notes)
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        return {k: v for k, v in vars(self).items()}


@dataclass
class DataIndex:
    """The clips of a data set split three ways, with their class names and the scan report."""

    classes: list[str]
    train: list[Clip]
    val: list[Clip]
    test: list[Clip]  # may be empty
    multi_label: bool
    report: ScanReport
    source_ids: dict[str, int] | None = None  # require_audio: class -> id before the remap

    def split(self, name: str) -> list[Clip]:
        """The clips of ``"train"``, ``"val"`` or ``"test"``."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {name!r}")
        return getattr(self, name)


def save_classes(index: DataIndex, path: str | Path) -> None:
    """Write ``classes.json``: the class names in id order (and the map before a remap)."""
    data = {"classes": index.classes, "multi_label": index.multi_label}
    if index.source_ids is not None:
        data["source_ids"] = index.source_ids
    _write_text_atomic(Path(path), json.dumps(data, indent=1))


def load_classes(path: str | Path) -> list[str]:
    """Class names in id order from a ``classes.json`` written by :func:`save_classes`."""
    try:
        data = json.loads(Path(path).read_text())
        classes = data["classes"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a classes.json file ({e})") from None
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise ValueError(f"{path}: 'classes' must be a list of names")
    return classes


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# scan


@dataclass
class _Candidate:
    """A clip before probing: files, class names (not ids yet), group and declared split."""

    video: Path | None
    audio: Path | None
    names: tuple[str, ...]
    key: str
    group: str | None = None
    split: str | None = None  # "train" / "val" / "test" when the data set says
    has_audio: bool = True  # set by probing


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
    root = Path(root if root is not None else cfg.root)
    if not str(root) or not root.exists():
        raise ValueError(f"{root}: data set folder not found (set data.root or --data)")
    layout, manifest = _detect_layout(root, cfg)
    report = ScanReport(root=str(root), layout=layout, missing_audio_policy=cfg.missing_audio)
    if layout == "pjzuf":
        cands, classes = _gather_pjzuf(root, report, require_video)
    elif layout == "ucf101":
        cands, classes = _gather_ucf101(root, cfg.split, report)
    else:
        assert manifest is not None
        cands, classes = _gather_csv(manifest, root, report)
    report.clips_found = len(cands)
    multi_label = cfg.multi_label
    if report.layout == AUDIOSET_LAYOUT and not multi_label:
        raise ValueError(
            f"{manifest}: an AudioSet segment CSV is multi-label; set data.multi_label=true"
        )
    if not multi_label and any(len(c.names) > 1 for c in cands):
        raise ValueError(
            f"{manifest or root}: some clips have several labels; set data.multi_label=true"
        )
    if require_video:
        if report.layout == AUDIOSET_LAYOUT:  # audio-only segments: reported, not silently lost
            report.unpaired_audio += [str(c.audio) for c in cands if c.video is None]
        cands = [c for c in cands if c.video is not None]
    cands = _probe_and_filter(cands, report, cfg, need_audio, workers)
    if not cands:
        raise ValueError(f"{root}: no usable clip found\n{report.format()}")

    # Labels: ids index the class list; require_audio drops emptied classes and remaps.
    source_ids = None
    if cfg.require_audio:
        used = {n for c in cands for n in c.names}
        report.dropped_classes = [n for n in classes if n not in used]
        source_ids = {n: i for i, n in enumerate(classes) if n in used}
        classes = [n for n in classes if n in used]
    ids = {n: i for i, n in enumerate(classes)}
    clips = {
        c.key: Clip(
            video=c.video,
            audio=c.audio,
            labels=tuple(sorted(ids[n] for n in c.names)),
            key=c.key,
            group=c.group,
            has_audio=c.has_audio,
        )
        for c in cands
    }
    splits = _split(cands, clips, cfg)
    report.classes = len(classes)
    report.split_sizes = {k: len(v) for k, v in splits.items()}
    return DataIndex(
        classes=classes,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        multi_label=multi_label,
        report=report,
        source_ids=source_ids,
    )


def _detect_layout(root: Path, cfg: DataConfig) -> tuple[str, Path | None]:
    """The layout name and, for ``csv``, the manifest path."""
    layout = cfg.layout
    manifest: Path | None = None
    if cfg.manifest:
        manifest = Path(cfg.manifest)
        if not manifest.is_absolute():
            manifest = root / manifest if root.is_dir() else root.parent / manifest
    elif root.is_file() and root.suffix.lower() == ".csv":
        manifest = root
    if layout == "auto":
        if manifest is not None:
            layout = "csv"
        elif (root / "video").is_dir():
            layout = "pjzuf"
        elif _ucf_video_root(root) is not None:
            layout = "ucf101"
        else:
            raise ValueError(
                f"{root}: cannot tell the data set layout: expected video/ and audio/ folders "
                "(pjzuf), class folders of videos (ucf101), or data.manifest (csv)"
            )
    if layout == "csv" and (manifest is None or not manifest.is_file()):
        raise ValueError(f"{manifest or root}: manifest not found (set data.manifest)")
    if layout == "pjzuf" and not (root / "video").is_dir():
        raise ValueError(f"{root}: layout pjzuf needs a video/ folder")
    return layout, manifest


def _class_sort(names: Iterable[str]) -> list[str]:
    """Sorted class names: case-insensitive, then case-sensitive to break ties."""
    return sorted(set(names), key=lambda s: (s.lower(), s))


def _canonical(names: Iterable[str]) -> dict[str, str]:
    """Map each spelling to one spelling per case-insensitive name (the first in sort order)."""
    out: dict[str, str] = {}
    first: dict[str, str] = {}
    for n in _class_sort(names):
        out[n] = first.setdefault(n.lower(), n)
    return out


def _media_files(folder: Path, exts: tuple[str, ...], max_depth: int | None = None) -> list[Path]:
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


def _ucf_group(stem: str) -> tuple[str, str] | None:
    """(class, group) of a UCF-style stem ``v_<Class>_g<gg>_c<cc>``; groups are ``g<gg>``."""
    m = UCF_STEM.match(stem)
    return (m["cls"], f"g{int(m['group']):02d}") if m else None


def _gather_pjzuf(
    root: Path, report: ScanReport, require_video: bool
) -> tuple[list[_Candidate], list[str]]:
    vdir, adir = root / "video", root / "audio"
    videos = {_rel_key(p, vdir): p for p in _media_files(vdir, VIDEO_EXTS)}
    audios = {_rel_key(p, adir): p for p in _media_files(adir, AUDIO_EXTS)} if adir.is_dir() else {}
    # Pair by relative key (Class/stem); fall back to the stem when it is unique on both sides
    # (e.g. foldered videos with flat audio). Never by position in a listing.
    audio_by_stem: dict[str, list[str]] = defaultdict(list)
    for k in audios:
        audio_by_stem[k.rsplit("/", 1)[-1]].append(k)
    video_stems = Counter(k.rsplit("/", 1)[-1] for k in videos)
    used: set[str] = set()
    pairs: list[tuple[str, Path | None, Path | None]] = []
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
    cands = []
    unlabelled = []
    for key, vpath, apath in pairs:
        parts = key.split("/")
        stem = parts[-1]
        ucf = _ucf_group(stem)
        if len(parts) > 1:
            name = parts[0]
        elif ucf is not None:
            name = ucf[0]
        else:
            unlabelled.append(str(vpath or apath))
            continue
        # Groups are global group numbers ("g07"), as the official UCF101 splits use them.
        cands.append(_Candidate(vpath, apath, (name,), key, group=ucf[1] if ucf else None))
    if unlabelled:
        report.notes.append(
            f"{len(unlabelled)} file(s) with no class (neither a class folder nor a "
            f"v_<Class>_gXX_cYY name) ignored, e.g. {unlabelled[0]}"
        )
    canon = _canonical(n for c in cands for n in c.names)
    for c in cands:
        c.names = tuple(canon[n] for n in c.names)
    return cands, _class_sort(canon.values())


def _rel_key(path: Path, base: Path) -> str:
    return path.relative_to(base).with_suffix("").as_posix()


def _ucf_video_root(root: Path) -> Path | None:
    """The folder holding ``<Class>/*.avi`` (root itself or ``root/UCF-101``), if any."""
    for cand in (root, root / "UCF-101", root / "UCF101"):
        if cand.is_dir() and any(
            d.is_dir() and any(f.suffix.lower() in VIDEO_EXTS for f in d.iterdir())
            for d in cand.iterdir()
            if not d.name.startswith(".")
        ):
            return cand
    return None


def _find_list_dir(root: Path) -> Path | None:
    for cand in (root, root / "ucfTrainTestlist", root / "UCF101TrainTestSplits-RecognitionTask"):
        if (cand / "classInd.txt").is_file():
            return cand
    return None


def _gather_ucf101(
    root: Path, split: int, report: ScanReport
) -> tuple[list[_Candidate], list[str]]:
    vroot = _ucf_video_root(root)
    if vroot is None:
        raise ValueError(f"{root}: no <Class>/ folders of videos (layout ucf101)")
    files = {_rel_key(p, vroot).lower(): p for p in _media_files(vroot, VIDEO_EXTS, max_depth=1)}
    lists = _find_list_dir(root)
    cands: list[_Candidate] = []
    if lists is None:
        report.notes.append("no classInd.txt: classes from folders, group-aware held-out split")
        folders = {}
        for key_lower, path in files.items():
            folder = path.parent.name
            if "/" not in key_lower:
                continue
            folders.setdefault(folder.lower(), folder)
            ucf = _ucf_group(path.stem)
            cands.append(
                _Candidate(
                    path, None, (folder,), _rel_key(path, vroot), group=ucf[1] if ucf else None
                )
            )
        canon = _canonical(c.names[0] for c in cands)
        for c in cands:
            c.names = (canon[c.names[0]],)
        return cands, _class_sort(canon.values())

    classes = _read_class_ind(lists / "classInd.txt")
    by_lower = {n.lower(): n for n in classes}
    for name, tag in ((f"trainlist0{split}.txt", "train"), (f"testlist0{split}.txt", "test")):
        path = lists / name
        if not path.is_file():
            raise ValueError(f"{path}: official split list not found (data.split={split})")
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            rel = line.split()[0].replace("\\", "/")
            folder = rel.split("/")[0]
            if folder.lower() not in by_lower:
                raise ValueError(f"{path}:{lineno}: class {folder!r} is not in classInd.txt")
            vpath = files.get(str(Path(rel).with_suffix("")).lower())
            if vpath is None:
                report.missing.append(rel)
                continue
            ucf = _ucf_group(vpath.stem)
            cands.append(
                _Candidate(
                    vpath,
                    None,
                    (by_lower[folder.lower()],),
                    _rel_key(vpath, vroot),
                    group=ucf[1] if ucf else None,
                    split=tag,
                )
            )
    listed = {c.key.lower() for c in cands}
    extra = len([k for k in files if k not in listed])
    if extra:
        report.notes.append(f"{extra} video(s) in neither official list of split {split}: ignored")
    return cands, classes


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


def _gather_csv(
    manifest: Path, root: Path, report: ScanReport
) -> tuple[list[_Candidate], list[str]]:
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
        rows = [r for r in csv.reader(lines) if r and any(x.strip() for x in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{manifest}: cannot read the manifest ({e})") from None
    if not rows:
        raise ValueError(f"{manifest}: empty manifest")
    header = [h.strip().lower() for h in rows[0]]
    if "path" in header and "label" in header:
        return _gather_manifest(manifest, header, rows[1:], report)
    base = root if root.is_dir() else manifest.parent
    if _is_audioset(lines):
        report.layout = AUDIOSET_LAYOUT
        return _gather_audioset(manifest, base, lines, report)
    data = rows[1:] if rows[0] and not _is_number(rows[0][1] if len(rows[0]) > 1 else "") else rows
    if data and len(data[0]) == 4 and _is_number(data[0][1]) and not _is_number(data[0][2]):
        return _gather_vggsound(manifest, base, rows, report)
    raise ValueError(
        f"{manifest}: expected a header 'path,label[,audio][,split][,group]', VGGSound rows "
        f"'youtube_id,start_seconds,label,split' or an AudioSet segment CSV "
        f"'YTID, start_seconds, end_seconds, \"mids\"', got {rows[0]}"
    )


def _is_number(value: str) -> bool:
    try:
        return np.isfinite(float(value.strip()))
    except ValueError:
        return False


def _is_audioset(lines: list[str]) -> bool:
    """An AudioSet segment CSV: its ``# Segments csv`` comment, or a first data row shaped
    ``YTID, start, end, "mids"`` (two numbers, then quoted or /m/-style MIDs)."""
    if any(ln.lstrip().lower().startswith("# segments csv") for ln in lines[:5]):
        return True
    data = [ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not data:
        return False
    row = next(csv.reader(data[:1], skipinitialspace=True))
    return (
        len(row) == 4
        and _is_number(row[1])
        and _is_number(row[2])
        and all(m.strip().startswith("/") for m in row[3].split(","))
    )


def _youtube_stems(ytid: str, start: float, end: float, *, bare: bool) -> list[str]:
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


def _youtube_key(ytid: str, start: float) -> str:
    """The clip key: ``<ytid>_<start:06d>`` (``<ytid>_<start*1000>ms`` for a decimal start)."""
    return f"{ytid}_{int(start):06d}" if start == int(start) else f"{ytid}_{round(start * 1000)}ms"


def _stem_index(root: Path, exts: tuple[str, ...]) -> dict[str, list[Path]]:
    stems: dict[str, list[Path]] = defaultdict(list)
    for p in _media_files(root, exts, max_depth=2):
        stems[p.stem].append(p)
    return stems


def _note_missing(report: ScanReport, rows: int) -> None:
    if report.missing:
        share = 100 * len(report.missing) / max(1, rows)
        report.notes.append(f"{len(report.missing)} of {rows} rows ({share:.0f} %) have no file")


def _parse_split(value: str, where: str) -> str | None:
    v = value.strip().lower()
    if not v:
        return None
    if v not in SPLIT_NAMES:
        raise ValueError(f"{where}: split {value!r} is not one of {sorted(set(SPLIT_NAMES))}")
    return SPLIT_NAMES[v]


def _gather_manifest(
    manifest: Path, header: list[str], rows: list[list[str]], report: ScanReport
) -> tuple[list[_Candidate], list[str]]:
    known = {"path", "label", "audio", "split", "group"}
    unknown = [h for h in header if h not in known]
    if unknown:
        raise ValueError(f"{manifest}: unknown column(s) {unknown}; known: {sorted(known)}")
    col = {h: i for i, h in enumerate(header)}
    base = manifest.parent
    cands = []
    names: list[str] = []  # of every row, missing files too: ids must not depend on downloads
    for lineno, row in enumerate(rows, 2):
        where = f"{manifest}:{lineno}"
        if len(row) != len(header):
            raise ValueError(f"{where}: expected {len(header)} columns, got {len(row)}")
        values = {h: row[i].strip() for h, i in col.items()}
        get = values.get
        rel = get("path", "")
        labels = tuple(x.strip() for x in get("label", "").split(";") if x.strip())
        if not rel or not labels:
            raise ValueError(f"{where}: empty path or label")
        names.extend(labels)
        path = base / rel
        audio = base / get("audio", "") if get("audio", "") else None
        gone = [p for p in (path, audio) if p is not None and not p.is_file()]
        if gone:
            report.missing.extend(str(p) for p in gone)
            continue
        is_audio = path.suffix.lower() in AUDIO_EXTS
        video = None if is_audio else path
        audio = path if is_audio and audio is None else audio
        key = Path(rel).with_suffix("").as_posix()
        cands.append(
            _Candidate(
                video, audio, labels, key, group=get("group", "") or None,
                split=_parse_split(get("split", ""), where),
            )
        )  # fmt: skip
    return cands, _class_sort(names)


def _gather_vggsound(
    manifest: Path, root: Path, rows: list[list[str]], report: ScanReport
) -> tuple[list[_Candidate], list[str]]:
    stems = _stem_index(root, VIDEO_EXTS)
    cands = []
    labels: list[str] = []  # of every row, missing files too: ids must not depend on downloads
    if rows and len(rows[0]) > 1 and not _is_number(rows[0][1]):  # a header row
        rows = [[], *rows[1:]]  # keep line numbers
    for lineno, row in enumerate(rows, 1):
        if not row:
            continue
        where = f"{manifest}:{lineno}"
        if len(row) != 4 or not _is_number(row[1]):
            raise ValueError(f"{where}: expected 'youtube_id,start_seconds,label,split', got {row}")
        ytid, start, label, split = row[0].strip(), float(row[1]), row[2].strip(), row[3]
        split_name = _parse_split(split, where)
        labels.append(label)
        names = _youtube_stems(ytid, start, start + 10, bare=False)
        found = [p for n in names for p in stems.get(n, [])]
        key = _youtube_key(ytid, start)
        if not found:
            report.missing.append(key)
            continue
        preferred = [p for p in found if p.parent.name.lower() == split.strip().lower()]
        path = (preferred or found)[0]
        cands.append(_Candidate(path, None, (label,), key, split=split_name))
    _note_missing(report, sum(1 for r in rows if r))
    return cands, _class_sort(labels)


def _find_audioset_classes(manifest: Path, root: Path) -> Path:
    for folder in dict.fromkeys((manifest.parent, root, root / "metadata")):
        if (folder / AUDIOSET_CLASSES).is_file():
            return folder / AUDIOSET_CLASSES
    raise ValueError(
        f"{manifest}: AudioSet segment CSV without {AUDIOSET_CLASSES} (index,mid,display_name) "
        f"next to it or in {root}"
    )


def _read_audioset_classes(path: Path) -> dict[str, tuple[int, str]]:
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


def _gather_audioset(
    manifest: Path, root: Path, lines: list[str], report: ScanReport
) -> tuple[list[_Candidate], list[str]]:
    """AudioSet segments; classes in ``class_labels_indices.csv`` order, named by display name."""
    classes_file = _find_audioset_classes(manifest, root)
    by_mid = _read_audioset_classes(classes_file)
    classes = [name for _, name in sorted(by_mid.values())]
    videos = _stem_index(root, VIDEO_EXTS)
    audios = _stem_index(root, AUDIO_EXTS)
    cands = []
    rows = 0
    for lineno, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        rows += 1
        where = f"{manifest}:{lineno}"
        row = next(csv.reader([line], skipinitialspace=True))
        if len(row) != 4 or not _is_number(row[1]) or not _is_number(row[2]):
            raise ValueError(f"{where}: expected 'YTID, start, end, \"mids\"', got {row}")
        ytid, start, end = row[0].strip(), float(row[1]), float(row[2])
        mids = [m.strip() for m in row[3].split(",") if m.strip()]
        unknown = [m for m in mids if m not in by_mid]
        if not mids or unknown:
            raise ValueError(f"{where}: label(s) {unknown or row[3]!r} not in {classes_file}")
        names = tuple(dict.fromkeys(by_mid[m][1] for m in mids))
        stems = _youtube_stems(ytid, start, end, bare=True)
        video = next((p for n in stems for p in videos.get(n, [])), None)
        audio = next((p for n in stems for p in audios.get(n, [])), None)
        key = _youtube_key(ytid, start)
        if video is None and audio is None:
            report.missing.append(key)
            continue
        cands.append(_Candidate(video, audio, names, key))
    if rows == 0:
        raise ValueError(f"{manifest}: no segment rows")
    _note_missing(report, rows)
    report.notes.append(f"classes: {classes_file} ({len(classes)}, official index order)")
    return cands, classes


# ---------------------------------------------------------------------------------------------
# probing


def _probe_audio_file(path: Path) -> None:
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


def _probe(c: _Candidate) -> tuple[str | None, str | None, bool]:
    """(video error, audio-file error, video has an audio track) of one candidate."""
    verr = aerr = None
    track = False
    if c.video is not None:
        try:
            track = probe_video(c.video).has_audio
        except (MediaError, av.FFmpegError, OSError) as e:
            verr = str(e).removeprefix(f"{c.video}: ")
    if c.audio is not None:
        try:
            _probe_audio_file(c.audio)
        except (MediaError, av.FFmpegError, OSError) as e:
            aerr = str(e).removeprefix(f"{c.audio}: ")
    return verr, aerr, track


def _probe_and_filter(
    cands: list[_Candidate],
    report: ScanReport,
    cfg: DataConfig,
    need_audio: bool,
    workers: int | None,
) -> list[_Candidate]:
    """Probe every file; drop unreadable clips; apply require_audio and missing_audio."""
    if len(cands) < POOL_THRESHOLD:
        results = [_probe(c) for c in cands]
    else:
        n = workers or min(8, (os.cpu_count() or 1) * 2)
        with ThreadPoolExecutor(max_workers=n) as pool:
            results = list(pool.map(_probe, cands, chunksize=16))
    kept = []
    for c, (verr, aerr, track) in zip(cands, results, strict=True):
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


# ---------------------------------------------------------------------------------------------
# splits


def _split(
    cands: list[_Candidate], clips: dict[str, Clip], cfg: DataConfig
) -> dict[str, list[Clip]]:
    """train / val / test lists, each sorted by key."""
    declared = {c.key: c.split for c in cands}
    out: dict[str, list[Clip]] = {"train": [], "val": [], "test": []}
    pool = []
    for key in sorted(clips):
        s = declared[key]
        if s in ("val", "test"):
            out[s].append(clips[key])
        else:
            pool.append(clips[key])
    if out["val"]:  # the data set has its own validation split
        out["train"] = pool
        return out
    val_keys = _hold_out(pool, cfg.val_fraction, cfg.split_seed)
    out["train"] = [c for c in pool if c.key not in val_keys]
    out["val"] = [c for c in pool if c.key in val_keys]
    return out


def _seeded(seed: int, name: str) -> np.random.Generator:
    """A generator for one (seed, name) pair, independent of any other name."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _hold_out(clips: list[Clip], fraction: float, seed: int) -> set[str]:
    """Keys of the validation clips: whole groups if any clip has one (a clip without a group
    is a group of its own, so one odd file name cannot turn off the group split), else per
    class."""
    if len(clips) < 2:
        return set()
    if any(c.group is not None for c in clips):
        group = {c.key: c.group if c.group is not None else f"\0{c.key}" for c in clips}
        sizes = Counter(group.values())
        groups = sorted(sizes)
        if len(groups) >= 2:
            order = [groups[i] for i in _seeded(seed, "groups").permutation(len(groups))]
            chosen, n = set(), 0
            target = fraction * len(clips)
            for g in order[:-1]:  # at least one group stays in training
                if chosen and n + sizes[g] / 2 >= target:  # the next group overshoots more
                    break
                chosen.add(g)
                n += sizes[g]
            return {c.key for c in clips if group[c.key] in chosen}
    # Stratified by (first) class: each class gives round(fraction * n) clips, at least one.
    by_class: dict[int, list[str]] = defaultdict(list)
    for c in clips:
        by_class[c.labels[0]].append(c.key)
    val = set()
    for label, keys in sorted(by_class.items()):
        if len(keys) < 2:
            continue
        k = min(len(keys) - 1, max(1, round(fraction * len(keys))))
        perm = _seeded(seed, f"class{label}").permutation(len(keys))
        val.update(keys[i] for i in perm[:k])
    return val
