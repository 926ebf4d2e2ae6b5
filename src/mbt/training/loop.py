"""The training run: :func:`train` (MAE's ``main_finetune``; one epoch is :mod:`.engine`).

A run, step by step (:func:`_train` reads as this list)::

    check_run_dir     out/ is new, or holds a checkpoint to --resume (last, else an intact
                      older copy: checkpoint.resume_point)
    load_init_weights model.init (ViT) and model.audio_init (AST), read before the data: a
                      missing weight file fails at once (new runs only)
    setup_data        [unpack a .zip] -> open_source (media scanned, a prepared cache or its
                      shards) -> build_loader for train and val (mbt.data.loaders)
    build_engine      seed -> MBT -> [ViT, AST init] -> [DDP, compile] -> optimizer, schedule,
                      scaler
    restore           --resume: weights, optimizer, schedule, scaler, RNG, RunState
    reconcile         the run dir made to agree with that state (after a kill or a damaged file:
                      rundir.reconcile)
    write_run_files   config.yaml (resolved, flat), classes.json
    every epoch       run_epoch (train_one_epoch + validate) -> select_best (best?)
                      -> save_epoch (checkpoints last/ best/, plot.png, training_log.csv)
                      -> early stopping? (:mod:`.stopping`: on the history, metric and loss)
    summarise         the summary dict and the closing line

Everything the run knows between epochs is one :class:`RunState`, saved in every checkpoint's
``state.pt`` beside the optimizer, schedule, scaler and RNG states.

Determinism: the shuffling order is a function of (seed, epoch) (``DistributedSampler``), mixup
and modality dropout draw from a generator seeded with (seed, epoch, rank), the data set's
augmentation from (seed, epoch, index), and dropout / drop-path from the global RNG whose state
is saved in every checkpoint. So ``--resume`` reproduces the uninterrupted run bit for bit.

Crash safety: every file is written to a temporary name and renamed (:mod:`mbt.files`), so a
kill leaves each file old or new, never half. What a kill can leave is a run directory whose
files disagree: ``last`` written but not ``best``, or the checkpoints written but not the log.
``last``'s state (its history of log rows and its best epoch) is the truth, and
:func:`.rundir.reconcile` rebuilds the rest from it on ``--resume``, so a resumed run ends as the
uninterrupted one would (same weights, same log, same best).

Batch size: ``train.batch_size`` is per process; the effective batch is
``batch_size * grad_accum * world_size``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mbt import progress
from mbt.config import RunConfig, TrainConfig, replace, save_config, to_dict
from mbt.data.archive import open_data_path
from mbt.data.loaders import Loader, build_loader, open_source
from mbt.files import write_atomic
from mbt.model import MBT
from mbt.model.folder import WEIGHTS, load_weights
from mbt.model.inits import InitWeights, apply_init, load_init_weights
from mbt.runtime import describe, resolve_precision
from mbt.training import checkpoint as ckpt
from mbt.training import distributed as dist
from mbt.training.engine import (
    Engine,
    EpochStats,
    NonFiniteLossError,
    current_lr,
    train_one_epoch,
    validate,
)
from mbt.training.optim import build_optimizer, build_scheduler
from mbt.training.rundir import (
    RunDir,
    plot_history,
    read_log,
    reconcile,
    resolve_folder,
    write_log,
)
from mbt.training.stopping import Plateau, plateau, watched
from mbt.training.stopping import describe as describe_plateau

__all__ = ["NonFiniteLossError", "RunState", "train"]


# ---------------------------------------------------------------------------------------------
# Data


def resolve_data(cfg: RunConfig, data: str | Path | None, announce: bool = True) -> RunConfig:
    """Put ``--data`` into ``cfg.data.root`` (so the saved config knows where the data was); a
    ``.zip`` is unpacked once (:mod:`mbt.data.archive`) and its folder becomes the root."""
    if data:
        cfg = replace(cfg, data=replace(cfg.data, root=str(data)))
    if cfg.data.root and not cfg.data.cache:  # a prepared cache is read instead of the media
        root = open_data_path(cfg.data.root, announce=announce)
        cfg = replace(cfg, data=replace(cfg.data, root=str(root)))
    if not cfg.data.root and not cfg.data.cache:
        raise ValueError("no data set given: pass --data DIR or set data.root (or data.cache)")
    return cfg


@dataclass
class RunData:
    """The two splits of a run as loaders, and what the data says about the model."""

    train: Loader  # reseeded every epoch (set_epoch)
    val: Loader
    classes: list[str]
    multi_label: bool


def setup_data(
    cfg: RunConfig, data: str | Path | None, info: dist.DistInfo
) -> tuple[RunConfig, RunData]:
    """Scan ``data`` (or open the cache) and build the loaders of both splits.

    Returns:
        The config with ``data.root``, ``model.num_classes`` and ``data.multi_label`` set from
        the data, and the :class:`RunData`.
    """
    cfg = resolve_data(cfg, data, announce=info.is_main)
    source = open_source(cfg.data, cfg.model)
    if info.is_main:
        print(source.describe())
    share = dict(
        batch_size=cfg.train.batch_size, seed=cfg.train.seed, rank=info.rank,
        world_size=info.world_size, pin_memory=info.device.type == "cuda",
    )  # fmt: skip
    train = build_loader(source, "train", train=True, **share)
    val = build_loader(source, "val", train=False, **share)
    classes, multi_label = train.classes, train.multi_label
    _check_splits(cfg, train, val, multi_label)
    cfg = replace(
        cfg,
        model=replace(cfg.model, num_classes=len(classes)),
        data=replace(cfg.data, multi_label=multi_label),
    )
    if info.is_main:
        print(
            f"splits: train {train.split_size} clips, val {val.split_size} clips, "
            f"{len(classes)} classes"
        )
    return cfg, RunData(train, val, classes, multi_label)


def _check_splits(cfg: RunConfig, train: Loader, val: Loader, multi_label: bool) -> None:
    where = cfg.data.cache or cfg.data.root
    if train.split_size == 0:
        raise ValueError(f"{where}: the training split is empty")
    if val.split_size == 0:
        raise ValueError(f"{where}: the validation split is empty")
    if cfg.train.metric == "map" and not multi_label:
        raise ValueError(
            "train.metric=map needs multi-label data; this data set is single-label "
            "(use train.metric=accuracy or auto)"
        )


# ---------------------------------------------------------------------------------------------
# Model, optimiser


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (initial weights, dropout)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(cfg: RunConfig) -> nn.Module:
    return MBT(cfg.model)


def freeze(model: nn.Module, prefixes: tuple[str, ...]) -> None:
    """Keep the parameters whose names start with one of ``prefixes`` fixed (``train.freeze``).

    Raises:
        ValueError: a prefix that names no parameter (a typo would silently train everything).
    """
    names = [n for n, _ in model.named_parameters()]
    for prefix in prefixes:
        if not any(n.startswith(prefix) for n in names):
            tops = sorted({n.split(".")[0] for n in names})
            raise ValueError(
                f"train.freeze: {prefix!r} names no parameter of this model "
                f"(its parameter names start with {', '.join(tops)})"
            )
    for name, p in model.named_parameters():
        if name.startswith(tuple(prefixes)):
            p.requires_grad_(False)


def build_engine(
    cfg: RunConfig, data: RunData, info: dist.DistInfo, weights: InitWeights | None = None
) -> Engine:
    """Model (seeded, then the pretrained ``weights``, if any), its DDP / compiled wrapper,
    optimizer, per-step schedule and GradScaler."""
    tc = cfg.train
    seed_everything(tc.seed)
    model = build_model(cfg)
    if weights is not None:
        apply_init(model, weights)
    freeze(model, tc.freeze)
    model = model.to(info.device)
    net: nn.Module = model
    if info.distributed:
        ids = [info.device.index] if info.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if tc.compile:
        net = torch.compile(net)
    optimizer = build_optimizer(model, tc)
    scheduler = build_scheduler(optimizer, tc, steps_per_epoch(data, tc))
    precision = resolve_precision(tc.precision, info.device)
    scaler = torch.amp.GradScaler(info.device.type, enabled=precision == "fp16")
    return Engine(cfg, model, net, optimizer, scheduler, scaler, info, data.multi_label, precision)


def steps_per_epoch(data: RunData, tc: TrainConfig) -> int:
    """Optimizer steps per epoch (the last accumulation group may be short)."""
    return math.ceil(len(data.train) / tc.grad_accum)


# ---------------------------------------------------------------------------------------------
# Run state


@dataclass
class RunState:
    """What the run knows between epochs; saved in ``state.pt`` (flat keys) and restored by
    ``--resume``. The optimizer step count lives in :class:`~.engine.Engine` (``step``)."""

    epoch: int = 0  # epochs done
    best_metric: float = -math.inf  # validation metric of the best epoch
    best_epoch: int = 0  # 1-based; 0 = no epoch yet
    best_val_loss: float = math.inf  # val loss of the best epoch: the fallback selection
    metric_nan: bool = False  # the metric was NaN once: select on val_loss (warned once)
    history: list[dict[str, str]] = field(default_factory=list)  # log rows; early stopping's input

    @classmethod
    def from_saved(cls, saved: dict[str, Any], log_path: Path) -> RunState:
        """The state in a checkpoint's ``state.pt``. Checkpoints written before the state was
        one dataclass lack ``metric_nan`` and ``history``: the log has the history then. The
        ``bad_epochs`` of older states is dropped: the history decides (:mod:`.stopping`)."""
        names = {f.name for f in dataclasses.fields(cls)}
        state = cls(**{k: v for k, v in saved.items() if k in names})
        if "history" not in saved:
            state.history = [r for r in read_log(log_path) if int(r["epoch"]) <= state.epoch]
        return state

    def to_saved(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def plateau(self, tc: TrainConfig, metric: str) -> Plateau:
        """How long the numbers early stopping watches have not improved."""
        return plateau(self.history, watched(tc, metric, self.metric_nan), tc.warmup_epochs)

    def out_of_patience(self, tc: TrainConfig, metric: str) -> bool:
        return tc.early_stopping > 0 and self.plateau(tc, metric).epochs >= tc.early_stopping

    def finished(self, tc: TrainConfig, metric: str) -> bool:
        """Every epoch is done, or early stopping ended the run."""
        return self.epoch >= tc.epochs or self.out_of_patience(tc, metric)

    def stopped_early(self, tc: TrainConfig, metric: str) -> bool:
        """Early stopping ended the run before its last epoch."""
        return self.out_of_patience(tc, metric) and self.epoch < tc.epochs

    def stop_reason(self, tc: TrainConfig, metric: str) -> str:
        """What early stopping watched and for how long (:func:`.stopping.describe`)."""
        why = describe_plateau(self.plateau(tc, metric), watched(tc, metric, self.metric_nan))
        return f"{why} (train.early_stopping={tc.early_stopping})"


def metric_name(cfg: RunConfig, multi_label: bool) -> str:
    """``val_map`` or ``val_acc`` (``train.metric=auto`` picks mAP for multi-label data)."""
    metric = cfg.train.metric
    if metric == "auto":
        metric = "map" if multi_label else "accuracy"
    return "val_map" if metric == "map" else "val_acc"


# ---------------------------------------------------------------------------------------------
# The run


def train(
    cfg: RunConfig,
    data: str | Path | None = None,
    out: str | Path = "runs/run",
    resume: bool = False,
) -> dict[str, Any]:
    """Train ``cfg`` on ``data`` into the run directory ``out``.

    Writes ``config.yaml`` (resolved, with the class count and data root), ``classes.json``,
    ``training_log.csv``, ``plot.png`` and ``checkpoints/{last,best}/``. Under ``torchrun``
    every process calls this; only rank 0 writes.

    Args:
        cfg: the run configuration (``model.num_classes`` is set from the data).
        data: data set folder; overrides ``cfg.data.root``.
        out: run directory.
        resume: continue from ``out/checkpoints/last`` exactly where it stopped.

    Model selection: ``checkpoints/best`` is the epoch with the highest validation metric
    (``train.metric``); the first epoch always counts as an improvement. ``train.metric=map`` on
    single-label data is a configuration mistake and raises a ValueError up front. When the
    metric cannot be computed from the data (NaN: mAP with no validation clip positive for any
    class), a warning is printed once and the run selects (and early-stops) on the validation
    loss instead (lower is better).

    Early stopping (``train.early_stopping``, :mod:`.stopping`) ends the run once no watched
    number (by default the metric and the validation loss) has improved for that many epochs
    after the learning-rate warm-up; it never changes which epoch is best.

    Resuming a run that has already finished (its epochs are done, or it stopped early) says so
    and returns its summary without training.

    Returns:
        Summary: ``best_metric``, ``best_epoch``, ``metric``, ``epochs_run``, ``stopped_early``,
        ``last_val`` (metrics of the last epoch), ``time_s``, ``clips_per_s``, ``run_dir``
        (``already_finished`` when a resumed run had nothing left to do).

    Raises:
        ValueError: bad configuration or data.
        NonFiniteLossError: the loss became NaN / inf; ``checkpoints/last`` is the last good one.
    """
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    info = dist.init_distributed(cfg.train.device)
    try:
        return _train(cfg, data, RunDir(Path(out)), resume, info)
    finally:
        dist.cleanup()


@dataclass
class EpochResult:
    """One epoch of this call: training statistics, validation metrics, whether it was best."""

    epoch: int  # 1-based
    lr: float  # at the start of the epoch
    stats: EpochStats
    val: dict[str, float]
    improved: bool = False


def _train(
    cfg: RunConfig, data: str | Path | None, run: RunDir, resume: bool, info: dist.DistInfo
) -> dict[str, Any]:
    """:func:`train` inside the process group: the run's steps, in order."""
    resolve_precision(cfg.train.precision, info.device)  # fp16 on a CPU: an error before the data
    point = check_run_dir(run, resume)
    # resumed: from the checkpoint; model.warm_start may name a run (its last checkpoint)
    locate = partial(resolve_folder, which="last")
    weights = None if resume else load_init_weights(cfg.model, locate)
    cfg, splits = setup_data(cfg, data, info)
    engine = build_engine(cfg, splits, info, weights)
    if weights is not None and info.is_main:
        print(weights.describe())
    state = restore(engine, point.folder, run) if point else RunState()
    metric = metric_name(cfg, splits.multi_label)
    dist.barrier()  # every process has read the checkpoint before rank 0 tidies the run dir
    if info.is_main:
        reconcile(run, state, point, metric)
    state = dist.all_gather_objects(state)[0]  # rank 0's, which a repair may have changed
    write_run_files(run, engine, splits)
    already_finished = state.finished(cfg.train, metric)
    if resume and info.is_main:
        announce_resume(run, state, cfg.train, metric, engine.step)
    start, results = time.perf_counter(), []
    while not state.finished(cfg.train, metric):
        result = run_epoch(engine, splits, state.epoch, run)
        select_best(state, result, metric, info.is_main)
        save_epoch(engine, run, state, result, metric, splits.classes)
        results.append(result)
    if results and state.stopped_early(cfg.train, metric) and info.is_main:
        print(f"early stopping after epoch {state.epoch}: {state.stop_reason(cfg.train, metric)}")
    summary = summarise(
        run, state, results, metric, splits, cfg.train, time.perf_counter() - start,
        already_finished,
    )  # fmt: skip
    if info.is_main:
        print(done_line(summary, run))
    return summary


