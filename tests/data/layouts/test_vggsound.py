"""VGGSound CSVs: missing videos, header rows, decimal starts, download-independent ids."""

from __future__ import annotations

from mbt.config import DataConfig
from mbt.data.layouts import scan
from tests.data.layouts.files import make_video


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
        make_video(root / split / name, audio=True)
    (root / "vggsound.csv").write_text("\n".join(rows) + "\n")
    index = scan(root, DataConfig(manifest="vggsound.csv"))
    assert index.classes == ["car, engine", "dog barking"]
    assert sorted(index.report.missing) == ["id003-_x_000090", "id006-_x_000180"]
    assert len(index.test) == 2 and len(index.train) + len(index.val) == 6
    assert "2 of 10 rows" in index.report.format()


def test_vggsound_header_row_and_decimal_start(tmp_path):
    root = tmp_path / "vgg"
    rows = ["youtube_id,start_seconds,label,split", "aa,30,dog,train", "bb,12.5,cat,test"]
    make_video(root / "train" / "aa_000030.mp4", audio=True)
    make_video(root / "test" / "bb_12500.mp4", audio=True)
    (root / "vggsound.csv").write_text("\n".join(rows) + "\n")
    index = scan(root, DataConfig(manifest="vggsound.csv"))
    assert index.classes == ["cat", "dog"] and not index.report.missing
    assert [c.key for c in index.test] == ["bb_12500ms"]
    assert [c.key for c in index.train + index.val] == ["aa_000030"]


def test_class_ids_do_not_depend_on_missing_files(tmp_path):
    """Two machines missing different VGGSound / manifest files must agree on the class ids."""
    root = tmp_path / "vgg"
    rows = [f"gone{i},10,alpha,train" for i in range(2)]  # every "alpha" video has vanished
    for i in range(4):
        rows.append(f"id{i},10,{'beta' if i % 2 else 'gamma'},train")
        make_video(root / "train" / f"id{i}_000010.mp4", audio=True)
    (root / "vggsound.csv").write_text("\n".join(rows) + "\n")
    index = scan(root, DataConfig(manifest="vggsound.csv"))
    assert index.classes == ["alpha", "beta", "gamma"]
    assert {c.key: c.labels for c in index.train + index.val}["id1_000010"] == (1,)
    lines = ["path,label", "train/nothing.mp4,alpha"]
    lines += [f"train/id{i}_000010.mp4,{'beta' if i % 2 else 'gamma'}" for i in range(4)]
    (root / "m.csv").write_text("\n".join(lines) + "\n")
    index = scan(root / "m.csv", DataConfig())
    assert index.classes == ["alpha", "beta", "gamma"] and len(index.report.missing) == 1
