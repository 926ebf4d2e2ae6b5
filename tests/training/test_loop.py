"""The training run on tiny data: resume equality, early stopping, non-finite loss, skipped
clips, data parallel equality, logs without progress bars."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mbt import progress
from mbt.data.loaders import CacheSource
from mbt.training import engine, loop
from mbt.training.checkpoint import read_state

from .conftest import TINY, tiny_config


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
    # The seed's columns first, in the seed's order.
    assert header == "epoch,train_loss,val_loss,train_acc,val_acc,lr,time,clips_per_s"
    assert len(rows) == 2 and s["epochs_run"] == 2
    assert all(0.0 <= float(r.split(",")[3]) <= 1.0 for r in rows)
    assert len(json.loads((run / "classes.json").read_text())) == 6
    state = read_state(run / "checkpoints" / "last")
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
    assert read_state(tmp_path / "resumed" / "checkpoints" / "last")["epoch"] == 2
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
    assert s["epochs_run"] == 2 and read_state(last)["epoch"] == 2
    assert not (last.parent / ".last.old").exists()


def test_resume_from_a_checkpoint_written_before_the_run_state(demo_cache, tmp_path):
    # state.pt of earlier versions has no history / metric_nan: training_log.csv has the history.
    run = tmp_path / "run"
    loop.train(tiny_config(f"data.cache={demo_cache}", "train.epochs=1"), None, run)
    last = run / "checkpoints" / "last"
    state = read_state(last)
    del state["history"], state["metric_nan"]
    state["bad_epochs"] = 0  # the patience counter of those versions
    torch.save(state, last / "state.pt")
    (last / "SHA256SUMS").unlink()  # nor checksums
    cfg = tiny_config(f"data.cache={demo_cache}", "train.epochs=2")
    assert loop.train(cfg, None, run, resume=True)["epochs_run"] == 2
    rows = (run / "training_log.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["1", "2"]
    assert [r["epoch"] for r in read_state(last)["history"]] == ["1", "2"]


def _scripted_validation(monkeypatch, accs: list[float], losses: list[float]) -> None:
    """``validate`` of epoch e (0-based) reports ``accs[e]`` and ``losses[e]``."""
    real = loop.validate

    def scripted(engine, loader, epoch):
        return {**real(engine, loader, epoch), "val_acc": accs[epoch], "val_loss": losses[epoch]}

    monkeypatch.setattr(loop, "validate", scripted)


def test_early_stopping_stops(demo_cache, tmp_path, monkeypatch, capsys):
    # Neither val_acc nor val_loss moves. The demo's 2 warm-up epochs are not counted, so
    # patience 1 stops the run after epoch 3, and the last line says what was watched.
    _scripted_validation(monkeypatch, [0.5] * 6, [1.0] * 6)
    cfg = tiny_config(f"data.cache={demo_cache}", "train.epochs=6", "train.early_stopping=1")
    s = loop.train(cfg, None, tmp_path / "run")
    assert s["stopped_early"] and s["epochs_run"] == 3 and s["best_epoch"] == 1
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("early stopping")]
    assert line == [
        "early stopping after epoch 3: neither val_acc (last improved at epoch 1, to 0.5000) "
        "nor val_loss (at epoch 1, to 1.0000) improved in the last epoch "
        "(train.early_stopping=1)"
    ]


def test_a_lucky_spike_does_not_stop_a_run_whose_loss_still_falls(
    demo_cache, tmp_path, monkeypatch
):
    # val_acc peaks by chance at epoch 2; the loss falls every epoch. Watching val_acc alone,
    # patience 1 would stop after epoch 3; the run goes on, and best is still val_acc's epoch.
    _scripted_validation(monkeypatch, [0.5, 0.9, 0.5, 0.5], [1.0, 0.9, 0.8, 0.7])
    cfg = tiny_config(
        f"data.cache={demo_cache}", "train.epochs=4", "train.early_stopping=1",
        "train.warmup_epochs=0",
    )  # fmt: skip
    s = loop.train(cfg, None, tmp_path / "run")
    assert not s["stopped_early"] and s["epochs_run"] == 4 and s["best_epoch"] == 2
    assert read_state(tmp_path / "run" / "checkpoints" / "best")["epoch"] == 2


def test_resume_from_a_state_saved_under_the_old_rule(demo_cache, tmp_path, monkeypatch, capsys):
    # state.pt before the rule watched val_loss: bad_epochs = epochs since val_acc improved.
    # 1 here (patience 1): then "already finished". The history says the loss still fell, so
    # the run trains on.
    _scripted_validation(monkeypatch, [0.9, 0.5, 0.5], [1.0, 0.9, 0.8])
    over = [f"data.cache={demo_cache}", "train.early_stopping=1", "train.warmup_epochs=0"]
    run = tmp_path / "run"
    loop.train(tiny_config(*over, "train.epochs=2"), None, run)
    last = run / "checkpoints" / "last"
    state = read_state(last)
    state["bad_epochs"] = 1
    torch.save(state, last / "state.pt")
    (last / "SHA256SUMS").unlink()  # state.pt changed
    capsys.readouterr()
    s = loop.train(tiny_config(*over, "train.epochs=3"), None, run, resume=True)
    assert "resuming after epoch 2" in capsys.readouterr().out
    assert s["epochs_run"] == 3 and not s["already_finished"] and s["best_epoch"] == 1


def test_non_finite_loss_stops_with_last_good_checkpoint(demo_cache, tmp_path, monkeypatch):
    cfg = tiny_config(f"data.cache={demo_cache}", "train.epochs=3")
    real, calls = engine.training_loss, []

    def nan_in_epoch_2(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) > 4 else loss  # 4 batches per epoch

    monkeypatch.setattr(engine, "training_loss", nan_in_epoch_2)
    run = tmp_path / "run"
    with pytest.raises(loop.NonFiniteLossError, match="epoch 2.*Last good checkpoint"):
        loop.train(cfg, None, run)
    state = read_state(run / "checkpoints" / "last")
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


def test_a_log_file_gets_one_line_per_epoch_and_no_progress_frames(demo_cache, tmp_path):
    # stderr and stdout redirected to files, as under nohup or in CI.
    run, out, err = tmp_path / "run", tmp_path / "out.log", tmp_path / "err.log"
    cmd = [sys.executable, "-m", "mbt", "train", "--config", "demo", "--out", str(run)]
    with out.open("w") as o, err.open("w") as e:
        r = subprocess.run([*cmd, *TINY, f"data.cache={demo_cache}"], stdout=o, stderr=e)
    assert r.returncode == 0, err.read_text()
    assert "\r" not in out.read_text() + err.read_text()  # no tqdm redraws
    epochs = [line.split()[1] for line in out.read_text().splitlines() if line.startswith("epoch")]
    assert epochs == ["1/2", "2/2"]


def test_a_terminal_gets_progress_bars(demo_cache, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(progress, "interactive", lambda: True)  # stderr "is" a terminal
    loop.train(tiny_config(f"data.cache={demo_cache}", "train.epochs=1"), None, tmp_path / "run")
    err = capsys.readouterr().err
    assert "\r" in err and "epoch 1/1" in err and "val 1" in err  # training and validation bars


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
    assert read_state(tmp_path / "ddp" / "checkpoints" / "last")["step"] == 1
    a, b = _weights(tmp_path / "single"), _weights(tmp_path / "ddp")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    log = (tmp_path / "ddp" / "training_log.csv").read_text().splitlines()
    single = (tmp_path / "single" / "training_log.csv").read_text().splitlines()
    # The same val_acc over the whole split, and the same train_acc: the hits of both
    # processes' forward passes are summed.
    assert log[1].split(",")[3:5] == single[1].split(",")[3:5]


# ---------------------------------------------------------------------------------------------
# Model selection with a metric that cannot be computed, finished runs, empty batches / shards


def test_map_on_single_label_data_is_a_config_error(demo_cache, tmp_path):
    cfg = tiny_config(f"data.cache={demo_cache}", "train.metric=map")
    with pytest.raises(ValueError, match="train.metric=map"):
        loop.train(cfg, None, tmp_path / "run")


def test_nan_metric_selects_by_val_loss(demo_cache, tmp_path, monkeypatch, capsys):
    # mAP of a val split with no positive for any class is NaN every epoch: the run warns once,
    # writes best at epoch 1 and then selects / early-stops on the validation loss.
    real, losses = loop.validate, iter([1.0, 0.5, 0.7, 0.9])

    def nan_metric(*args, **kwargs):
        return {**real(*args, **kwargs), "val_acc": float("nan"), "val_loss": next(losses)}

    monkeypatch.setattr(loop, "validate", nan_metric)
    cfg = tiny_config(f"data.cache={demo_cache}", "train.epochs=4", "train.early_stopping=1")
    s = loop.train(cfg, None, tmp_path / "run")
    assert s["best_epoch"] == 2 and s["stopped_early"] and s["epochs_run"] == 3
    assert read_state(tmp_path / "run" / "checkpoints" / "best")["epoch"] == 2
    out = capsys.readouterr().out
    assert out.count("val_acc is NaN") == 1
    assert (
        "early stopping after epoch 3: val_loss (last improved at epoch 2, to 0.5000) did not "
        "improve in the last epoch (train.early_stopping=1)"
    ) in out


def test_resume_of_a_finished_run_does_not_train(demo_cache, tmp_path, monkeypatch, capsys):
    _scripted_validation(monkeypatch, [0.5] * 6, [1.0] * 6)  # stops after epoch 3 (see above)
    cfg = tiny_config(f"data.cache={demo_cache}", "train.epochs=6", "train.early_stopping=1")
    run = tmp_path / "run"
    assert loop.train(cfg, None, run)["stopped_early"]

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run trained again")

    monkeypatch.setattr(loop, "train_one_epoch", no_training)
    capsys.readouterr()
    s = loop.train(cfg, None, run, resume=True)
    assert s["already_finished"] and s["stopped_early"] and s["epochs_run"] == 3
    out = capsys.readouterr().out
    assert "already finished: it stopped early after epoch 3 (neither val_acc" in out
    assert "improved in the last epoch (train.early_stopping=1)); nothing to train" in out
    # Epochs exhausted: the same, and it says how to go on.
    cfg = tiny_config(f"data.cache={demo_cache}", "train.epochs=3", "train.early_stopping=0")
    s = loop.train(cfg, None, run, resume=True)
    assert s["already_finished"] and not s["stopped_early"]
    assert "all 3 epochs are done" in capsys.readouterr().out
    assert read_state(run / "checkpoints" / "last")["epoch"] == 3


class _FailingFirst(torch.utils.data.Dataset):
    """A data set whose items ``fail`` (call numbers, from 0) fail to decode (None)."""

    def __init__(self, ds, fail: range) -> None:
        self.ds, self.fail, self.calls = ds, fail, 0

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i):
        self.calls += 1
        return None if self.calls - 1 in self.fail else self.ds[i]

    def __getattr__(self, name):
        return getattr(self.__dict__["ds"], name)


def _patch_splits(fail: range, val_clips: int | None = None) -> None:
    """The prepared cache's splits, training items ``fail`` failing, ``val_clips`` val clips."""
    real = CacheSource.dataset

    def dataset(self, split, **kwargs):
        ds = real(self, split, **kwargs)
        if split == "train":
            return _FailingFirst(ds, fail)
        if val_clips is not None:
            return torch.utils.data.Subset(ds, range(val_clips))
        return ds

    CacheSource.dataset = dataset


