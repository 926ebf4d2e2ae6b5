"""AudioSet segment CSVs: official class order, multi-label, audio-only segments."""

from __future__ import annotations

from pathlib import Path

import pytest

from mbt.config import DataConfig
from mbt.data.layouts import scan
from tests.data.layouts.files import make_video, make_wav

AUDIOSET_CLASSES = """index,mid,display_name
0,/m/09x0r,"Speech"
1,/m/0bt9lr,"Dog"
2,/m/0mkg,"Accordion"
"""


def _audioset(root: Path, header: bool = True) -> Path:
    """A tiny AudioSet folder: 4 segments, one missing, one audio-only (a wav)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "class_labels_indices.csv").write_text(AUDIOSET_CLASSES)
    lines = [
        "# Segments csv created Sun Mar  5 10:54:31 2017",
        "# num_ytids=4, num_segs=4, num_unique_labels=3, num_positive_labels=5",
        "# YTID, start_seconds, end_seconds, positive_labels",
    ][: 3 if header else 0]
    lines += [
        '--aa, 30.000, 40.000, "/m/09x0r,/m/0bt9lr"',
        'bb_cc, 0.000, 10.000, "/m/0mkg"',
        'dd, 5.500, 15.500, "/m/0bt9lr"',
        'gone, 10.000, 20.000, "/m/0mkg"',
    ]
    (root / "segments.csv").write_text("\n".join(lines) + "\n")
    make_video(root / "video" / "--aa_30.0.mp4", audio=True)  # <YTID>_<start:.1f>
    make_video(root / "video" / "bb_cc.mp4", audio=True)  # <YTID>
    make_wav(root / "audio" / "dd_5500.wav")  # <YTID>_<int(start*1000)>, audio only
    return root


def test_audioset_segment_csv(tmp_path):
    root = _audioset(tmp_path / "as")
    cfg = DataConfig(layout="csv", manifest="segments.csv", multi_label=True)
    index = scan(root, cfg, require_video=False)
    assert index.classes == ["Speech", "Dog", "Accordion"]  # the file's index order, not sorted
    assert index.multi_label and index.report.missing == ["gone_000010"]
    clips = {c.key: c for c in index.train + index.val + index.test}
    assert clips["--aa_000030"].labels == (0, 1) and clips["bb_cc_000000"].labels == (2,)
    assert clips["dd_5500ms"].video is None and clips["dd_5500ms"].audio.name == "dd_5500.wav"
    assert "1 of 4 rows" in index.report.format()
    with_video = scan(root, cfg)  # the audio-only segment is reported, not silently lost
    assert len(with_video.train + with_video.val + with_video.test) == 2
    assert [Path(p).name for p in with_video.report.unpaired_audio] == ["dd_5500.wav"]
    with pytest.raises(ValueError, match="multi_label"):
        scan(root, DataConfig(layout="csv", manifest="segments.csv"))


def test_audioset_detected_by_shape_and_classes_under_root(tmp_path):
    root = _audioset(tmp_path / "as", header=False)
    (root / "lists").mkdir()
    (root / "segments.csv").rename(root / "lists" / "segments.csv")
    index = scan(root, DataConfig(manifest="lists/segments.csv", multi_label=True))
    assert index.classes == ["Speech", "Dog", "Accordion"]
    assert index.report.layout == "csv (AudioSet segments)"
    assert len(index.train + index.val + index.test) == 2  # video clips (require_video)
    (root / "class_labels_indices.csv").unlink()
    with pytest.raises(ValueError, match="class_labels_indices.csv"):
        scan(root, DataConfig(manifest="lists/segments.csv", multi_label=True))
