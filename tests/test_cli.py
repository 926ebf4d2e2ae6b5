"""The ``mbt`` command line end to end on tiny generated data, and its error handling."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import av
import pytest

from mbt.cli import build_parser, main
from mbt.config import PRESET_DIR, load_config

TINY = [
    "model.width=32", "model.depth=2", "model.num_heads=2", "model.fusion_layer=1",
    "data.val_fraction=0.4", "data.num_workers=0", "data.test_clips=2",
    "train.batch_size=4", "train.threads=1", "train.device=cpu", "train.epochs=2",
]  # fmt: skip


def test_train_evaluate_predict(demo_root, tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(["train", "--config", "demo", "--data", str(demo_root), "--out", str(run), *TINY]) == 0
    )
    out = capsys.readouterr().out
    assert "clips found" in out and "done: best val_acc" in out  # scan report, summary

    assert main(["evaluate", str(run), "--checkpoint", "last"]) == 0
    out = capsys.readouterr().out
    assert "audio only" in out and "fusion off" in out
    ev = json.loads((run / "eval.json").read_text())
    assert set(ev["results"]) == {"av", "audio_only", "video_only", "av_fusion_off"}
    assert ev["views"] == {"clips": 2, "crops": 1} and ev["epoch"] == 2
    assert ev["precision"] == "fp32"  # the run's train.precision (configs/demo.yaml pins it)
    assert (run / "confusion.png").is_file()  # that training learns: tests/training/test_learns.py

    video = sorted((demo_root / "video").rglob("*.mp4"))[0]
    assert main(["predict", str(run), str(video), "--top-k", "3", "--json"]) == 0
    pred = json.loads(capsys.readouterr().out)
    assert len(pred["predictions"]) == 3 and pred["modalities"] == ["video", "audio"]
    probs = [p["probability"] for p in pred["predictions"]]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-6
    assert main(["predict", str(run), str(video), "--json", "--precision", "bf16"]) == 0
    assert json.loads(capsys.readouterr().out)["precision"] == "bf16"  # the flag wins

    # A video without a sound track is classified from the picture alone, and says so.
    silent = tmp_path / "silent.mp4"
    _strip_audio(video, silent)
    assert main(["predict", str(run / "checkpoints" / "best"), str(silent)]) == 0
    out = capsys.readouterr().out
    assert "no audio track" in out and "video, 2 views" in out


def _strip_audio(src, dst) -> None:
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        s_in = inp.streams.video[0]
        s_out = out.add_stream_from_template(s_in)
        for packet in inp.demux(s_in):
            if packet.dts is None:
                continue
            packet.stream = s_out
            out.mux(packet)


def test_bad_config_key_is_a_one_line_error(capsys):
    assert main(["train", "--config", "demo", "--data", ".", "train.nope=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mbt: error: unknown config key(s) train.nope")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_missing_file_is_a_one_line_error(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.startswith("mbt: error: ")
    with pytest.raises(FileNotFoundError):
        main(["evaluate", str(tmp_path / "nope"), "--debug"])


def test_corrupt_checkpoint_is_a_one_line_error(tmp_path, capsys):
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"junk")
    (d / "state.pt").write_bytes(b"junk")
    assert main(["predict", str(d), str(tmp_path / "clip.mp4")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mbt: error: ") and "unreadable checkpoint" in err
    assert err.count("\n") == 1


def test_python_dash_m_mbt_lists_the_commands():
    r = subprocess.run([sys.executable, "-m", "mbt", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for cmd in ("train", "evaluate", "predict", "demo", "prepare", "demo-data"):
        assert cmd in r.stdout


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
def test_every_shipped_preset_loads_and_comments_every_value(preset):
    cfg = load_config(preset)
    assert cfg.model.num_classes >= 1
    for line in (PRESET_DIR / f"{preset}.yaml").read_text().splitlines():
        if ":" in line and not line.strip().startswith("#") and not line.rstrip().endswith(":"):
            assert "#" in line, f"{preset}.yaml: value without a comment: {line.strip()}"


def test_presets_cover_the_shipped_recipes():
    names = {p.stem for p in PRESET_DIR.glob("*.yaml")}
    assert {
        "demo",
        "demo_audio",
        "demo_video",
        "demo_pairing",
        "mbt_b16_paper",
        "pjzuf_c101",
        "ucf101_av",
        "vggsound",
        "audioset",
    } <= names
    paper = load_config("mbt_b16_paper")
    assert (paper.train.optimizer, paper.train.lr, paper.train.warmup_epochs) == ("sgd", 0.5, 2.5)
    assert paper.model.init == "vit_base_patch16_224.augreg_in21k"
    assert load_config("audioset").data.multi_label


def test_predict_says_audio_is_ignored_by_a_video_only_model(demo_root, tmp_path, capsys):
    run = tmp_path / "video_only"
    args = ["train", "--config", "demo_video", "--data", str(demo_root), "--out", str(run)]
    assert main([*args, *TINY, "train.epochs=1"]) == 0
    capsys.readouterr()
    video = sorted((demo_root / "video").rglob("*.mp4"))[0]
    audio = sorted((demo_root / "audio").rglob("*.wav"))[0]
    assert main(["predict", str(run), str(video), "--audio", str(audio)]) == 0
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "no audio stream" in notes[0] and "--audio" in notes[0]
    assert "(video, 2 views)" in out


def test_every_command_takes_debug_after_its_name():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert {"train", "evaluate", "convert", "export", "explain"} <= set(sub.choices)
    for name, command in sub.choices.items():
        assert "--debug" in command.format_help(), name
