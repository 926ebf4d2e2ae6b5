"""A run directory: where a training run keeps its files, and how they are read back and repaired.

Layout (``mbt train --out RUN``)::

    RUN/config.yaml             the resolved RunConfig (flat: reloads without its presets)
    RUN/classes.json            the class names (a JSON list)
    RUN/checkpoints/last/       the latest epoch: a model folder (:mod:`mbt.model.folder`) plus
    RUN/checkpoints/best/       state.pt and SHA256SUMS (:mod:`.checkpoint`); the best epoch
    RUN/checkpoints/.<name>.old the previous copy, left by a save interrupted between its renames
    RUN/training_log.csv        one row per epoch (:data:`LOG_FIELDS`)
    RUN/plot.png                loss and accuracy per epoch

Reading a model back (:func:`resolve_folder`, :func:`describe_folder`) covers every checkpoint
ever written here, including those from before checkpoints held a ``config.json`` (their config
comes from the run's ``config.yaml`` or ``state.pt``); :func:`mbt.loading.load_model` builds
the model from what they say. Repairing a run after a kill (:func:`reconcile`) makes these
files agree with the state the resumed run starts from.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mbt import progress
from mbt.config import RunConfig, from_dict, load_config
from mbt.files import SUMS, atomic_path, remove_temporaries, write_atomic
from mbt.model.folder import CONFIG, WEIGHTS, ConfigJson, damaged, read_config
from mbt.training.checkpoint import (
    STATE,
    ResumePoint,
    checkpoint_epoch,
    checkpoint_problem,
    copy_checkpoint,
    read_state,
)

RUN_CONFIG = "config.yaml"  # a run directory's resolved RunConfig
RUN_CLASSES = "classes.json"  # a run directory's class names (a JSON list)
# The seed's columns first (epoch, train_loss, val_loss, train_acc, val_acc), then ours.
LOG_FIELDS = (
    "epoch", "train_loss", "val_loss", "train_acc", "{metric}", "lr", "time", "clips_per_s",
)  # fmt: skip


@dataclass(frozen=True)
class RunDir:
    """The files of a run directory."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / RUN_CONFIG

    @property
    def classes(self) -> Path:
        return self.root / RUN_CLASSES

    @property
    def last(self) -> Path:
        return self.root / "checkpoints" / "last"

    @property
    def best(self) -> Path:
        return self.root / "checkpoints" / "best"

    @property
    def last_old(self) -> Path:
        """The copy of ``last`` an interrupted save leaves (see :mod:`.checkpoint`)."""
        return self.root / "checkpoints" / ".last.old"

    @property
    def best_old(self) -> Path:
        return self.root / "checkpoints" / ".best.old"

    @property
    def log(self) -> Path:
        return self.root / "training_log.csv"

    @property
    def plot(self) -> Path:
        return self.root / "plot.png"


class RunRecord(Protocol):
    """What :func:`reconcile` reads and repairs of the run's state (``loop.RunState``)."""

    epoch: int
    best_metric: float
    best_epoch: int
    best_val_loss: float
    history: list[dict[str, str]]


def load_run_config(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """The resolved ``config.yaml`` of a run directory, with ``key=value`` overrides."""
    path = RunDir(Path(run_dir)).config
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no config.yaml)")
    return load_config(path, overrides)


# ---------------------------------------------------------------------------------------------
# Reading a model back


def resolve_folder(path: str | Path, which: str = "best") -> Path:
    """The folder holding ``model.safetensors``: from a run dir, a model / checkpoint folder,
    or the weights file itself.

    A run directory gives ``checkpoints/<which>``. When a folder is missing, or damaged (its
    weights or config differ from its ``SHA256SUMS``), but the ``.<name>.old`` beside it holds
    intact weights (a save interrupted between its two renames), that one is used, with a
    warning for a damaged folder.

    Raises:
        FileNotFoundError: nothing usable there.
        ValueError: the folder is damaged and there is no intact copy.
    """
    p = Path(path).expanduser()
    if p.is_file() and p.name == WEIGHTS:
        p = p.parent
    for c in (p, p / "checkpoints" / which):
        copies = [d for d in (c, c.parent / f".{c.name}.old") if (d / WEIGHTS).is_file()]
        if copies:
            return _first_intact(copies)
    raise FileNotFoundError(
        f"{path}: neither a model directory ({CONFIG} + {WEIGHTS}) nor a run directory "
        f"({RUN_CONFIG} + checkpoints/{which}/{WEIGHTS})"
    )


