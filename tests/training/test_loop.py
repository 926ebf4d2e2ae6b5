"""The training engine on tiny data: resume equality, early stopping, non-finite loss, skipped
clips, data parallel equality, modality dropout."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mbt.training import loop
from mbt.training.checkpoint import load_state

from .conftest import tiny_config


def _weights(run: Path, which: str = "last") -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / which / "model.safetensors")


def test_train_writes_the_run_directory(demo_cache, tmp_path):
    cfg = tiny_config(f"data.cache={demo_cache}")
    s = loop.train(cfg, None, tmp_path / "run")
    run = tmp_path / "run"
    for f in ("config.yaml", "classes.json", "training_log.csv", "plot.png"):
        assert (run / f).is_file(), f
    for d in ("last", "best"):
        assert (run / "checkpoints" / d / "model.safetensors").is_file()
        assert (run / "checkpoints" / d / "state.pt").is_file()
    header, *rows = (run / "training_log.csv").read_text().splitlines()
    assert header == "epoch,train_loss,val_loss,val_acc,lr,time,clips_per_s"
    assert len(rows) == 2 and s["epochs_run"] == 2
    assert len(json.loads((run / "classes.json").read_text())) == 6
    state = load_state(run / "checkpoints" / "last")
    assert state["epoch"] == 2 and state["config"]["model"]["num_classes"] == 6
    assert {"torch", "numpy", "python"} <= set(state["rng"])
    with pytest.raises(ValueError, match="already holds a run"):
        loop.train(cfg, None, run)


def test_resume_is_bit_identical(demo_cache, tmp_path, monkeypatch):
    # Everything random switched on: dropout, drop path, mixup, modality dropout, smoothing,
    # augmentation, warm-up + cosine per step, gradient accumulation.
    cfg = tiny_config(
        f"data.cache={demo_cache}", "train.epochs=4", "model.dropout=0.1",
        "model.drop_path_rate=0.1", "train.mixup_alpha=0.4", "train.modality_dropout=0.3",
        "train.label_smoothing=0.1", "train.schedule=cosine", "train.warmup_epochs=1",
        "train.grad_accum=2", "train.optimizer=sgd", "train.lr=0.05", "train.grad_clip=1.0",
        "train.per_modality_loss=true",
    )  # fmt: skip
    loop.train(cfg, None, tmp_path / "straight")

    real = loop.train_one_epoch

    def crash_at_epoch_3(engine, loader, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return real(engine, loader, epoch)

    monkeypatch.setattr(loop, "train_one_epoch", crash_at_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        loop.train(cfg, None, tmp_path / "resumed")
    assert load_state(tmp_path / "resumed" / "checkpoints" / "last")["epoch"] == 2
    monkeypatch.setattr(loop, "train_one_epoch", real)
    loop.train(cfg, None, tmp_path / "resumed", resume=True)

    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log_a = (tmp_path / "straight" / "training_log.csv").read_text().splitlines()
    log_b = (tmp_path / "resumed" / "training_log.csv").read_text().splitlines()
    col = lambda rows, i: [r.split(",")[i] for r in rows]  # noqa: E731
    assert col(log_a, 1) == col(log_b, 1)  # train_loss of all 4 epochs


def test_resume_after_a_save_interrupted_between_its_renames(demo_cache, tmp_path):
    # save_checkpoint renames last -> .last.old before moving the new folder in; a crash in
    # that gap leaves only .last.old, which must still count as the run's last checkpoint.
    run = tmp_path / "run"
    loop.train(tiny_config(f"data.cache={demo_cache}", "train.epochs=1"), None, run)
    last = run / "checkpoints" / "last"
    last.rename(last.parent / ".last.old")
    cfg = tiny_config(f"data.cache={demo_cache}", "train.epochs=2")
    with pytest.raises(ValueError, match="already holds a run"):
        loop.train(cfg, None, run)
    s = loop.train(cfg, None, run, resume=True)
    assert s["epochs_run"] == 2 and load_state(last)["epoch"] == 2
    assert not (last.parent / ".last.old").exists()


def test_early_stopping_stops(demo_cache, tmp_path):
    # A vanishing lr: the metric cannot improve after epoch 1, patience 1 stops at epoch 2.
    cfg = tiny_config(
        f"data.cache={demo_cache}", "train.epochs=6", "train.early_stopping=1", "train.lr=1e-12"
    )
    s = loop.train(cfg, None, tmp_path / "run")
    assert s["stopped_early"] and s["epochs_run"] == 2 and s["best_epoch"] == 1


def test_non_finite_loss_stops_with_last_good_checkpoint(demo_cache, tmp_path, monkeypatch):
    cfg = tiny_config(f"data.cache={demo_cache}", "train.epochs=3")
    real, calls = loop.training_loss, []

    def nan_in_epoch_2(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) > 4 else loss  # 4 batches per epoch

    monkeypatch.setattr(loop, "training_loss", nan_in_epoch_2)
    run = tmp_path / "run"
    with pytest.raises(loop.NonFiniteLossError, match="epoch 2.*Last good checkpoint"):
        loop.train(cfg, None, run)
    state = load_state(run / "checkpoints" / "last")
    assert state["epoch"] == 1
    assert all(torch.isfinite(w).all() for w in _weights(run).values())


def test_corrupt_clip_is_reported_and_skipped(demo_root, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(demo_root, data)
    victim = sorted((data / "video").rglob("*.mp4"))[0]
    victim.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 10)
    cfg = tiny_config("train.epochs=1", "data.test_clips=1")
    s = loop.train(cfg, data, tmp_path / "run")
    assert s["epochs_run"] == 1
    out = capsys.readouterr()
    assert victim.name in out.out + out.err  # named in the scan report or the skip warning


def test_drop_modality_zeroes_one_input_per_dropped_clip():
    g = torch.Generator().manual_seed(0)
    inputs = {"video": torch.ones(64, 2, 3, 4, 4), "audio": torch.ones(64, 8, 4)}
    out = loop.drop_modality(inputs, 0.5, g)
    v = out["video"].flatten(1).amax(1)
    a = out["audio"].flatten(1).amax(1)
    assert ((v == 0) & (a == 0)).sum() == 0  # never both
    dropped = (v == 0).sum() + (a == 0).sum()
    assert 16 <= dropped <= 48  # about half of 64
    assert loop.drop_modality({"video": inputs["video"]}, 0.5, g)["video"].equal(inputs["video"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, overrides: list[str], out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
        LOCAL_RANK=str(rank),
    )  # fmt: skip
    loop.train(tiny_config(*overrides), None, Path(out))


def test_ddp_step_matches_single_process(demo_cache, tmp_path):
    """Two gloo processes with half the batch each take the same optimizer step as one process
    with the whole (global) batch."""
    common = [
        f"data.cache={demo_cache}", "train.epochs=1", "train.optimizer=sgd", "train.lr=0.5",
        "train.momentum=0.0", "model.drop_path_rate=0.0",  # no per-process randomness
    ]  # fmt: skip
    # One step per epoch: the whole training split (an even number of clips) is one batch.
    loop.train(tiny_config(*common, "train.batch_size=64"), None, tmp_path / "single")
    torch.multiprocessing.spawn(
        _ddp_worker,
        args=(2, _free_port(), [*common, "train.batch_size=32"], str(tmp_path / "ddp")),
        nprocs=2,
    )
    assert load_state(tmp_path / "ddp" / "checkpoints" / "last")["step"] == 1
    a, b = _weights(tmp_path / "single"), _weights(tmp_path / "ddp")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    log = (tmp_path / "ddp" / "training_log.csv").read_text().splitlines()
    single = (tmp_path / "single" / "training_log.csv").read_text().splitlines()
    assert log[1].split(",")[3] == single[1].split(",")[3]  # same val_acc over the whole split
