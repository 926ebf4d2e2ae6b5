"""PJZUF layout: pairing by path or stem (never listing order), classes from folders or stems."""

from __future__ import annotations

from pathlib import Path

from mbt.config import DataConfig
from mbt.data.layouts import scan
from tests.data.layouts.files import groups, make_video, make_wav, ucf_stem


def test_pjzuf_pairs_by_stem_not_listing_order(tmp_path):
    root = tmp_path / "d"
    # Audio for b and c only (and an orphan z): zip over sorted listings would pair a<->b.
    make_video(root / "video/Cat/a.mp4", audio=True)
    make_video(root / "video/Cat/b.mp4")
    make_video(root / "video/Dog/c.mp4")
    make_wav(root / "audio/Cat/b.wav")
    make_wav(root / "audio/Dog/c.wav")
    make_wav(root / "audio/Dog/z.wav")
    index = scan(root, DataConfig(val_fraction=0.5))
    clips = {c.key: c for c in index.train + index.val}
    assert index.classes == ["Cat", "Dog"]
    assert clips["Cat/a"].audio is None and clips["Cat/a"].has_audio  # its own track
    assert clips["Cat/b"].audio.stem == "b" and clips["Dog/c"].audio.stem == "c"
    assert clips["Dog/c"].labels == (1,)
    r = index.report
    assert [Path(p).name for p in r.unpaired_audio] == ["z.wav"]
    assert [Path(p).name for p in r.unpaired_video] == ["a.mp4"]


def test_pjzuf_flat_ucf_stems_group_aware(tmp_path):
    root = tmp_path / "d"
    for cls in ("Jump", "Run"):
        for g in range(1, 6):
            for c in (1, 2):
                stem = ucf_stem(cls, g, c)
                make_video(root / f"video/{stem}.mp4")
                make_wav(root / f"audio/{stem}.wav")
    index = scan(root, DataConfig(val_fraction=0.2, split_seed=1))
    assert index.classes == ["Jump", "Run"]
    assert index.val and index.train
    assert not groups(index.train) & groups(index.val)
    assert all(c.audio is not None and c.audio.stem == c.video.stem for c in index.train)