def _first_intact(copies: list[Path]) -> Path:
    """The first folder whose weights and config match its checksums (a folder without
    checksums counts as intact); a damaged one is passed over with a warning on stderr."""
    problems = []
    for folder in copies:
        bad = damaged(folder)
        if not bad:
            if problems:
                print(f"warning: {problems[0]}; using the previous copy {folder}", file=sys.stderr)
            return folder
        problems.append(f"{folder}: damaged checkpoint ({', '.join(bad)} differs from {SUMS})")
    raise ValueError(f"{problems[0]}; there is no intact copy to fall back to")


def run_dir_of(folder: Path) -> Path | None:
    """The run directory of a checkpoint folder ``RUN/checkpoints/<name>``, if it is one."""
    run = folder.parent.parent
    if folder.parent.name == "checkpoints" and (run / RUN_CONFIG).is_file():
        return run
    return None


def describe_folder(folder: Path) -> tuple[ConfigJson, RunConfig | None]:
    """What a model folder says about its model, completed by its run when it is inside one:
    the run's config, and its class names and data config where ``config.json`` has none."""
    run = run_dir_of(folder)
    if not (folder / CONFIG).is_file():
        return _legacy_config(folder, run)
    config = read_config(folder / CONFIG)
    run_config = load_config(run / RUN_CONFIG) if run else None
    names = config.class_names
    if names is None and run is not None:
        names = _read_classes(run / RUN_CLASSES)
    data = config.data or (run_config.data if run_config else None)
    return ConfigJson(config.cfg, names, data, config.info), run_config


def _legacy_config(folder: Path, run: Path | None) -> tuple[ConfigJson, RunConfig]:
    """A checkpoint written before checkpoints had a ``config.json``.

    The config comes from the run's ``config.yaml`` (else ``state.pt``'s "config"), the names
    from the run's ``classes.json`` (else ``state.pt``'s "classes").
    """
    run_config = load_config(run / RUN_CONFIG) if run else None
    names = _read_classes(run / RUN_CLASSES) if run else None
    has_state = (folder / STATE).is_file()
    if run_config is None and not has_state:
        raise FileNotFoundError(
            f"{folder}: {WEIGHTS} without a {CONFIG}, a {STATE} or a run directory's "
            f"{RUN_CONFIG} to say which model it is"
        )
    state = read_state(folder) if has_state and (run_config is None or names is None) else {}
    if run_config is None:
        if "config" not in state:
            raise ValueError(f"{folder / STATE}: no 'config' in the checkpoint state")
        run_config = from_dict(RunConfig, state["config"])
    if names is None and state.get("classes"):
        names = [str(n) for n in state["classes"]]
    return ConfigJson(run_config.model, names, run_config.data), run_config


def _read_classes(path: Path) -> list[str] | None:
    if not path.is_file():
        return None
    names = json.loads(path.read_text())
    if not isinstance(names, list):
        raise ValueError(f"{path}: expected a JSON list of class names")
    return [str(n) for n in names]


# ---------------------------------------------------------------------------------------------
# The log and the plot


