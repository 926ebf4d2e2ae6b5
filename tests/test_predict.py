"""``mbt predict`` reads every kind of model folder: a run directory, a checkpoint folder (also
copied out of its run), a ``save_pretrained`` folder, its weights file, a folder without names."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mbt.cli import main
from mbt.data.demo import CLASSES
from mbt.loading import load_model
from mbt.model import MBT
from mbt.runtime import pick_device, resolve_precision

# configs/demo.yaml shrunk to a 1-epoch, 2-layer CPU run (a few seconds).
TINY = [
    "model.width=32", "model.depth=2", "model.num_heads=2", "model.fusion_layer=1",
    "data.val_fraction=0.4", "data.num_workers=0", "data.test_clips=2",
    "train.batch_size=4", "train.threads=1", "train.device=cpu", "train.epochs=1",
]  # fmt: skip


@pytest.fixture(scope="module")
def run(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("predict") / "run"
    args = ["train", "--config", "demo", "--data", str(demo_root), "--out", str(out), *TINY]
    assert main(args) == 0
    return out


@pytest.fixture(scope="module")
def clip(demo_root: Path) -> Path:
    return sorted((demo_root / "video").rglob("*.mp4"))[0]


def _predict(capsys, source: Path, clip: Path, *extra: str) -> dict:
    capsys.readouterr()
    assert main(["predict", str(source), str(clip), "--top-k", "6", "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_run_dir_checkpoint_dir_and_weights_file_agree(run, clip, tmp_path, capsys):
    want = _predict(capsys, run, clip)
    assert want["views"] == 2 and want["modalities"] == ["video", "audio"]
    assert {p["label"] for p in want["predictions"]} == set(CLASSES)
    best = run / "checkpoints" / "best"
    assert _predict(capsys, best, clip) == want
    assert _predict(capsys, best / "model.safetensors", clip) == want
    assert want["precision"] == "fp32"  # the run's train.precision (configs/demo.yaml)
    # A checkpoint folder alone: names and the data config (2 test views) from its config.json;
    # without its run it has no train.precision (auto: bf16 on a CPU with native bf16).
    alone = shutil.copytree(best, tmp_path / "alone")
    assert _predict(capsys, alone, clip)["precision"] == resolve_precision(
        "auto", pick_device("auto")
    )
    assert _predict(capsys, alone, clip, "--precision", "fp32") == want


def test_save_pretrained_folder(run, clip, tmp_path, capsys):
    want = _predict(capsys, run, clip)
    loaded = load_model(run)
    loaded.model.save_pretrained(tmp_path / "shared", data=loaded.data)
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == [
        "config.json", "model.safetensors",
    ]  # fmt: skip
    assert _predict(capsys, tmp_path / "shared", clip, "--precision", "fp32") == want

    # Without a data config the defaults apply (4 test views); the names still travel.
    MBT.from_pretrained(run / "checkpoints" / "best").save_pretrained(tmp_path / "plain")
    got = _predict(capsys, tmp_path / "plain", clip)
    assert got["views"] == 4 and {p["label"] for p in got["predictions"]} == set(CLASSES)


def test_a_model_without_class_names_ranks_output_indices(run, clip, tmp_path, capsys):
    model = MBT.from_pretrained(run / "checkpoints" / "best")  # a checkpoint is a model folder
    model.class_names = None
    model.save_pretrained(tmp_path / "nameless")
    got = _predict(capsys, tmp_path / "nameless", clip)
    assert {p["label"] for p in got["predictions"]} == {str(i) for i in range(len(CLASSES))}


def test_which_checkpoint_and_missing_sources(run, clip, tmp_path, capsys):
    assert load_model(run, "last").folder == run / "checkpoints" / "last"
    # A save interrupted between its two renames leaves only .best.old.
    broken = shutil.copytree(run, tmp_path / "broken")
    (broken / "checkpoints" / "best").rename(broken / "checkpoints" / ".best.old")
    assert _predict(capsys, broken, clip) == _predict(capsys, run, clip)

    assert main(["predict", str(tmp_path / "nope"), str(clip)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mbt: error: ") and err.count("\n") == 1
