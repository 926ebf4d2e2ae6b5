"""--labels files: AudioSet, VGGSound, classInd.txt, JSON and plain lists, told apart by content."""

from __future__ import annotations

import pytest

from mbt.data.labels import read_labels


def test_audioset_class_labels_indices(tmp_path):
    path = tmp_path / "class_labels_indices.csv"
    path.write_text(
        "index,mid,display_name\n"
        '1,/m/0bt9lr,"Dog"\n'
        '0,/m/09x0r,"Speech"\n'
        '2,/m/015p6,"Bird vocalization, bird call, bird song"\n'
    )
    labels = read_labels(path)
    assert labels.names == ["Speech", "Dog", "Bird vocalization, bird call, bird song"]
    assert labels.kind == "audioset" and labels.multi_label
    assert "3 names" in labels.describe() and "multi-label" in labels.describe()


def test_vggsound_csv_gives_its_sorted_labels(tmp_path):
    path = tmp_path / "vggsound.csv"
    path.write_text(
        "---g-f_I2yQ,1,people marching,test\n"
        '--0PQM4-hqg,30,"cattle, bovinae cowbell",train\n'
        "--56QUhyDQM,185,playing tennis,train\n"
        "--5OkAjCI7g,40,people marching,train\n"
    )
    labels = read_labels(path)
    assert labels.names == ["cattle, bovinae cowbell", "people marching", "playing tennis"]
    assert labels.kind == "vggsound" and not labels.multi_label


def test_classind_json_and_one_name_a_line(tmp_path):
    (tmp_path / "classInd.txt").write_text("2 ApplyLipstick\n1 ApplyEyeMakeup\n3 Archery\n")
    assert read_labels(tmp_path / "classInd.txt").names == [
        "ApplyEyeMakeup", "ApplyLipstick", "Archery",
    ]  # fmt: skip
    (tmp_path / "names.json").write_text('["b", "a"]')
    assert read_labels(tmp_path / "names.json").names == ["b", "a"]
    (tmp_path / "classes.txt").write_text("air conditioning noise\n\nairplane flyby\n")
    labels = read_labels(tmp_path / "classes.txt")
    assert labels.names == ["air conditioning noise", "airplane flyby"] and labels.kind == "lines"


def test_bad_labels_files_are_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt: no such labels file"):
        read_labels(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="empty.txt: empty labels file"):
        read_labels(tmp_path / "empty.txt")
    (tmp_path / "twice.txt").write_text("a\nb\na\n")
    with pytest.raises(ValueError, match=r"twice.txt: class names must be unique, \['a'\]"):
        read_labels(tmp_path / "twice.txt")
    (tmp_path / "gap.txt").write_text("1 a\n3 b\n")
    with pytest.raises(ValueError, match="consecutive ids"):
        read_labels(tmp_path / "gap.txt")
