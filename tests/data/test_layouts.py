"""scan(): every layout, stable class ids, pairing by stem, splits, and the problem report."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from mbt.config import DataConfig
from mbt.data.layouts import load_classes, save_classes, scan
from tests.data.media import sine, write_audio, write_video

RATE = 16000


def _video(path: Path, *, audio: bool = False, level: int = 0) -> Path:
    """A 0.5 s, 16x16 clip; ``level`` sets the grey value so files can be told apart."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = np.full((4, 16, 16, 3), level, np.uint8)
    return write_video(path, frames, 8, audio=sine(440, 0.5, RATE) if audio else None)


def _wav(path: Path, freq: float = 440.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_audio(path, sine(freq, 0.5, RATE), RATE)


def _ucf_stem(cls: str, g: int, c: int) -> str:
    return f"v_{cls}_g{g:02d}_c{c:02d}"


def _groups(clips) -> set[str]:
    return {c.group for c in clips}


def test_pjzuf_pairs_by_stem_not_listing_order(tmp_path):
    root = tmp_path / "d"
    # Audio for b and c only (and an orphan z): zip over sorted listings would pair a<->b.
    _video(root / "video/Cat/a.mp4", audio=True)
    _video(root / "video/Cat/b.mp4")
    _video(root / "video/Dog/c.mp4")
    _wav(root / "audio/Cat/b.wav")
    _wav(root / "audio/Dog/c.wav")
    _wav(root / "audio/Dog/z.wav")
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
                stem = _ucf_stem(cls, g, c)
                _video(root / f"video/{stem}.mp4")
                _wav(root / f"audio/{stem}.wav")
    index = scan(root, DataConfig(val_fraction=0.2, split_seed=1))
    assert index.classes == ["Jump", "Run"]
    assert index.val and index.train
    assert not _groups(index.train) & _groups(index.val)
    assert all(c.audio is not None and c.audio.stem == c.video.stem for c in index.train)


def test_one_clip_without_a_group_keeps_the_split_group_aware(tmp_path):
    root = tmp_path / "d"
    for cls in ("Jump", "Run"):
        for g in range(1, 6):
            for c in (1, 2):
                _video(root / f"video/{cls}/{_ucf_stem(cls, g, c)}.mp4", audio=True)
    _video(root / "video/Run/extra_take.mp4", audio=True)  # no g<gg> in its name
    for seed in range(4):
        index = scan(root, DataConfig(val_fraction=0.2, split_seed=seed))
        assert index.val and index.train
        train, val = _groups(index.train) - {None}, _groups(index.val) - {None}
        assert not train & val, seed


def test_class_ids_do_not_depend_on_creation_order(tmp_path):
    names = ["zebra", "Apple", "mango", "Banana"]
    keys = [(n, i) for n in names for i in range(2)]
    indexes = []
    for trial in range(2):
        random.Random(trial).shuffle(keys)
        root = tmp_path / f"d{trial}"
        for n, i in keys:
            _video(root / f"video/{n}/{n}{i}.mp4", audio=True)
        index = scan(root, DataConfig())
        save_classes(index, root / "classes.json")
        indexes.append(index)
    a, b = indexes
    assert a.classes == b.classes == ["Apple", "Banana", "mango", "zebra"]
    label = lambda idx: {c.key: c.labels for c in idx.train + idx.val}  # noqa: E731
    assert label(a) == label(b)
    assert [c.key for c in a.val] == [c.key for c in b.val]  # same split too
    assert load_classes(tmp_path / "d0/classes.json") == a.classes


def _ucf_tree(root: Path, audio_classes: set[str] = frozenset()) -> None:
    # The HandstandPushups folder holds v_HandStandPushups_* files, as in the real data set.
    for folder, stem_cls in (("ApplyLipstick", "ApplyLipstick"), ("HandstandPushups", "HandStandPushups"), ("YoYo", "YoYo")):  # fmt: skip
        for g in range(1, 5):
            for c in (1, 2):
                _video(
                    root / folder / f"{_ucf_stem(stem_cls, g, c)}.avi",
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
                rel = f"{folder}/{_ucf_stem(stem_cls, g, c)}.avi"
                (test if g == 1 else train).append(rel if g == 1 else f"{rel} {i + 1}")
    train.append("YoYo/v_YoYo_g09_c01.avi 3")  # listed, not on disk
    (lists / "trainlist01.txt").write_text("\n".join(train) + "\n")
    (lists / "testlist01.txt").write_text("\n".join(test) + "\n")
    index = scan(root, DataConfig(missing_audio="silence", val_fraction=0.3))
    assert index.report.layout == "ucf101"
    assert index.classes == ["ApplyLipstick", "HandstandPushups", "YoYo"]  # classInd order
    assert len(index.test) == 6 and _groups(index.test) == {"g01"}
    assert {c.labels[0] for c in index.test} == {0, 1, 2}
    hs = [c for c in index.train + index.val if "HandStand" in c.key]
    assert len(hs) == 6 and all(c.labels == (1,) for c in hs)
    assert not _groups(index.train) & _groups(index.val) and index.val
    assert index.report.missing == ["YoYo/v_YoYo_g09_c01.avi"]
    assert len(index.report.no_audio) == 24 and not any(c.has_audio for c in index.train)


def test_ucf101_without_lists_and_require_audio(tmp_path):
    root = tmp_path / "ucf"
    _ucf_tree(root, audio_classes={"ApplyLipstick", "YoYo"})
    index = scan(root, DataConfig(val_fraction=0.25))
    assert index.classes == ["ApplyLipstick", "HandstandPushups", "YoYo"]
    assert len(index.report.no_audio) == 8  # HandstandPushups has no sound: skipped by default
    assert not _groups(index.train) & _groups(index.val)
    kept = scan(root, DataConfig(require_audio=True))
    assert kept.classes == ["ApplyLipstick", "YoYo"]  # contiguous ids after the remap
    assert {c.labels[0] for c in kept.train + kept.val} == {0, 1}
    assert kept.report.dropped_classes == ["HandstandPushups"]
    assert kept.source_ids == {"ApplyLipstick": 0, "YoYo": 2}
    save_classes(kept, tmp_path / "classes.json")
    assert "source_ids" in (tmp_path / "classes.json").read_text()


def test_csv_single_and_multi_label(tmp_path):
    root = tmp_path / "d"
    rows = ["path,label,audio,split"]
    for i in range(6):
        _video(root / f"clips/v{i}.mp4")
        _wav(root / f"sound/v{i}.wav")
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


def test_vggsound_csv_tolerates_missing_files(tmp_path):
    root = tmp_path / "vgg"
    rows = []
    for i in range(10):
        ytid, start = f"id{i:03d}-_x", 30 * i
        split = "test" if i >= 8 else "train"
        rows.append(f'{ytid},{start},"{"dog barking" if i % 2 else "car, engine"}",{split}')
        if i in (3, 6):
            continue  # gone from YouTube
        name = f"{ytid}_{start:06d}.mp4" if i % 3 else f"{ytid}_{start}.mp4"
        _video(root / split / name, audio=True)
    (root / "vggsound.csv").write_text("\n".join(rows) + "\n")
    index = scan(root, DataConfig(manifest="vggsound.csv"))
    assert index.classes == ["car, engine", "dog barking"]
    assert sorted(index.report.missing) == ["id003-_x_000090", "id006-_x_000180"]
    assert len(index.test) == 2 and len(index.train) + len(index.val) == 6
    assert "2 of 10 rows" in index.report.format()


def test_class_ids_do_not_depend_on_missing_files(tmp_path):
    """Two machines missing different VGGSound / manifest files must agree on the class ids."""
    root = tmp_path / "vgg"
    rows = [f"gone{i},10,alpha,train" for i in range(2)]  # every "alpha" video has vanished
    for i in range(4):
        rows.append(f"id{i},10,{'beta' if i % 2 else 'gamma'},train")
        _video(root / "train" / f"id{i}_000010.mp4", audio=True)
    (root / "vggsound.csv").write_text("\n".join(rows) + "\n")
    index = scan(root, DataConfig(manifest="vggsound.csv"))
    assert index.classes == ["alpha", "beta", "gamma"]
    assert {c.key: c.labels for c in index.train + index.val}["id1_000010"] == (1,)
    lines = ["path,label", "train/nothing.mp4,alpha"]
    lines += [f"train/id{i}_000010.mp4,{'beta' if i % 2 else 'gamma'}" for i in range(4)]
    (root / "m.csv").write_text("\n".join(lines) + "\n")
    index = scan(root / "m.csv", DataConfig())
    assert index.classes == ["alpha", "beta", "gamma"] and len(index.report.missing) == 1


def test_manifest_with_a_byte_order_mark(tmp_path):
    """Spreadsheets save CSV as UTF-8 with a BOM; the header must still be recognised."""
    root = tmp_path / "d"
    _video(root / "clips/a.mp4", audio=True)
    _video(root / "clips/b.mp4", audio=True)
    text = "path,label\nclips/a.mp4,cat\nclips/b.mp4,cat\n"
    (root / "m.csv").write_bytes(text.encode("utf-8-sig"))
    index = scan(root / "m.csv", DataConfig())
    assert index.classes == ["cat"] and len(index.train + index.val) == 2


def test_missing_audio_policies(tmp_path):
    root = tmp_path / "d"
    for i in range(4):
        _video(root / f"video/A/a{i}.mp4", audio=i > 0)  # a0: no track, no wav
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
        _video(root / f"video/A/ok{i}.mp4", audio=True)
    (root / "video/A/empty.mp4").write_bytes(b"")
    (root / "video/A/corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(2048))
    _video(root / "video/A/badwav.mp4", audio=True)
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


def test_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        scan(tmp_path / "nope", DataConfig())
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="cannot tell the data set layout"):
        scan(tmp_path / "empty", DataConfig())
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="bad.csv: expected a header"):
        scan(tmp_path / "bad.csv", DataConfig())


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
    _video(root / "video" / "--aa_30.0.mp4", audio=True)  # <YTID>_<start:.1f>
    _video(root / "video" / "bb_cc.mp4", audio=True)  # <YTID>
    _wav(root / "audio" / "dd_5500.wav")  # <YTID>_<int(start*1000)>, audio only
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


def test_vggsound_header_row_and_decimal_start(tmp_path):
    root = tmp_path / "vgg"
    rows = ["youtube_id,start_seconds,label,split", "aa,30,dog,train", "bb,12.5,cat,test"]
    _video(root / "train" / "aa_000030.mp4", audio=True)
    _video(root / "test" / "bb_12500.mp4", audio=True)
    (root / "vggsound.csv").write_text("\n".join(rows) + "\n")
    index = scan(root, DataConfig(manifest="vggsound.csv"))
    assert index.classes == ["cat", "dog"] and not index.report.missing
    assert [c.key for c in index.test] == ["bb_12500ms"]
    assert [c.key for c in index.train + index.val] == ["aa_000030"]
