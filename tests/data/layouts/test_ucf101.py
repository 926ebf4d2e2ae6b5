"""UCF101 layout: official lists, classInd order, case-insensitive names, require_audio."""

from __future__ import annotations

from pathlib import Path

from mbt.config import DataConfig
from mbt.data.layouts import scan
from tests.data.layouts.files import groups, make_video, ucf_stem


def _ucf_tree(root: Path, audio_classes: set[str] = frozenset()) -> None:
    # The HandstandPushups folder holds v_HandStandPushups_* files, as in the real data set.
    for folder, stem_cls in (("ApplyLipstick", "ApplyLipstick"), ("HandstandPushups", "HandStandPushups"), ("YoYo", "YoYo")):  # fmt: skip
        for g in range(1, 5):
            for c in (1, 2):
                make_video(
                    root / folder / f"{ucf_stem(stem_cls, g, c)}.avi",
                    audio=folder in audio_classes,
                )


def test_ucf101_official_lists(tmp_path):
    root = tmp_path / "ucf"
    _ucf_tree(root / "UCF-101")
    lists = root / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 ApplyLipstick\n2 HandstandPushups\n3 YoYo\n")
    train, test = [], []
    for i, (folder, stem_cls) in enumerate((("ApplyLipstick",) * 2, ("HandstandPushups", "HandStandPushups"), ("YoYo",) * 2)):  # fmt: skip
        for g in range(1, 5):
            for c in (1, 2):
                rel = f"{folder}/{ucf_stem(stem_cls, g, c)}.avi"
                (test if g == 1 else train).append(rel if g == 1 else f"{rel} {i + 1}")
    train.append("YoYo/v_YoYo_g09_c01.avi 3")  # listed, not on disk
    (lists / "trainlist01.txt").write_text("\n".join(train) + "\n")
    (lists / "testlist01.txt").write_text("\n".join(test) + "\n")
    index = scan(root, DataConfig(missing_audio="silence", val_fraction=0.3))
    assert index.report.layout == "ucf101"
    assert index.classes == ["ApplyLipstick", "HandstandPushups", "YoYo"]  # classInd order
    assert len(index.test) == 6 and groups(index.test) == {"g01"}
    assert {c.labels[0] for c in index.test} == {0, 1, 2}
    hs = [c for c in index.train + index.val if "HandStand" in c.key]
    assert len(hs) == 6 and all(c.labels == (1,) for c in hs)
    assert not groups(index.train) & groups(index.val) and index.val
    assert index.report.missing == ["YoYo/v_YoYo_g09_c01.avi"]
    assert len(index.report.no_audio) == 24 and not any(c.has_audio for c in index.train)


def test_ucf101_without_lists_and_require_audio(tmp_path):
    root = tmp_path / "ucf"
    _ucf_tree(root, audio_classes={"ApplyLipstick", "YoYo"})
    index = scan(root, DataConfig(val_fraction=0.25))
    # HandstandPushups has no sound: its clips are skipped by default, and so is the class
    # (a head never has a class without clips).
    assert index.classes == ["ApplyLipstick", "YoYo"]
    assert len(index.report.no_audio) == 8
    assert index.report.silent_classes == index.report.dropped_classes == ["HandstandPushups"]
    assert not groups(index.train) & groups(index.val)
    kept = scan(root, DataConfig(val_fraction=0.25, missing_audio="silence"))
    assert kept.classes == ["ApplyLipstick", "HandstandPushups", "YoYo"]
    assert kept.report.silent_classes == ["HandstandPushups"] and not kept.report.dropped_classes
    kept = scan(root, DataConfig(require_audio=True))
    assert kept.classes == ["ApplyLipstick", "YoYo"]  # contiguous ids after the remap
    assert {c.labels[0] for c in kept.train + kept.val} == {0, 1}
    assert kept.report.dropped_classes == ["HandstandPushups"]
    assert kept.source_ids == {"ApplyLipstick": 0, "YoYo": 2}
