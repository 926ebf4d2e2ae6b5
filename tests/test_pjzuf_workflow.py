"""The seed's workflow end to end: the PJZUF-C101 archive -> `mbt train --config pjzuf_c101`
from pretrained video and audio weights -> the seed's outputs -> a prediction.

The archive is built here in the PJZUF layout as found in the wild: one top folder inside the
zip, split folders, numeric class folders, a class whose clips have no sound at all, a video
without its wav (it has its own track) and one without either. The preset runs with tiny
overrides and tiny local checkpoints in the real formats (a timm ViT ``.safetensors``, an
original AST ``.pth``)."""

from __future__ import annotations

import csv
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from mbt.cli import main
from mbt.config import load_config
from mbt.training import loop
from tests.data.media import sine, write_audio, write_video
from tests.model.checkpoints import write_ast_pth, write_vit

# 2 layers of width 32 on 4 frames of 32 px; 46 log-mel frames of 128 bins make AST's own
# 4 x 12 patch grid at stride 10, so every audio tensor is copied unchanged.
TINY = [
    "model.width=32", "model.depth=2", "model.num_heads=2", "model.mlp_ratio=2.0",
    "model.image_size=32", "model.patch_size=8", "model.num_frames=4", "model.audio_frames=46",
    "model.fusion_layer=1", "model.drop_path_rate=0.0", "data.num_workers=0",
    "data.test_clips=1", "train.batch_size=4", "train.grad_accum=1", "train.epochs=2",
    "train.device=cpu", "train.threads=1", "train.precision=fp32",
]  # fmt: skip
SOUND = {"0": "wav", "1": "wav", "10": "track", "2": None}  # class folder -> its clips' sound