def check_run_dir(run: RunDir, resume: bool) -> ckpt.ResumePoint | None:
    """The checkpoint to resume from (None for a new run); refuses to mix up the two.

    Raises:
        FileNotFoundError: ``resume`` and no checkpoint.
        ValueError: a new run into a run directory, or every checkpoint is damaged.
    """
    if not resume:
        # checkpoints/last, or .last.old when a save was interrupted between its renames
        if any((d / WEIGHTS).is_file() for d in (run.last, run.last_old)):
            raise ValueError(
                f"{run.root} already holds a run; use --resume {run.root} or another --out"
            )
        return None
    point = ckpt.resume_point(run.last.parent)
    if point is None:
        raise FileNotFoundError(f"{run.root}: nothing to resume (no checkpoints/last)")
    return point


def restore(engine: Engine, directory: Path, run: RunDir) -> RunState:
    """Weights, optimizer, schedule, scaler, step and RNG from ``directory``; its RunState."""
    load_weights(directory, engine.model)
    saved = ckpt.read_state(directory)
    engine.optimizer.load_state_dict(saved["optimizer"])
    engine.scheduler.load_state_dict(saved["scheduler"])
    engine.scaler.load_state_dict(saved["scaler"])
    engine.step = saved["step"]
    ckpt.set_rng_state(saved["rng"])
    return RunState.from_saved(saved, run.log)


