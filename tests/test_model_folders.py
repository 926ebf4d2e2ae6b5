"""Every model folder works with every command: ``predict``, ``evaluate``, ``explain`` and
``export`` read a checkpoint folder, a ``save_pretrained`` folder and the folders written by
``mbt convert scenic|ast --labels FILE`` (run directories: tests/test_cli.py), and label names
travel with the weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mbt.cli import main
from mbt.config import replace
from mbt.data.demo import CLASSES
from mbt.loading import load_model
from mbt.model import MBT
from tests.model.checkpoints import write_ast_pth
from tests.model.test_convert_scenic import CFG, random_model, to_flax, write_checkpoint

TINY = [
    "model.width=32", "model.depth=2", "model.num_heads=2", "model.fusion_layer=1",
    "data.val_fraction=0.4", "data.num_workers=0", "data.test_clips=2",
    "train.batch_size=4", "train.threads=1", "train.device=cpu", "train.epochs=1",
]  # fmt: skip
SOURCES = ("checkpoint", "pretrained", "scenic", "ast")


def _ok(*args: str) -> None:
    assert main(list(args)) == 0, args


@pytest.fixture(scope="module")
def folders(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One model folder of each kind, all naming the demo's six classes."""
    root = tmp_path_factory.mktemp("folders")
    run = root / "run"
    _ok("train", "--config", "demo", "--data", str(demo_root), "--out", str(run), *TINY)
    best = run / "checkpoints" / "best"  # a checkpoint folder is a model folder
    MBT.from_pretrained(best).save_pretrained(root / "pretrained")  # names travel with it

    audioset = root / "class_labels_indices.csv"  # AudioSet's format: a multi-label model
    rows = [f'{i},/m/{i:05d},"{name}"' for i, name in enumerate(CLASSES)]
    audioset.write_text("index,mid,display_name\n" + "\n".join(rows) + "\n")
    scenic = random_model(replace(CFG, num_classes=len(CLASSES)))
    write_checkpoint(root / "checkpoint_7", to_flax(scenic), "params")
    _ok(
        "convert", "scenic", str(root / "checkpoint_7"), str(root / "scenic"),
        "--fusion-layer", "1", "--audio-frames", "32", "--mel-bins", "16", "--image-size", "16",
        "--labels", str(audioset),
    )  # fmt: skip

    names = root / "classes.txt"  # one name a line
    names.write_text("\n".join(CLASSES) + "\n")
    write_ast_pth(root / "ast.pth", width=32, depth=2, mlp_ratio=2.0, classes=len(CLASSES))
    _ok("convert", "ast", str(root / "ast.pth"), str(root / "ast"), "--labels", str(names))
    return {
        "checkpoint": run / "checkpoints" / "best", "pretrained": root / "pretrained",
        "scenic": root / "scenic", "ast": root / "ast",
    }  # fmt: skip


@pytest.fixture(scope="module")
def clip(demo_root: Path) -> Path:
    return sorted((demo_root / "video").rglob("*.mp4"))[0]  # has its own sound track


def test_convert_labels_go_into_config_json(folders, capsys):
    scenic = json.loads((folders["scenic"] / "config.json").read_text())
    assert scenic["class_names"] == list(CLASSES) and scenic["data"]["multi_label"]
    ast = json.loads((folders["ast"] / "config.json").read_text())
    assert ast["class_names"] == list(CLASSES) and "data" not in ast
    assert load_model(folders["ast"]).class_names == list(CLASSES)


def test_predict_on_a_converted_scenic_folder_prints_label_names(folders, clip, capsys):
    capsys.readouterr()
    _ok("predict", str(folders["scenic"]), str(clip), "--top-k", "3")
    out = capsys.readouterr().out.splitlines()
    ranked = out[1:]
    assert len(ranked) == 3 and all(line.split()[1] in CLASSES for line in ranked)


@pytest.mark.parametrize("source", SOURCES)
def test_predict(folders, clip, source, capsys):
    capsys.readouterr()
    _ok("predict", str(folders[source]), str(clip), "--top-k", "6", "--json")
    result = json.loads(capsys.readouterr().out)
    assert sorted(p["label"] for p in result["predictions"]) == sorted(CLASSES)
    total = sum(p["probability"] for p in result["predictions"])
    if source == "scenic":  # AudioSet labels: multi-label, one sigmoid per class
        assert result["modalities"] == ["video", "audio"] and total > 1.0
    elif source == "ast":  # audio-only: the clip's own sound track
        assert result["modalities"] == ["audio"] and total == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("source", SOURCES)
def test_evaluate(folders, demo_root, source, capsys):
    capsys.readouterr()
    _ok("evaluate", str(folders[source]), "--data", str(demo_root), "--batch-size", "4")
    out = capsys.readouterr().out
    assert "val split:" in out
    assert ("audio only" in out) == (source != "ast")  # ablations of a two-stream model


@pytest.mark.parametrize("source", SOURCES)
def test_explain(folders, clip, source, tmp_path, capsys):
    capsys.readouterr()
    status = main(["explain", str(folders[source]), str(clip), "--out", str(tmp_path / "x")])
    if source == "ast":  # no bottlenecks to show: a one-line answer, not a traceback
        assert status == 2
        assert "explain needs bottleneck fusion layers" in capsys.readouterr().err
        return
    assert status == 0
    assert capsys.readouterr().out.split()[1] in CLASSES  # "predicted: <name> | ..."
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == [
        "audio_attention.png", "video_attention.png",
    ]  # fmt: skip


@pytest.mark.parametrize("source", SOURCES)
def test_export(folders, source, tmp_path, capsys):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    capsys.readouterr()
    _ok("export", "onnx", str(folders[source]), str(tmp_path / "m.onnx"), "--check")
    out = capsys.readouterr().out
    assert float(out.split("= ")[1].split(")")[0]) < 1e-3  # onnxruntime agrees with torch
