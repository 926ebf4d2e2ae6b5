"""A kill -9 at any file write of a training run or of ``mbt prepare``, then the same command
again: it ends exactly as the uninterrupted one (same weights, same log, same best; same cache).

The kill is simulated by what it leaves on disk. Every file (and checkpoint folder) is written
to a temporary name and renamed into place, so every write ends with a rename. At each rename of
a temporary into the watched folder the test copies the folder first, with that temporary cut
to half its size (killed while writing it); after each rename of a folder, it copies it again
(killed between the renames of a checkpoint swap, or before its old copy is removed). Each copy
is what ``kill -9`` at that instant leaves; the command is run again on each, and the result
compared with the uninterrupted one.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mbt.config import RunConfig
from mbt.data.cache import prepare
from mbt.training import loop
from mbt.training.checkpoint import read_state
from mbt.training.rundir import read_log
from tests.training.conftest import demo_cache as demo_cache  # a fixture
from tests.training.conftest import tiny_config

IGNORED_LOG_COLUMNS = ("time", "clips_per_s")  # wall-clock measurements, never equal


class Snapshots:
    """Copies of ``watch`` at each rename into it (see the module docstring), numbered in order.

    Works across ``fork``: a worker process inherits the patched ``os.replace`` and numbers its
    copies from the same folder.
    """

    def __init__(self, watch: Path, store: Path) -> None:
        self.watch, self.store = watch, store
        store.mkdir()

    def hook(self, real: Callable[..., None]) -> Callable[..., None]:
        def replace(src, dst, *args, **kwargs) -> None:
            src, dst = Path(src), Path(dst)
            if not self._watched(dst):
                return real(src, dst, *args, **kwargs)
            rel = dst.relative_to(self.watch)
            if _temporary(src.name):
                self.take(f"before {rel}", half=src)
            real(src, dst, *args, **kwargs)
            if dst.is_dir():
                self.take(f"after {rel}")

        return replace

    def _watched(self, path: Path) -> bool:
        """In the watched folder, and not inside a temporary folder (its files' renames are
        part of writing that folder, whose own rename is the write point)."""
        if self.watch not in path.parents:
            return False
        return not any(_temporary(p) for p in path.relative_to(self.watch).parts[:-1])

    def take(self, label: str, half: Path | None = None) -> None:
        n = len(list(self.store.iterdir()))
        copy = self.store / f"{n:03d} {label.replace('/', '|')}"
        shutil.copytree(self.watch, copy, symlinks=True)
        if half is not None:  # killed while writing it
            target = copy / half.relative_to(self.watch)
            for f in [target] if target.is_file() else sorted(target.rglob("*")):
                if f.is_file():
                    os.truncate(f, f.stat().st_size // 2)

    def points(self) -> list[Path]:
        return sorted(self.store.iterdir())


def _temporary(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------
# A training run


def _resume_or_restart(cfg, run: Path) -> dict:
    """What a user does after the kill: ``--resume``; if it was killed before the first
    checkpoint ("nothing to resume"), the same command again."""
    try:
        return loop.train(cfg, None, run, resume=True)
    except FileNotFoundError as e:
        assert "nothing to resume" in str(e)
        return loop.train(cfg, None, run)


def _run_outcome(run: Path) -> dict:
    """Everything a finished run directory says, with wall-clock columns left out."""
    ckpts = run / "checkpoints"
    rows = read_log(run / "training_log.csv")
    return {
        "files": sorted(str(p.relative_to(run)) for p in run.rglob("*")),
        "best_epoch": read_state(ckpts / "best")["epoch"],
        "state_best_epoch": read_state(ckpts / "last")["best_epoch"],
        "log": [{k: v for k, v in r.items() if k not in IGNORED_LOG_COLUMNS} for r in rows],
        "last": load_file(ckpts / "last" / "model.safetensors"),
        "best": load_file(ckpts / "best" / "model.safetensors"),
    }


# Every write of a 2-epoch run whose both epochs improve, in order ("|" stands for "/").
RUN_WRITES = (
    "before config.yaml", "before classes.json",
    # epoch 1
    "before checkpoints|last", "after checkpoints|last",
    "before checkpoints|best", "after checkpoints|best",
    "before plot.png", "before training_log.csv",
    # epoch 2: the old checkpoint is renamed aside, the new one renamed in, the old removed
    "after checkpoints|.last.old", "before checkpoints|last", "after checkpoints|last",
    "after checkpoints|.best.old", "before checkpoints|best", "after checkpoints|best",
    "before plot.png", "before training_log.csv",
)  # fmt: skip


@dataclass
class Killed:
    """An uninterrupted run, the copies of its folder at every write, and its outcome."""

    cfg: RunConfig
    points: list[Path]
    outcome: dict


def _improving_validate(real: Callable[..., dict]) -> Callable[..., dict]:
    """``validate`` whose accuracy grows with the epoch, so that every epoch is the best (a
    2-epoch run of the tiny model on the demo clips improves or not by chance)."""

    def validate(engine, loader, epoch: int) -> dict:
        return {**real(engine, loader, epoch), "val_acc": 0.1 * (epoch + 1)}

    return validate


@pytest.fixture(autouse=True)
def _epochs_improve(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "validate", _improving_validate(loop.validate))


@pytest.fixture(scope="module")
def killed_run(demo_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Killed:
    tmp = tmp_path_factory.mktemp("killed-run")
    cfg = tiny_config(f"data.cache={demo_cache}", "train.epochs=2")
    snaps = Snapshots(tmp / "run", tmp / "kills")
    with pytest.MonkeyPatch.context() as m:
        m.setattr(os, "replace", snaps.hook(os.replace))
        m.setattr(loop, "validate", _improving_validate(loop.validate))
        straight = loop.train(cfg, None, tmp / "run")
    # Epoch 2 improves, so a kill between writing last and best is among the points.
    assert straight["best_epoch"] == 2
    return Killed(cfg, snaps.points(), _run_outcome(tmp / "run"))


def test_the_kill_points_are_every_write_of_the_run(killed_run):
    assert tuple(p.name.split(" ", 1)[1] for p in killed_run.points) == RUN_WRITES


@pytest.mark.parametrize(
    "k", range(len(RUN_WRITES)), ids=[f"{i:02d} {w}" for i, w in enumerate(RUN_WRITES)]
)
def test_a_run_killed_at_any_write_resumes_to_the_same_end(killed_run, k):
    run = killed_run.points[k]
    want = killed_run.outcome
    summary = _resume_or_restart(killed_run.cfg, run)
    got = _run_outcome(run)
    for key in ("last", "best"):
        assert _same_tensors(got.pop(key), want[key]), f"{key} weights"
    assert got == {k: v for k, v in want.items() if k not in ("last", "best")}
    assert summary["best_epoch"] == want["best_epoch"]


# ---------------------------------------------------------------------------------------------
# mbt prepare


def _small_data(demo_root: Path, out: Path) -> Path:
    """Two classes x two clips of the demo data (one clip with its sound in the mp4)."""
    for cls in sorted(p.name for p in (demo_root / "video").iterdir())[:2]:
        for video in sorted((demo_root / "video" / cls).glob("*_c01.mp4"))[:2]:
            for kind, ext in (("video", ".mp4"), ("audio", ".wav")):
                src = demo_root / kind / cls / (video.stem + ext)
                if src.is_file():
                    (out / kind / cls).mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, out / kind / cls / src.name)
    return out


def _cache_outcome(cache: Path) -> dict:
    return {
        "index": json.loads((cache / "index.json").read_text()),
        "files": {p.name: p.read_bytes() for p in sorted(cache.rglob("*")) if p.is_file()},
    }


PREPARE_WRITES = 4 * 2 + 1  # frames and log-mel of each of the 4 clips, then index.json


@dataclass
class KilledPrepare:
    data: Path
    cfg: RunConfig
    points: list[Path]
    outcome: dict


@pytest.fixture(scope="module")
def killed_prepare(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> KilledPrepare:
    tmp = tmp_path_factory.mktemp("killed-prepare")
    data = _small_data(demo_root, tmp / "data")
    cfg = tiny_config()
    snaps = Snapshots(tmp / "cache", tmp / "kills")
    with pytest.MonkeyPatch.context() as m:  # the worker process is forked: it inherits this
        m.setattr(os, "replace", snaps.hook(os.replace))
        prepare(data, tmp / "cache", cfg.data, cfg.model, workers=1, progress=False)
    return KilledPrepare(data, cfg, snaps.points(), _cache_outcome(tmp / "cache"))


@pytest.mark.parametrize("k", range(PREPARE_WRITES))
def test_prepare_killed_at_any_write_runs_again_to_the_same_cache(killed_prepare, k):
    kp = killed_prepare
    assert len(kp.points) == PREPARE_WRITES
    cache = kp.points[k]
    report = prepare(kp.data, cache, kp.cfg.data, kp.cfg.model, workers=1, progress=False)
    assert report.failed == []
    got = _cache_outcome(cache)
    assert got["index"] == kp.outcome["index"]
    assert sorted(got["files"]) == sorted(kp.outcome["files"])  # no temporary left
    assert got["files"] == kp.outcome["files"]