def write_run_files(run: RunDir, engine: Engine, data: RunData) -> None:
    """``config.yaml`` (resolved and flat: a run reloads without its presets), ``classes.json``,
    and the line that says what is being trained where."""
    if not engine.info.is_main:
        return
    cfg, tc, info = engine.cfg, engine.cfg.train, engine.info
    run.root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run.config)
    write_atomic(run.classes, json.dumps(data.classes, indent=1))
    n_params = sum(p.numel() for p in engine.model.parameters())
    eff = tc.batch_size * tc.grad_accum * info.world_size
    print(
        f"model: {n_params / 1e6:.2f}M parameters, modalities {list(cfg.model.modalities)}, "
        f"{len(data.classes)} classes | device {info.device} x{info.world_size} | "
        f"precision {describe(tc.precision, engine.precision, info.device)} | "
        f"effective batch {eff} | {steps_per_epoch(data, tc)} steps/epoch | run dir {run.root}"
    )


def announce_resume(run: RunDir, state: RunState, tc: TrainConfig, metric: str, step: int) -> None:
    if not state.finished(tc, metric):
        print(f"resuming after epoch {state.epoch} (step {step})")
        return
    why = (
        f"it stopped early after epoch {state.epoch} ({state.stop_reason(tc, metric)})"
        if state.stopped_early(tc, metric)
        else f"all {tc.epochs} epochs are done (raise train.epochs to train on)"
    )
    print(f"{run.root}: the run has already finished: {why}; nothing to train")


