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
from pathlib import Path

import torch
from safetensors.torch import load_file

from mbt.data.cache import prepare
from mbt.training import loop
from mbt.training.checkpoint import load_state
from tests.training.conftest import demo_cache, tiny_config  # noqa: F401 (a fixture)

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
    rows = loop.read_log(run / "training_log.csv")
    return {
        "files": sorted(str(p.relative_to(run)) for p in run.rglob("*")),
        "best_epoch": load_state(ckpts / "best")["epoch"],
        "state_best_epoch": load_state(ckpts / "last")["best_epoch"],
        "log": [{k: v for k, v in r.items() if k not in IGNORED_LOG_COLUMNS} for r in rows],
        "last": load_file(ckpts / "last" / "model.safetensors"),
        "best": load_file(ckpts / "best" / "model.safetensors"),
    }


def _check_run(cfg, run: Path, want: dict) -> list[str]:
    """Finish the killed run ``run``; what differs from the uninterrupted outcome ``want``."""
    summary = _resume_or_restart(cfg, run)
    got = _run_outcome(run)
    bad = []
    for key, value in want.items():
        same = _same_tensors(got[key], value) if key in ("last", "best") else got[key] == value
        if not same:
            bad.append(f"{key} weights" if key in ("last", "best") else f"{key}: {got[key]}")
    if summary["best_epoch"] != want["best_epoch"]:
        bad.append(f"the run reports best epoch {summary['best_epoch']}")
    return bad


def test_a_run_killed_at_any_write_resumes_to_the_same_end(demo_cache, tmp_path, monkeypatch):  # noqa: F811
    cfg = tiny_config(f"data.cache={demo_cache}", "train.epochs=2")
    run = tmp_path / "run"
    snaps = Snapshots(run, tmp_path / "kills")
    with monkeypatch.context() as m:
        m.setattr(os, "replace", snaps.hook(os.replace))
        straight = loop.train(cfg, None, run)
    # Epoch 2 improves, so a kill between writing last and best is among the points.
    assert straight["best_epoch"] == 2
    want = _run_outcome(run)
    points = snaps.points()
    labels = [p.name.split(" ", 1)[1] for p in points]
    for name in ("config.yaml", "classes.json", "training_log.csv", "plot.png"):
        assert f"before {name}" in labels, name
    assert labels.count("after checkpoints|best") == 2  # best written at both epochs
    failures = []
    for point in points:
        try:
            bad = _check_run(cfg, point, want)
        except Exception as e:  # the second run failed, or left a file unreadable
            bad = [f"{type(e).__name__}: {e}"]
        if bad:
            failures.append(f"kill {point.name}: {'; '.join(bad)}")
    assert not failures, "\n".join(failures)


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


def test_prepare_killed_at_any_write_runs_again_to_the_same_cache(demo_root, tmp_path, monkeypatch):
    data = _small_data(demo_root, tmp_path / "data")
    cfg = tiny_config()
    cache = tmp_path / "cache"
    snaps = Snapshots(cache, tmp_path / "kills")
    with monkeypatch.context() as m:  # the worker process is forked: it inherits the hook
        m.setattr(os, "replace", snaps.hook(os.replace))
        prepare(data, cache, cfg.data, cfg.model, workers=1, progress=False)
    want = _cache_outcome(cache)
    points = snaps.points()
    assert len(points) == 4 * 2 + 1  # frames and log-mel of each clip, then the index
    failures = []
    for point in points:
        report = prepare(data, point, cfg.data, cfg.model, workers=1, progress=False)
        got = _cache_outcome(point)
        bad = [f"failed {report.failed}"] if report.failed else []
        if got["index"] != want["index"]:
            bad.append("index.json differs")
        if got["files"].keys() != want["files"].keys():
            bad.append(f"files {sorted(set(got['files']) ^ set(want['files']))} differ")
        elif got["files"] != want["files"]:
            bad.append("file contents differ")
        if bad:
            failures.append(f"kill {point.name}: {'; '.join(bad)}")
    assert not failures, "\n".join(failures)
