"""Class-name files: the ``--labels FILE`` of ``mbt convert``, told apart by their content.

=============  ==========================================================  ==================
kind           file                                                        names, in id order
=============  ==========================================================  ==================
``audioset``   AudioSet ``class_labels_indices.csv``                       ``display_name`` by
               (``index,mid,display_name``)                                ``index``
``vggsound``   a VGGSound CSV (``youtube_id,start_seconds,label,split``)   its labels, sorted
                                                                           (this package's
                                                                           ``vggsound`` ids)
``classind``   UCF101's ``classInd.txt`` (``<1-based id> <name>``)         by id
``json``       a JSON list of names                                        as listed
``lines``      one name a line (VGGSound's class list, ``classes.txt``)    as listed
=============  ==========================================================  ==================

Names are what ``config.json`` stores as ``class_names`` (HF's ``id2label``), so every command
prints them with the model's scores. AudioSet is multi-label: its models score each class with
a sigmoid, so :attr:`Labels.multi_label` is True for that kind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mbt.data.layouts.audioset import read_class_indices
from mbt.data.layouts.base import class_sort, is_number, read_table


@dataclass(frozen=True)
class Labels:
    """Class names read from a file."""

    names: list[str]
    kind: str  # audioset, vggsound, classind, json, lines
    path: Path

    @property
    def multi_label(self) -> bool:
        """Whether the names come from a multi-label data set (AudioSet)."""
        return self.kind == "audioset"

    def describe(self) -> str:
        """One line: how many names, from what."""
        scoring = "; multi-label: sigmoid scores" if self.multi_label else ""
        return f"labels: {len(self.names)} names from {self.path} ({self.kind}{scoring})"


def read_labels(path: str | Path) -> Labels:
    """Read the class names of ``path`` (see the module docstring for the kinds).

    Raises:
        FileNotFoundError: no such file.
        ValueError: an empty or malformed file, or repeated names (naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such labels file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read the labels file ({e})") from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise ValueError(f"{path}: empty labels file")
    names, kind = _parse(path, text, lines)
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated and kind != "vggsound":
        raise ValueError(f"{path}: class names must be unique, {repeated[:5]} repeat")
    return Labels(names, kind, path)


def _parse(path: Path, text: str, lines: list[str]) -> tuple[list[str], str]:
    """(names, kind) of a labels file, by its first line."""
    first = lines[0]
    if first.startswith("["):
        try:
            names = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not a valid JSON list ({e})") from None
        if not isinstance(names, list) or not names:
            raise ValueError(f"{path}: expected a JSON list of class names")
        return [str(n) for n in names], "json"
    if "display_name" in first or _looks_like_audioset(first):
        by_mid = read_class_indices(path)
        return [name for _, name in sorted(by_mid.values())], "audioset"
    rows = read_table(path).rows
    if _looks_like_vggsound(rows):
        labels = [r[2].strip() for r in rows if len(r) == 4 and is_number(r[1])]
        return class_sort(labels), "vggsound"
    parts = [ln.split(maxsplit=1) for ln in lines]
    if all(len(p) == 2 and p[0].isdigit() for p in parts):
        ids = sorted((int(p[0]), p[1]) for p in parts)
        if [i for i, _ in ids] != list(range(ids[0][0], ids[0][0] + len(ids))):
            raise ValueError(f"{path}: '<id> <name>' lines need consecutive ids")
        return [n for _, n in ids], "classind"
    return lines, "lines"


def _looks_like_audioset(line: str) -> bool:
    """``0,/m/09x0r,"Speech"``: an index, a ``/m/`` MID, a name."""
    parts = line.split(",", 2)
    return len(parts) == 3 and parts[0].strip().isdigit() and parts[1].strip().startswith("/")


def _looks_like_vggsound(rows: list[list[str]]) -> bool:
    """Four columns, the second a number and the third not (after an optional header)."""
    data = rows[1:] if rows and len(rows[0]) > 1 and not is_number(rows[0][1]) else rows
    return bool(data) and len(data[0]) == 4 and is_number(data[0][1]) and not is_number(data[0][2])