def run_epoch(engine: Engine, data: RunData, epoch: int, run: RunDir) -> EpochResult:
    """Train one epoch (0-based ``epoch``) and validate.

    Raises:
        NonFiniteLossError: naming the last good checkpoint.
    """
    data.train.set_epoch(epoch)
    lr = current_lr(engine)
    try:
        stats = train_one_epoch(engine, data.train, epoch)
    except NonFiniteLossError as e:
        good = f"{run.last} (epoch {start_epoch_of(run.last)})" if run.last.exists() else "none"
        raise NonFiniteLossError(
            f"{e}; stopped. Last good checkpoint: {good}. Lower train.lr or set train.grad_clip."
        ) from None
    return EpochResult(epoch + 1, lr, stats, validate(engine, data.val, epoch))


def select_best(state: RunState, result: EpochResult, metric: str, is_main: bool) -> None:
    """Record the epoch in ``state``: its log row (what early stopping decides on), whether it
    is the best so far (sets ``result.improved``).

    The first epoch is always best; then a higher metric, or a lower val loss once the
    metric has been NaN (cannot be computed from this data). Selection ignores val_loss
    otherwise, whatever early stopping watches.
    """
    val = result.val
    state.history.append(log_row(result, metric))
    by_loss = math.isnan(val[metric])
    if by_loss and not state.metric_nan and is_main:
        progress.write(
            f"warning: {metric} is NaN (no validation clip is positive for any class); "
            "selecting the best epoch by val_loss instead"
        )
    state.metric_nan = state.metric_nan or by_loss
    if state.best_epoch == 0:
        result.improved = True
    elif by_loss:
        result.improved = val["val_loss"] < state.best_val_loss
    else:
        result.improved = val[metric] > state.best_metric or math.isnan(state.best_metric)
    if result.improved:
        state.best_metric, state.best_epoch = val[metric], result.epoch
        state.best_val_loss = val["val_loss"]
    state.epoch = result.epoch


