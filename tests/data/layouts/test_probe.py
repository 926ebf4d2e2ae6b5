"""Probing: unreadable files are reported and left out; clips without sound follow missing_audio."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mbt.config import DataConfig
from mbt.data.layouts import scan
from tests.data.layouts.files import make_video


def test_missing_audio_policies(tmp_path):
    root = tmp_path / "d"
    for i in range(4):
        make_video(root / f"video/A/a{i}.mp4", audio=i > 0)  # a0: no track, no wav
    skip = scan(root, DataConfig())
    assert len(skip.train + skip.val) == 3 and len(skip.report.no_audio) == 1
    assert "1 (skipped)" in skip.report.format()
    silence = scan(root, DataConfig(missing_audio="silence"))
    flags = {c.key: c.has_audio for c in silence.train + silence.val}
    assert flags == {"A/a0": False, "A/a1": True, "A/a2": True, "A/a3": True}
    with pytest.raises(ValueError, match=r"a0\.mp4: no audio"):
        scan(root, DataConfig(missing_audio="error"))
    video_only = scan(root, DataConfig(missing_audio="error"), need_audio=False)
    assert len(video_only.train + video_only.val) == 4


def test_unreadable_files_are_reported_and_left_out(tmp_path):
    root = tmp_path / "d"
    for i in range(3):
        make_video(root / f"video/A/ok{i}.mp4", audio=True)
    (root / "video/A/empty.mp4").write_bytes(b"")
    (root / "video/A/corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(2048))
    make_video(root / "video/A/badwav.mp4", audio=True)
    (root / "audio/A").mkdir(parents=True)
    (root / "audio/A/badwav.wav").write_bytes(b"RIFF0000garbage")
    index = scan(root, DataConfig())
    keys = {c.key for c in index.train + index.val}
    assert keys == {"A/ok0", "A/ok1", "A/ok2", "A/badwav"}  # badwav falls back to its track
    bad = {Path(p).name: why for p, why in index.report.unreadable}
    assert set(bad) == {"empty.mp4", "corrupt.mp4", "badwav.wav"}
    assert "empty" in bad["empty.mp4"]
    text = index.report.format()
    assert "unreadable files           3" in text and "corrupt.mp4" in text