def _clip(path: Path, sound: str | None, level: int) -> None:
    """A 1 s 48x36 clip; with sound "track" it carries its own AAC track."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = np.full((8, 36, 48, 3), level, np.uint8)
    track = sine(300 + level, 1.0, 16000) if sound == "track" else None
    write_video(path, frames, 8, audio=track)


def build_archive(folder: Path) -> Path:
    """pjzufc101.zip: pjzufc101/{video,audio}/{train,val}/<0|1|2|10>/<stem>.{mp4,wav}."""
    src = folder / "src" / "pjzufc101"
    for split, n in (("train", 3), ("val", 1)):
        for cls, sound in SOUND.items():
            for i in range(n):
                stem = f"clip_{cls}_{split}{i}"
                _clip(src / f"video/{split}/{cls}/{stem}.mp4", sound, 20 * int(cls) + i)
                if sound == "wav":  # 44.1 kHz, as the data set's wav files
                    wav = src / f"audio/{split}/{cls}/{stem}.wav"
                    wav.parent.mkdir(parents=True, exist_ok=True)
                    write_audio(wav, sine(200 + 50 * int(cls), 1.0, 44100), 44100)
    (src / "audio/train/1/clip_1_train2.wav").unlink()  # a video without its wav: skipped
    archive = folder / "pjzufc101.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(src.parent.rglob("*")):
            zf.write(p, p.relative_to(src.parent).as_posix())
    return archive


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("weights")
    vit, ast = root / "vit_tiny.safetensors", root / "ast_tiny.pth"
    write_vit(vit, width=32, depth=2, heads=2, mlp_ratio=2.0, image=32, patch=8)
    write_ast_pth(ast, width=32, depth=2, mlp_ratio=2.0, time_patches=4)
    return {"vit": vit, "ast": ast}


def test_the_preset_states_the_recipe():
    cfg = load_config("pjzuf_c101")
    m, d, t = cfg.model, cfg.data, cfg.train
    assert (m.init, m.audio_init) == (
        "vit_base_patch16_224.augreg_in21k", "MIT/ast-finetuned-audioset-10-10-0.4593",
    )  # fmt: skip
    assert (m.num_frames, m.image_size, m.audio_frames, m.fusion_layer, m.n_bottlenecks) == (
        8, 224, 800, 8, 4,
    )  # fmt: skip
    assert (m.audio_patch_stride, m.mel_bins, m.audio_dist_token) == (10, 128, True)  # AST's
    assert (t.optimizer, t.lr, t.schedule, t.metric) == ("adam", 1e-4, "constant", "accuracy")
    assert t.early_stopping > 0 and d.missing_audio == "skip" and d.layout == "pjzuf"
    assert t.batch_size * t.grad_accum == 32


def test_archive_to_prediction(tmp_path, weights, monkeypatch, capsys):
    archive = build_archive(tmp_path)
    inits = {}
    real_build = loop.build_engine

    def build_engine(*args, **kwargs):  # the weights as the run starts, before any step
        engine = real_build(*args, **kwargs)
        inits.update({k: v.clone() for k, v in engine.model.state_dict().items()})
        return engine

    monkeypatch.setattr(loop, "build_engine", build_engine)
    run = tmp_path / "runs" / "pjzuf"
    args = [
        "train", "--config", "pjzuf_c101", "--data", str(archive), "--out", str(run), *TINY,
        f"model.init={weights['vit']}", f"model.audio_init={weights['ast']}",
    ]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out

    # Unpacked once beside the archive, reported; the data set is one level down.
    folder = tmp_path / "pjzufc101"
    assert f"archive: unpacked {archive} into {folder}" in out
    assert (folder / "pjzufc101" / "video" / "train").is_dir()
    # The scan report: split folders, numeric ids, the class without sound dropped.
    assert "split folders: train -> train, val -> val" in out
    assert re.search(r"classes\s+3 \(of 4 found\)", out)
    assert re.search(r"classes without audio\s+1 \(dropped from the head\)", out)
    assert "classes without audio: 2" in out
    assert json.loads((run / "classes.json").read_text()) == ["0", "1", "10"]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["root"] == str(folder) and saved["model"]["num_classes"] == 3
    assert "splits: train 8 clips, val 3 clips, 3 classes" in out  # 1/train2 has no sound

    # Both streams started from their files: the audio stream is exactly the AST file's.
    ast = torch.load(weights["ast"], weights_only=True)
    for i in range(2):
        for name in ("attn.qkv.weight", "mlp.fc2.bias", "norm1.weight"):
            got = inits[f"layers.{i}.blocks.audio.{name}"]
            assert torch.equal(got, ast[f"module.v.blocks.{i}.{name}"]), name
    kernel = ast["module.v.patch_embed.proj.weight"].transpose(-1, -2)
    assert torch.equal(inits["embed.audio.proj.weight"], kernel)
    tokens = torch.cat([ast["module.v.cls_token"], ast["module.v.dist_token"]], dim=1)
    assert torch.equal(inits["embed.audio.prefix.cls_token"], tokens)
    pos = ast["module.v.pos_embed"][:, 2:].reshape(1, 12, 4, 32).permute(0, 2, 1, 3)  # (t, f)
    assert torch.equal(inits["embed.audio.pos_grid"], pos.reshape(1, 48, 32))
    vit = load_file(weights["vit"])
    assert torch.equal(
        inits["layers.1.blocks.video.mlp.fc1.weight"], vit["blocks.1.mlp.fc1.weight"]
    )
    assert "init: ViT" in out and "AST" in out

    # The seed's outputs.
    with open(run / "training_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:5] == ["epoch", "train_loss", "val_loss", "train_acc", "val_acc"]
    assert len(rows) == 2 and all(0 <= float(r["train_acc"]) <= 1 for r in rows)
    assert (run / "plot.png").stat().st_size > 0

    # A second run on the same archive unpacks nothing.
    assert main([*args[:6], str(tmp_path / "runs" / "again"), *args[7:]]) == 0
    assert f"archive: {archive} already unpacked in {folder}" in capsys.readouterr().out

    # And the model predicts with the class names it was trained with.
    video = folder / "pjzufc101/video/val/10/clip_10_val0.mp4"
    assert main(["predict", str(run), str(video), "--top-k", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert sorted(p["label"] for p in result["predictions"]) == ["0", "1", "10"]


def test_prepare_unpacks_the_archive_inside_the_cache(tmp_path, capsys):
    archive = build_archive(tmp_path)
    cache = tmp_path / "cache"
    options = ["--out", str(cache), "--config", "pjzuf_c101", "--workers", "1"]
    assert main(["prepare", str(archive), *TINY, *options]) == 0
    assert f"archive: unpacked {archive} into {cache / 'pjzufc101'}" in capsys.readouterr().out
    assert (cache / "index.json").is_file() and not (tmp_path / "pjzufc101").exists()
    index = json.loads((cache / "index.json").read_text())
    assert index["classes"] == ["0", "1", "10"]
