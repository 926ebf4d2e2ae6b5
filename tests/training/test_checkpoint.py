"""Atomic checkpoints (model folders + state.pt) and RNG state round trips."""

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mbt.cli import main
from mbt.config import DataConfig, ModelConfig, RunConfig, replace, save_config, to_dict
from mbt.files import SUMS
from mbt.loading import load_model
from mbt.model import MBT
from mbt.model.folder import CONFIG, WEIGHTS, load_weights
from mbt.training import checkpoint as ckpt
from mbt.training.optim import build_optimizer, build_scheduler
from mbt.training.rundir import resolve_folder

from .conftest import tiny_config


def _model(seed: int = 0) -> MBT:
    """A two-class MBT of a few thousand parameters (checkpoints store an MBT with its cfg)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(
        num_classes=2, width=16, depth=2, num_heads=2, mlp_ratio=1.0, image_size=16,
        patch_size=8, num_frames=2, audio_frames=32, mel_bins=16, fusion_layer=1,
    )  # fmt: skip
    return MBT(cfg)


def test_save_load_round_trip_and_replace(tmp_path):
    model = _model()
    d = tmp_path / "checkpoints" / "last"
    ckpt.save_checkpoint(d, model, {"epoch": 1, "rng": ckpt.rng_state()})
    with torch.no_grad():
        model.head.weight.add_(1.0)
    ckpt.save_checkpoint(d, model, {"epoch": 2})  # replaces the whole folder
    assert sorted(p.name for p in d.parent.iterdir()) == ["last"]  # no tmp / old left behind
    other = _model(seed=1)
    load_weights(d, other)
    assert torch.equal(other.head.weight, model.head.weight)
    assert ckpt.read_state(d)["epoch"] == 2
    assert resolve_folder(tmp_path, "last") == d
    assert resolve_folder(d / WEIGHTS) == d


def test_interrupted_replace_falls_back_to_old(tmp_path):
    model = _model()
    d = tmp_path / "checkpoints" / "best"
    ckpt.save_checkpoint(d, model, {"epoch": 1})
    d.rename(d.parent / ".best.old")  # crash between the two renames
    assert resolve_folder(tmp_path, "best") == d.parent / ".best.old"


def test_rng_state_round_trip(tmp_path):
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    ckpt.save_checkpoint(tmp_path / "c", _model(), {"rng": ckpt.rng_state()})
    expected = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.set_rng_state(ckpt.read_state(tmp_path / "c")["rng"])  # loads with weights_only=True
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0])
    assert np.array_equal(expected[1], got[1]) and expected[2] == got[2]


def test_corrupt_checkpoint_files_are_value_errors(tmp_path):
    d = ckpt.save_checkpoint(tmp_path / "c", _model(), {"epoch": 1})
    (d / WEIGHTS).write_bytes(b"junk")  # e.g. a truncated copy
    with pytest.raises(ValueError, match="unreadable checkpoint weights"):
        load_weights(d, _model())
    (d / ckpt.STATE).write_bytes((d / ckpt.STATE).read_bytes()[:100])
    with pytest.raises(ValueError, match="damaged checkpoint state"):  # found by its checksum
        ckpt.read_state(d)
    (d / SUMS).unlink()  # as a checkpoint written before checksums
    with pytest.raises(ValueError, match="unreadable checkpoint state"):
        ckpt.read_state(d)


def test_a_checkpoint_is_a_model_folder_with_names_and_data(tmp_path):
    model = _model()
    data = DataConfig(test_clips=2, audio_mean=-3.0)
    state = {"epoch": 3, "classes": ["cat", "dog"], "config": {"data": to_dict(data)}}
    d = ckpt.save_checkpoint(tmp_path / "checkpoints" / "best", model, state)
    names = ["SHA256SUMS", "config.json", "model.safetensors", "state.pt"]
    assert sorted(p.name for p in d.iterdir()) == names
    card = json.loads((d / CONFIG).read_text())
    assert card["class_names"] == ["cat", "dog"] and card["data"]["audio_mean"] == -3.0
    loaded = load_model(d)  # alone: no run directory around it
    assert loaded.class_names == ["cat", "dog"] and loaded.data == data
    assert loaded.model.cfg == model.cfg and loaded.run_config is None
    assert torch.equal(loaded.model.head.weight, model.head.weight)

    # Explicit names / data win over the state's.
    ckpt.save_checkpoint(d, model, state, class_names=["a", "b"], data=DataConfig())
    assert load_model(d).class_names == ["a", "b"] and load_model(d).data == DataConfig()


def _write_old_format_run(run: Path, cfg: RunConfig, classes: list[str]) -> MBT:
    """A run as ``train`` wrote it before checkpoints held a config.json: after epoch 1 of 2,
    checkpoints/{last,best}/ = model.safetensors + state.pt only, beside config.yaml,
    classes.json and training_log.csv."""
    torch.manual_seed(0)
    model = MBT(cfg.model)
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, steps_per_epoch=3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    m = cfg.model  # one real step, so the optimizer state is not empty
    video = torch.randn(2, m.num_frames, 3, m.image_size, m.image_size)
    model(video=video, audio=torch.randn(2, m.audio_frames, m.mel_bins)).sum().backward()
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    state = {
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(), "epoch": 1, "step": 3, "rng": ckpt.rng_state(),
        "best_metric": 0.25, "best_epoch": 1, "best_val_loss": 1.7, "bad_epochs": 0,
        "metric": "val_acc", "config": to_dict(cfg), "classes": classes,
    }  # fmt: skip
    weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    for which in ("last", "best"):
        d = run / "checkpoints" / which
        d.mkdir(parents=True)
        save_file(weights, d / "model.safetensors", metadata={"format": "pt"})
        torch.save(state, d / "state.pt")
    save_config(cfg, run / "config.yaml")
    (run / "classes.json").write_text(json.dumps(classes, indent=1))
    (run / "training_log.csv").write_text(
        "epoch,train_loss,val_loss,val_acc,lr,time,clips_per_s\n"
        "1,1.800000,1.700000,0.250000,0.0005,1.00,10.0\n"
    )
    return model


def test_a_run_from_before_config_json_loads_and_resumes(demo_cache, demo_root, tmp_path, capsys):
    classes = json.loads((demo_cache / "index.json").read_text())["classes"]
    cfg = tiny_config(f"data.cache={demo_cache}")
    cfg = replace(cfg, model=replace(cfg.model, num_classes=len(classes)))
    run = tmp_path / "old"
    model = _write_old_format_run(run, cfg, classes)

    best = run / "checkpoints" / "best"
    alone = shutil.copytree(best, tmp_path / "alone")  # out of its run: state.pt says it all
    for source in (run, best, best / "model.safetensors", alone):
        loaded = load_model(source)
        assert loaded.class_names == classes and loaded.data == cfg.data, source
        assert loaded.run_config == cfg and loaded.model.cfg == cfg.model
        for k, v in model.state_dict().items():
            assert torch.equal(loaded.model.state_dict()[k], v), k
    clip = sorted((demo_root / "video").rglob("*.mp4"))[0]
    assert main(["predict", str(run), str(clip), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["predictions"][0]["label"] in classes

    assert main(["train", "--resume", str(run)]) == 0
    assert "resuming after epoch 1" in capsys.readouterr().out
    last = run / "checkpoints" / "last"
    assert ckpt.read_state(last)["epoch"] == 2
    rows = (run / "training_log.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[1].startswith("1,1.800000")  # the old epoch 1 row is kept
    assert (last / "config.json").is_file()  # checkpoints written from now on are model folders
    assert load_model(run, "last").class_names == classes


def test_a_weights_file_alone_is_a_clear_error(tmp_path):
    d = ckpt.save_checkpoint(tmp_path / "c", _model(), {"epoch": 1})
    (d / CONFIG).unlink()
    (d / ckpt.STATE).unlink()
    with pytest.raises(FileNotFoundError, match="without a config.json"):
        load_model(d)