def log_row(result: EpochResult, metric: str) -> dict[str, str]:
    """One row of ``training_log.csv``."""
    s = result.stats
    return {
        "epoch": str(result.epoch),
        "train_loss": f"{s.loss:.6f}",
        "val_loss": f"{result.val['val_loss']:.6f}",
        "train_acc": f"{s.accuracy:.6f}",
        metric: f"{result.val[metric]:.6f}",
        "lr": f"{result.lr:.6g}",
        "time": f"{s.seconds:.2f}",
        "clips_per_s": f"{s.clips / max(s.seconds, 1e-9):.1f}",
    }


def save_epoch(
    engine: Engine,
    run: RunDir,
    state: RunState,
    result: EpochResult,
    metric: str,
    classes: list[str],
) -> None:
    """Rank 0 writes checkpoints ``last`` (and ``best`` when improved), the plot, the log and
    the epoch's line; every process then waits for it.

    The order is what :func:`.rundir.reconcile` relies on: ``last`` first (the resume point and the
    truth), the log last (a complete log implies a complete plot).
    """
    if engine.info.is_main:
        saved = {
            "optimizer": engine.optimizer.state_dict(),
            "scheduler": engine.scheduler.state_dict(),
            "scaler": engine.scaler.state_dict(),
            "step": engine.step,
            "rng": ckpt.rng_state(),
            **state.to_saved(),
            "metric": metric,
            "config": to_dict(engine.cfg),
            "classes": classes,
        }
        ckpt.save_checkpoint(run.last, engine.model, saved)
        if result.improved:
            ckpt.save_checkpoint(run.best, engine.model, saved)
        plot_history(state.history, metric, run.plot)
        write_log(run.log, state.history, metric)
        progress.write(epoch_line(result, metric, engine.cfg.train.epochs))
    dist.barrier()


