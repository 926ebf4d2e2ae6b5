"""scan(): stable class ids, format choice and clear errors."""

from __future__ import annotations

import random
import types
import typing

import pytest

from mbt.config import DataConfig
from mbt.data import layouts
from mbt.data.layouts import FORMATS, ScanReport, scan
from mbt.data.layouts.base import Candidate, Found, Source
from tests.data.layouts.files import make_video


def test_class_ids_do_not_depend_on_creation_order(tmp_path):
    names = ["zebra", "Apple", "mango", "Banana"]
    keys = [(n, i) for n in names for i in range(2)]
    indexes = []
    for trial in range(2):
        random.Random(trial).shuffle(keys)
        root = tmp_path / f"d{trial}"
        for n, i in keys:
            make_video(root / f"video/{n}/{n}{i}.mp4", audio=True)
        indexes.append(scan(root, DataConfig()))
    a, b = indexes
    assert a.classes == b.classes == ["Apple", "Banana", "mango", "zebra"]
    label = lambda idx: {c.key: c.labels for c in idx.train + idx.val}  # noqa: E731
    assert label(a) == label(b)
    assert [c.key for c in a.val] == [c.key for c in b.val]  # same split too


def test_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        scan(tmp_path / "nope", DataConfig())
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="cannot tell the data set layout"):
        scan(tmp_path / "empty", DataConfig())
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="bad.csv: expected a header"):
        scan(tmp_path / "bad.csv", DataConfig())


def test_every_format_keeps_the_contract():
    """Each registered module has the names scan() reads; folder layouts are config choices."""
    names = [f.NAME for f in FORMATS]
    assert len(set(names)) == len(names)
    allowed = typing.get_args(typing.get_type_hints(DataConfig)["layout"])
    for fmt in FORMATS:
        assert fmt.LAYOUT in allowed and fmt.DESCRIPTION
        assert callable(fmt.detect) and callable(fmt.gather)


def test_a_new_format_is_one_module_and_one_registry_line(tmp_path, monkeypatch):
    """A table format added to FORMATS is detected, gathered, probed and split like the rest."""

    def detect(source: Source) -> bool:
        return source.table.rows[0] == ["clip", "class"]

    def gather(source: Source, report: ScanReport) -> Found:
        rows = source.table.rows[1:]
        cands = [Candidate(tmp_path / f"{a}.mp4", None, (b,), a) for a, b in rows]
        return Found(cands, sorted({b for _, b in rows}))

    plain = types.SimpleNamespace(
        NAME="csv (clip,class)", LAYOUT="csv", DESCRIPTION="a header 'clip,class'",
        detect=detect, gather=gather,
    )  # fmt: skip
    for i in range(4):
        make_video(tmp_path / f"c{i}.mp4", audio=True)
    (tmp_path / "list.csv").write_text(
        "clip,class\n" + "".join(f"c{i},k{i % 2}\n" for i in range(4))
    )
    with pytest.raises(ValueError, match="expected a header 'path,label"):
        scan(tmp_path / "list.csv", DataConfig())
    monkeypatch.setattr(layouts, "FORMATS", (*layouts.FORMATS, plain))
    index = scan(tmp_path / "list.csv", DataConfig())
    assert index.report.layout == "csv (clip,class)" and index.classes == ["k0", "k1"]
    assert sorted(c.key for c in index.train + index.val) == ["c0", "c1", "c2", "c3"]
