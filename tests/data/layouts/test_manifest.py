"""path,label CSV manifests: splits, multi-label rows, byte order marks."""

from __future__ import annotations

from pathlib import Path

import pytest

from mbt.config import DataConfig
from mbt.data.layouts import scan
from tests.data.layouts.files import make_video, make_wav


def test_csv_single_and_multi_label(tmp_path):
    root = tmp_path / "d"
    rows = ["path,label,audio,split"]
    for i in range(6):
        make_video(root / f"clips/v{i}.mp4")
        make_wav(root / f"sound/v{i}.wav")
        rows.append(
            f"clips/v{i}.mp4,{'dog' if i % 2 else 'cat'},sound/v{i}.wav,{'test' if i == 5 else 'train'}"
        )
    (root / "single.csv").write_text("\n".join(rows) + "\n")
    index = scan(root, DataConfig(manifest="single.csv", val_fraction=0.25))
    assert index.classes == ["cat", "dog"] and not index.multi_label
    assert [c.key for c in index.test] == ["clips/v5"]
    assert len(index.train) + len(index.val) == 5 and index.val
    assert all(c.audio.stem == c.video.stem for c in index.train)

    multi = ["path,label"] + [f"clips/v{i}.mp4,{'cat;dog' if i < 3 else 'bird'}" for i in range(6)]
    (root / "multi.csv").write_text("\n".join(multi) + "\n")
    with pytest.raises(ValueError, match="multi_label"):
        scan(root, DataConfig(manifest="multi.csv", missing_audio="silence"))
    index = scan(root / "multi.csv", DataConfig(multi_label=True, missing_audio="silence"))
    assert index.multi_label and index.classes == ["bird", "cat", "dog"]
    assert {c.labels for c in index.train + index.val} == {(1, 2), (0,)}


def test_manifest_with_a_byte_order_mark(tmp_path):
    """Spreadsheets save CSV as UTF-8 with a BOM; the header must still be recognised."""
    root = tmp_path / "d"
    make_video(root / "clips/a.mp4", audio=True)
    make_video(root / "clips/b.mp4", audio=True)
    text = "path,label\nclips/a.mp4,cat\nclips/b.mp4,cat\n"
    (root / "m.csv").write_bytes(text.encode("utf-8-sig"))
    index = scan(root / "m.csv", DataConfig())
    assert index.classes == ["cat"] and len(index.train + index.val) == 2


def test_audio_only_rows(tmp_path):
    """A row naming a sound file is an audio-only clip, or, when videos are required, reported."""
    root = tmp_path / "d"
    make_video(root / "a.mp4", audio=True)
    make_video(root / "b.mp4", audio=True)
    make_wav(root / "c.wav")
    (root / "m.csv").write_text("path,label\na.mp4,x\nb.mp4,y\nc.wav,x\n")
    with_video = scan(root / "m.csv", DataConfig())
    assert sorted(c.key for c in with_video.train + with_video.val) == ["a", "b"]
    assert [Path(p).name for p in with_video.report.unpaired_audio] == ["c.wav"]
    every = scan(root / "m.csv", DataConfig(), require_video=False)
    clips = {c.key: c for c in every.train + every.val}
    assert clips["c"].video is None and clips["c"].audio.name == "c.wav"