def epoch_line(result: EpochResult, metric: str, epochs: int) -> str:
    """The one line per epoch (the whole record of an epoch when stderr is not a terminal)."""
    s, val = result.stats, result.val
    skipped = f", {s.skipped} clips failed to decode (skipped)" if s.skipped else ""
    return (
        f"epoch {result.epoch}/{epochs}  train_loss {s.loss:.4f}  "
        f"val_loss {val['val_loss']:.4f}  train_acc {s.accuracy:.4f}  {metric} {val[metric]:.4f}"
        f"{' *' if result.improved else ''}  lr {result.lr:.2e}  {s.seconds:.1f}s "
        f"({s.clips / max(s.seconds, 1e-9):.1f} clips/s){skipped}"
    )


def summarise(
    run: RunDir,
    state: RunState,
    results: list[EpochResult],
    metric: str,
    data: RunData,
    tc: TrainConfig,
    seconds: float,
    already_finished: bool,
) -> dict[str, Any]:
    """The summary :func:`train` returns (``seconds``: the run's wall time in this call)."""
    clips = sum(r.stats.clips for r in results)
    train_seconds = sum(r.stats.seconds for r in results)
    return {
        "run_dir": str(run.root),
        "metric": metric,
        "best_metric": state.best_metric,
        "best_epoch": state.best_epoch,
        "epochs_run": len(state.history),
        "stopped_early": state.stopped_early(tc, metric),
        "last_val": results[-1].val if results else {},
        "time_s": seconds,
        "clips_per_s": clips / max(train_seconds, 1e-9),
        "num_classes": len(data.classes),
        "multi_label": data.multi_label,
        "already_finished": already_finished,
    }


def done_line(summary: dict[str, Any], run: RunDir) -> str:
    """The closing line of a run."""
    s = summary
    return (
        f"done: best {s['metric']} {s['best_metric']:.4f} at epoch {s['best_epoch']}, "
        f"{s['epochs_run']} epochs{' (early stop)' if s['stopped_early'] else ''}, "
        f"{s['time_s']:.1f}s, {s['clips_per_s']:.1f} clips/s | "
        f"best weights: {run.best / WEIGHTS}"
    )


# ---------------------------------------------------------------------------------------------
# Reading a run back


def start_epoch_of(directory: Path) -> int:
    """The epoch a checkpoint was written after (0 when unreadable)."""
    return ckpt.checkpoint_epoch(directory) or 0