def read_log(path: Path) -> list[dict[str, str]]:
    """The rows of ``training_log.csv`` ([] when there is none)."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def log_text(rows: list[dict[str, Any]], metric: str) -> str:
    """The text of ``training_log.csv`` for ``rows`` (one row per epoch)."""
    fields = [f.format(metric=metric) for f in LOG_FIELDS]
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def write_log(path: Path, rows: list[dict[str, Any]], metric: str) -> None:
    """Rewrite ``training_log.csv`` atomically (a kill leaves the old log or the new one)."""
    write_atomic(path, log_text(rows, metric))


def plot_history(rows: list[dict[str, Any]], metric: str, path: Path) -> None:
    """``plot.png``: loss (train, val) and accuracy (train, val metric) per epoch."""
    # matplotlib takes ~1 s to import: only when a plot is drawn. The object-oriented Figure
    # needs no pyplot backend, so a notebook's backend is left alone.
    from matplotlib.figure import Figure

    epochs = [int(r["epoch"]) for r in rows]
    fig = Figure(figsize=(10, 4))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(epochs, [float(r["train_loss"]) for r in rows], "o-", label="train")
    ax1.plot(epochs, [float(r["val_loss"]) for r in rows], "o-", label="val")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend()
    with_acc = [r for r in rows if r.get("train_acc")]  # logs from before train_acc have none
    if with_acc:
        ax2.plot(
            [int(r["epoch"]) for r in with_acc], [float(r["train_acc"]) for r in with_acc],
            "o-", label="train (top-1)",
        )  # fmt: skip
    ax2.plot(epochs, [float(r[metric]) for r in rows], "o-", label=f"val ({metric[4:]})")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("accuracy" if metric == "val_acc" else "top-1 / mAP")
    ax2.set_ylim(0, 1)
    ax2.legend()
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


# ---------------------------------------------------------------------------------------------
# Repairs after a kill


def reconcile(run: RunDir, state: RunRecord, point: ResumePoint | None, metric: str) -> None:
    """Make the run directory agree with the state the run starts from (rank 0).

    A kill can leave temporaries (removed: a run directory has one writer), a ``last``
    missing or damaged (the run resumed from an older copy, which becomes ``last``), a ``best``
    that is not the best epoch the state records (killed between writing ``last`` and
    ``best``: re-saved from ``last``), or a log and plot behind the state (rewritten from its
    history). Each repair is said in one line.
    """
    for folder in (run.root, run.last.parent):
        remove_temporaries(folder)
    if point is None:
        return
    for note in point.notes:
        progress.write(f"warning: {note}; resuming from {point.folder}")
    if point.folder == run.last_old:  # an interrupted save: the previous last is complete
        if run.last.exists():
            shutil.rmtree(run.last)
        os.replace(run.last_old, run.last)
    elif point.folder != run.last:
        copy_checkpoint(point.folder, run.last)
    reconcile_best(run, state, metric)
    for old in (run.last_old, run.best_old):  # the folders they replaced
        shutil.rmtree(old, ignore_errors=True)
    text = log_text(state.history, metric)
    if not run.plot.is_file() or not run.log.is_file() or run.log.read_bytes() != text.encode():
        plot_history(state.history, metric, run.plot)  # plot first: a complete log implies it
        write_atomic(run.log, text)


def reconcile_best(run: RunDir, state: RunRecord, metric: str) -> None:
    """``checkpoints/best`` holds the state's best epoch, or is rebuilt (said in one line).

    The best epoch is the last one when the kill came between writing ``last`` and ``best``:
    ``last`` is copied. Otherwise that epoch's weights are gone (``best`` deleted or damaged):
    the last epoch becomes the best so far, and the line says so.
    """
    held = checkpoint_epoch(run.best) if checkpoint_problem(run.best) is None else None
    if state.best_epoch in (0, held):
        return
    what = f"holds epoch {held}" if held else "is missing or damaged"
    if state.best_epoch == state.epoch:
        progress.write(
            f"note: {run.best} {what}, the best epoch is {state.best_epoch}: copied from {run.last}"
        )
    else:
        progress.write(
            f"warning: {run.best} {what}; the best epoch {state.best_epoch} is lost, so the "
            f"last epoch ({state.epoch}) is the best so far"
        )
        row = state.history[-1]
        state.best_epoch = state.epoch
        state.best_metric, state.best_val_loss = float(row[metric]), float(row["val_loss"])
    copy_checkpoint(run.last, run.best)