def test_a_group_of_failed_batches_takes_no_optimizer_step(demo_cache, tmp_path, monkeypatch):
    real_step, steps = engine._optimizer_step, []

    def record(engine, *args, **kwargs):
        grads = any(p.grad is not None for p in engine.model.parameters())
        steps.append((grads, kwargs.get("take", args[0] if args else True)))
        real_step(engine, *args, **kwargs)

    monkeypatch.setattr(engine, "_optimizer_step", record)
    monkeypatch.setattr(CacheSource, "dataset", CacheSource.dataset)
    _patch_splits(range(8))  # the first accumulation group: 2 batches of 4 clips
    cfg = tiny_config(f"data.cache={demo_cache}", "train.epochs=1", "train.grad_accum=2")
    s = loop.train(cfg, None, tmp_path / "run")
    assert steps and all(grads for grads, take in steps if take)  # never a step without grads
    assert steps[0] == (False, False)  # the empty group only advanced the schedule
    assert read_state(tmp_path / "run" / "checkpoints" / "last")["step"] == len(steps)
    assert s["epochs_run"] == 1


_MODELS: list = []


def _ddp_failing_worker(rank: int, world: int, port: int, overrides: list[str], out: str) -> None:
    # Rank 1: its second (last) batch fails entirely; it ends the accumulation group whose first
    # batch ran under no_sync. The val split has 1 clip, so rank 1 has none.
    _patch_splits(range(4, 12) if rank == 1 else range(0), val_clips=1)
    real_build = loop.build_model
    loop.build_model = lambda cfg: _MODELS.append(real_build(cfg)) or _MODELS[-1]
    _ddp_worker(rank, world, port, overrides, out)
    torch.save(_MODELS[-1].state_dict(), Path(out) / f"rank{rank}.pt")


def test_ddp_rank_with_failed_batch_and_no_val_clip_completes(demo_cache, tmp_path):
    overrides = [
        f"data.cache={demo_cache}", "train.epochs=1", "train.grad_accum=2",
        "train.optimizer=sgd", "train.lr=0.1", "model.drop_path_rate=0.0",
    ]  # fmt: skip
    run = tmp_path / "ddp"
    ctx = torch.multiprocessing.spawn(
        _ddp_failing_worker, args=(2, _free_port(), overrides, str(run)), nprocs=2, join=False
    )
    deadline = time.monotonic() + 120
    try:
        while not ctx.join(timeout=1):
            assert time.monotonic() < deadline, "DDP run hung"
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    state = read_state(run / "checkpoints" / "last")
    assert state["epoch"] == 1
    a, b = torch.load(run / "rank0.pt"), torch.load(run / "rank1.pt")
    for k in a:  # the processes took the same steps: identical weights
        assert torch.equal(a[k], b[k]), k
    header, row = (run / "training_log.csv").read_text().splitlines()
    assert row.split(",")[4] in ("0.000000", "1.000000")  # val_acc of the single val clip
