"""PJZUF layout: pairing by path or stem (never listing order), classes from folders or stems."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

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


def test_split_folders_are_the_split_not_classes(tmp_path):
    root = tmp_path / "d"
    for split, n in (("train", 2), ("val", 1)):
        for cls in ("Drum", "Harp"):
            for i in range(n):
                make_video(root / f"video/{split}/{cls}/{cls}_{split}{i}.mp4")
                make_wav(root / f"audio/{split}/{cls}/{cls}_{split}{i}.wav")
    index = scan(root, DataConfig())
    assert index.classes == ["Drum", "Harp"]  # never "train" or "val"
    assert sorted(c.key for c in index.val) == ["val/Drum/Drum_val0", "val/Harp/Harp_val0"]
    assert len(index.train) == 4 and not index.test
    assert all(c.audio.stem == c.video.stem for c in index.train + index.val)
    assert "split folders: train -> train, val -> val" in index.report.format()


def test_split_folders_above_video_and_audio(tmp_path):
    root = tmp_path / "d"
    for split in ("train", "test"):  # no val folder: validation is held out of train
        for cls in ("Drum", "Harp"):
            for i in range(3):
                make_video(root / f"{split}/video/{cls}/{split}{i}.mp4")
                make_wav(root / f"{split}/audio/{cls}/{split}{i}.wav")
    index = scan(root, DataConfig(val_fraction=0.34))
    assert index.report.layout == "pjzuf" and index.classes == ["Drum", "Harp"]
    assert len(index.test) == 6 and all(c.key.startswith("test/") for c in index.test)
    assert len(index.val) == 2 and all(c.key.startswith("train/") for c in index.val)
    assert len(index.train) == 4


def test_numeric_class_folders_map_to_ids_by_value(tmp_path):
    root = tmp_path / "d"
    for cls in ("0", "1", "2", "10", "100"):
        for i in range(2):
            make_video(root / f"video/{cls}/c{cls}_{i}.mp4", audio=True)
    index = scan(root, DataConfig(val_fraction=0.5))
    assert index.classes == ["0", "1", "2", "10", "100"]  # not "0", "1", "10", "100", "2"
    ids = {c.key.split("/")[0]: c.labels[0] for c in index.train + index.val}
    assert ids == {"0": 0, "1": 1, "2": 2, "10": 3, "100": 4}


def test_case_only_twins_are_one_class_and_reported(tmp_path):
    root = tmp_path / "d"
    for folder in ("HandstandPushups", "HandStandPushups", "Drum"):
        for i in range(2):
            make_video(root / f"video/{folder}/{folder}{i}.mp4", audio=True)
    index = scan(root, DataConfig(val_fraction=0.5))
    assert index.classes == ["Drum", "HandStandPushups"]  # one spelling: the first in order
    assert index.report.merged_classes == ["HandStandPushups = HandstandPushups"]
    assert "classes merged (names differ only in case): HandStandPushups = HandstandPushups" in (
        index.report.format()
    )


def test_classes_without_any_audio_are_listed_and_follow_missing_audio(tmp_path):
    root = tmp_path / "d"
    for cls, sound in (("Drum", "wav"), ("Harp", "track"), ("Mime", None), ("Yoga", None)):
        for i in range(2):
            make_video(root / f"video/{cls}/{cls}{i}.mp4", audio=sound == "track")
            if sound == "wav":
                make_wav(root / f"audio/{cls}/{cls}{i}.wav")
    index = scan(root, DataConfig(val_fraction=0.5))  # missing_audio=skip (the default)
    r = index.report
    assert index.classes == ["Drum", "Harp"]  # the head: exactly the classes with sound
    assert r.silent_classes == r.dropped_classes == ["Mime", "Yoga"]
    text = r.format()
    assert re.search(r"\nclasses\s+2 \(of 4 found\)", text)
    assert re.search(r"classes without audio\s+2 \(dropped from the head\)", text)
    assert "classes without audio: Mime; Yoga" in text
    assert index.source_ids == {"Drum": 0, "Harp": 1}
    silent = scan(root, DataConfig(val_fraction=0.5, missing_audio="silence"))
    assert silent.classes == ["Drum", "Harp", "Mime", "Yoga"]
    assert "2 (kept with silent audio)" in silent.report.format()
    with pytest.raises(ValueError, match="no audio"):
        scan(root, DataConfig(missing_audio="error"))
    assert len(scan(root, DataConfig(), need_audio=False).classes) == 4  # video-only model


def test_an_extra_top_folder_is_read_through(tmp_path):
    root = tmp_path / "unzipped"
    for cls in ("Drum", "Harp"):
        for i in range(2):
            make_video(root / f"PJZUF-C101/video/{cls}/{cls}{i}.mp4", audio=True)
    (root / "__MACOSX").mkdir()  # what macOS zips add beside the top folder
    index = scan(root, DataConfig(val_fraction=0.5))
    assert index.classes == ["Drum", "Harp"]
    assert index.report.root == str(root / "PJZUF-C101")
    assert f"the data set is the only folder inside {root}" in index.report.format()
