"""The training engine: :func:`train_one_epoch`, :func:`validate` and :func:`train`.

Data flow of one run::

    scan(data) -> AVDataset / CachedDataset -> DataLoader (DistributedSampler, seeded per epoch)
      -> [mixup, modality dropout] -> MBT(video, audio, per_modality=True) -> loss
      -> backward (autocast, GradScaler, accumulation) -> clip -> optimizer + per-step schedule
      -> validate on val every epoch -> training_log.csv, plot.png, checkpoints last/ best/

Determinism: the shuffling order is a function of (seed, epoch) (``DistributedSampler``), mixup
and modality dropout draw from a generator seeded with (seed, epoch, rank), the data set's
augmentation from (seed, epoch, index), and dropout / drop-path from the global RNG whose state
is saved in every checkpoint. So ``--resume`` reproduces the uninterrupted run bit for bit.

Batch size: ``train.batch_size`` is per process; the effective batch is
``batch_size * grad_accum * world_size``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import random
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from mbt.config import RunConfig, from_dict, replace, save_config, to_dict
from mbt.training import checkpoint as ckpt
from mbt.training import distributed as dist
from mbt.training.metrics import classification_metrics
from mbt.training.optim import build_optimizer, build_scheduler

LOG_FIELDS = ("epoch", "train_loss", "val_loss", "{metric}", "lr", "time", "clips_per_s")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stops, checkpoints stay intact."""


# ---------------------------------------------------------------------------------------------
# Data


def resolve_data(cfg: RunConfig, data: str | Path | None) -> RunConfig:
    """Put ``--data`` into ``cfg.data.root`` (so the saved config knows where the data was)."""
    if data:
        cfg = replace(cfg, data=replace(cfg.data, root=str(data)))
    if not cfg.data.root and not cfg.data.cache:
        raise ValueError("no data set given: pass --data DIR or set data.root (or data.cache)")
    return cfg


def scan_data(cfg: RunConfig):
    """Index the media data set (``DataIndex``), or None when reading a prepared cache."""
    if cfg.data.cache:
        return None
    from mbt.data.layouts import scan

    modalities = cfg.model.modalities
    return scan(
        cfg.data.root, cfg.data,
        require_video="video" in modalities, need_audio="audio" in modalities,
    )  # fmt: skip


def open_split(
    cfg: RunConfig, split: str, index, *, train: bool, views: int = 1, crops: int | None = None
) -> Dataset:
    """One split as an ``AVDataset`` (from ``data.cache`` when set, else decoded media).

    ``views`` temporal views x ``crops`` spatial crops per clip (None: the data set's default,
    i.e. ``data.test_crops`` only with several views; per-epoch validation stays one view).

    A clip that fails to decode is skipped (logged by the data set, dropped by the collate
    function), never replaced by a made-up item.
    """
    from mbt.data.cache import open_dataset

    return open_dataset(
        cfg.data, cfg.model, split, train=train, views=views, crops=crops,
        seed=cfg.train.seed, on_error="skip", index=index,
    )  # fmt: skip


def _collate():
    from mbt.data.dataset import collate_skip_failed

    return collate_skip_failed


def make_loader(
    dataset: Dataset, batch_size: int, sampler, num_workers: int, device: torch.device
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=_collate(),
        pin_memory=device.type == "cuda",
        drop_last=False,
    )


# ---------------------------------------------------------------------------------------------
# One step


def autocast(device: torch.device, precision: str):
    """bf16 autocast (CPU and GPU), fp16 autocast (GPU), or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def model_inputs(
    batch: dict, modalities: Iterable[str], device: torch.device
) -> dict[str, torch.Tensor]:
    """``{"video": ..., "audio": ...}`` for the modalities the model was built with."""
    return {m: batch[m].to(device, non_blocking=True) for m in modalities}


def soft_targets(labels: torch.Tensor, num_classes: int, multi_label: bool) -> torch.Tensor:
    """(B, C) float targets: one-hot for single-label ints, the multi-hot as float otherwise."""
    if multi_label:
        return labels.float()
    return F.one_hot(labels.long(), num_classes).float()


def loss_fn(logits: torch.Tensor, targets: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Softmax cross-entropy (single-label) or sigmoid BCE (multi-label) on soft targets.

    Args:
        logits: (B, C).
        targets: (B, C) probabilities (one-hot, smoothed or mixed).
    """
    logits = logits.float()
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, targets)
    return -(targets * F.log_softmax(logits, dim=-1)).sum(-1).mean()


def training_loss(
    per_modality: dict[str, torch.Tensor],
    targets: torch.Tensor,
    multi_label: bool,
    per_modality_loss: bool,
) -> torch.Tensor:
    """Mean of the per-modality losses (official), or the loss of the mean logits."""
    if per_modality_loss:
        return torch.stack(
            [loss_fn(lg, targets, multi_label) for lg in per_modality.values()]
        ).mean()
    return loss_fn(torch.stack(list(per_modality.values())).mean(0), targets, multi_label)


def drop_modality(
    inputs: dict[str, torch.Tensor], p: float, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Modality dropout: for a fraction ``p`` of the clips zero the input of one modality
    (audio or video with equal chance), so the model learns to classify from either alone.

    The clip keeps its place in the batch (no per-clip forward); a zeroed input is exactly
    what a clip without a sound track looks like with ``data.missing_audio=silence``.
    """
    if p <= 0 or len(inputs) < 2:
        return inputs
    names = sorted(inputs)
    b = next(iter(inputs.values())).shape[0]
    drop = torch.rand(b, generator=generator) < p  # (B,)
    which = torch.randint(len(names), (b,), generator=generator)  # (B,)
    out = {}
    for i, m in enumerate(names):
        keep = ~(drop & (which == i))
        shape = (b,) + (1,) * (inputs[m].ndim - 1)
        out[m] = inputs[m] * keep.view(shape).to(inputs[m])
    return out


def _epoch_generator(seed: int, epoch: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 10_007 + rank)


# ---------------------------------------------------------------------------------------------
# Engine


@dataclass
class EpochStats:
    loss: float
    clips: int
    seconds: float
    skipped: int = 0


@dataclass
class Engine:
    """The pieces one training step needs, built once by :func:`train`."""

    cfg: RunConfig
    model: nn.Module  # unwrapped (checkpoints, evaluation)
    net: nn.Module  # what runs the training forward: DDP and / or compiled wrapper of model
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    info: dist.DistInfo
    multi_label: bool
    step: int = 0  # optimizer steps taken
    extra: dict[str, Any] = field(default_factory=dict)


def train_one_epoch(engine: Engine, loader: DataLoader, epoch: int) -> EpochStats:
    """One pass over ``loader``: forward, loss, backward, (accumulated) optimizer steps.

    A batch whose every clip failed to decode (collate gives None) is skipped. Under DDP every
    process must issue the same collectives, so the processes agree on each step (an all-reduce
    of a "batch ok" flag): when any process has no batch, all of them skip that step (the other
    processes' clips of that step count as skipped). An accumulation group without a single
    backward pass takes no optimizer / GradScaler step (the schedule still advances by one step,
    so the learning rate stays a function of the epoch); when the group's last batch was skipped
    after earlier ones ran under ``no_sync``, the accumulated gradients are averaged over the
    processes by hand before the step.

    Raises:
        NonFiniteLossError: the loss of a batch is NaN or infinite (on any process).
    """
    tc = engine.cfg.train
    device, info = engine.info.device, engine.info
    modalities = engine.model.cfg.modalities
    num_classes = engine.model.cfg.num_classes
    gen = _epoch_generator(tc.seed, epoch, info.rank)
    engine.net.train()
    accum = tc.grad_accum
    n_batches = len(loader)
    total_loss, total_clips = torch.zeros((), dtype=torch.float64), 0
    start = time.perf_counter()
    bar = tqdm(
        total=len(loader.sampler) * info.world_size,
        desc=f"epoch {epoch + 1}/{tc.epochs}",
        unit="clip",
        disable=not info.is_main,
        dynamic_ncols=True,
        leave=False,
    )
    engine.optimizer.zero_grad(set_to_none=True)
    group_backward, group_synced = False, False  # any backward in this group; was it all-reduced
    for i, batch in enumerate(loader):
        # The accumulation group this batch belongs to, and its size (the last may be short).
        group_start = (i // accum) * accum
        group_size = min(accum, n_batches - group_start)
        last_in_group = i == group_start + group_size - 1
        # None: every clip of the batch failed to decode (reported by the data set).
        if not _all_have_batch(batch is not None, info):
            if last_in_group:
                if group_backward and info.distributed and not group_synced:
                    _average_gradients(engine.model, info.world_size)
                _optimizer_step(engine, take=group_backward)
                group_backward, group_synced = False, False
            continue
        inputs = model_inputs(batch, modalities, device)
        targets = soft_targets(batch["label"], num_classes, engine.multi_label).to(device)
        if tc.mixup_alpha > 0:
            inputs, targets = _mixup(inputs, targets, tc.mixup_alpha, gen)
        if tc.label_smoothing > 0:
            # scenic's apply_label_smoothing: y (1 - eps) + eps / C, for softmax and sigmoid.
            targets = targets * (1 - tc.label_smoothing) + tc.label_smoothing / num_classes
        inputs = drop_modality(inputs, tc.modality_dropout, gen)
        sync = last_in_group or not info.distributed
        ctx = contextlib.nullcontext() if sync else engine.net.no_sync()
        with ctx:
            with autocast(device, tc.precision):
                per = engine.net(**inputs, per_modality=True)
            loss = training_loss(per, targets, engine.multi_label, tc.per_modality_loss)
            _check_finite(loss, epoch, engine.step)
            engine.scaler.scale(loss / group_size).backward()
        group_backward, group_synced = True, sync
        b = targets.shape[0]
        total_loss += loss.detach().double().cpu() * b
        total_clips += b
        if last_in_group:
            _optimizer_step(engine)
            group_backward, group_synced = False, False
        bar.update(b * info.world_size)
        if i % max(1, tc.log_every) == 0 or i == n_batches - 1:
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{_lr(engine):.2e}")
    bar.close()
    # Mean loss over every process's clips; clips that failed to decode were dropped by collate.
    skipped = len(loader.sampler) - total_clips
    sums = torch.tensor([total_loss.item(), total_clips, skipped], dtype=torch.float64)
    sums = dist.all_reduce_sum(sums)
    loss_mean = (sums[0] / sums[1]).item() if sums[1] > 0 else math.nan
    return EpochStats(loss_mean, int(sums[1]), time.perf_counter() - start, int(sums[2]))


def _mixup(inputs, targets, alpha, gen):
    from mbt.data.transforms import mixup

    video, audio, targets, _ = mixup(inputs.get("video"), inputs.get("audio"), targets, alpha, gen)
    out = {"video": video, "audio": audio}
    return {m: out[m] for m in inputs}, targets


def _lr(engine: Engine) -> float:
    return engine.optimizer.param_groups[0]["lr"]


def _check_finite(loss: torch.Tensor, epoch: int, step: int) -> None:
    bad = torch.tensor([0.0 if torch.isfinite(loss).item() else 1.0])
    if dist.all_reduce_sum(bad).item() > 0:
        raise NonFiniteLossError(
            f"non-finite training loss ({loss.item()}) at epoch {epoch + 1}, step {step}"
        )


def _all_have_batch(ok: bool, info: dist.DistInfo) -> bool:
    """Whether every process has a batch for this step (``ok`` itself in a single process)."""
    if not info.distributed:
        return ok
    flag = torch.tensor([1.0 if ok else 0.0])
    return dist.all_reduce_sum(flag).item() == info.world_size


def _average_gradients(model: nn.Module, world_size: int) -> None:
    """Average the gradients over the processes, as DDP's synchronising backward would."""
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce_sum(p.grad)
            p.grad /= world_size


def _optimizer_step(engine: Engine, take: bool = True) -> None:
    """The optimizer (and GradScaler) step of an accumulation group, then the schedule's step.

    ``take=False`` (the group had no backward pass: no gradients) only advances the schedule.
    """
    tc = engine.cfg.train
    if take:
        if tc.grad_clip > 0:
            engine.scaler.unscale_(engine.optimizer)
            torch.nn.utils.clip_grad_norm_(engine.model.parameters(), tc.grad_clip)
        engine.scaler.step(engine.optimizer)
        engine.scaler.update()
    engine.optimizer.zero_grad(set_to_none=True)
    with warnings.catch_warnings():  # a skipped first step: "lr_scheduler.step() before ..."
        warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
        engine.scheduler.step()
    engine.step += 1


@torch.no_grad()
def collect_logits(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    precision: str = "fp32",
    variants: dict[str, dict] | None = None,
    desc: str = "eval",
    show: bool = True,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Run ``model`` over ``loader`` and gather the logits of every clip on every process.

    Multi-view items (video (V, T, 3, H, W), audio (V, T_a, F)) are flattened into the batch
    and their logits averaged over the V views.

    Args:
        model: the unwrapped model.
        loader: evaluation loader (a :class:`~mbt.training.distributed.ShardSampler` under DDP).
        device: where to run.
        precision: ``fp32`` / ``bf16`` / ``fp16`` autocast.
        variants: ``{name: forward kwargs}``, e.g. ``{"video_only": {"audio": None}}`` to drop an
            input or ``{"no_fusion": {"fuse": False}}``; default ``{"fusion": {}}``.
        desc: progress-bar label.
        show: progress bar on this process.

    Returns:
        ``({variant: logits (N, C) float32}, targets (N,) or (N, C), clip indices (N,))``, in
        the data set's order.
    """
    variants = variants or {"fusion": {}}
    modalities = model.cfg.modalities
    # A variant that leaves the model no input is skipped (decided up front, so a process with
    # no clips at all, e.g. a val split smaller than the world size, agrees with the others).
    variants = {
        k: kw
        for k, kw in variants.items()
        if not all(
            {**dict.fromkeys(modalities, True), **kw}.get(m) is None for m in ("video", "audio")
        )
    }
    model.eval()
    out: dict[str, list[torch.Tensor]] = {k: [] for k in variants}
    targets, indices = [], []
    for batch in tqdm(loader, desc=desc, disable=not show, leave=False, dynamic_ncols=True):
        if batch is None:
            continue
        inputs = model_inputs(batch, modalities, device)
        b = next(iter(inputs.values())).shape[0]
        # (B, V, T, 3, H, W) / (B, V, T_a, F) at multi-view evaluation, one dim less otherwise.
        multi_view = inputs["video"].ndim == 6 if "video" in inputs else inputs["audio"].ndim == 4
        if multi_view:  # (B, V, ...) -> (B * V, ...)
            inputs = {m: x.flatten(0, 1) for m, x in inputs.items()}
        for name, kwargs in variants.items():
            args = {**inputs, **kwargs}
            with autocast(device, precision):
                logits = model(**args).float()  # (B * V, C)
            out[name].append(logits.view(b, -1, logits.shape[-1]).mean(1).cpu())  # (B, C)
        targets.append(batch["label"])
        indices.append(torch.as_tensor(batch["index"]))
    num_classes = model.cfg.num_classes
    local = (  # a process without clips sends (0, C) logits and no targets
        {k: torch.cat(v) if v else torch.empty(0, num_classes) for k, v in out.items()},
        torch.cat(targets) if targets else None,
        torch.cat(indices) if indices else torch.empty(0, dtype=torch.long),
    )
    parts = dist.all_gather_objects(local)
    idx = torch.cat([p[2] for p in parts])
    order = torch.argsort(idx)
    logits = {k: torch.cat([p[0][k] for p in parts])[order] for k in variants}
    labels = [p[1] for p in parts if p[1] is not None]
    if not labels:
        raise ValueError("no clip could be evaluated (every clip failed to decode)")
    return logits, torch.cat(labels)[order], idx[order]


def validate(engine: Engine, loader: DataLoader, epoch: int) -> dict[str, float]:
    """Validation loss (no smoothing, no mixup) and metric on the whole val split."""
    logits, labels, _ = collect_logits(
        engine.model, loader, engine.info.device, engine.cfg.train.precision,
        desc=f"val {epoch + 1}", show=engine.info.is_main,
    )  # fmt: skip
    scores = logits["fusion"]
    targets = soft_targets(labels, scores.shape[1], engine.multi_label)
    m = classification_metrics(scores, labels, engine.multi_label)
    return {
        "val_loss": loss_fn(scores, targets, engine.multi_label).item(),
        "val_acc": m["top1"],
        "val_map": m.get("map", math.nan),
    }


# ---------------------------------------------------------------------------------------------
# Run directory: log, plot


def metric_name(cfg: RunConfig, multi_label: bool) -> str:
    """``val_map`` or ``val_acc`` (``train.metric=auto`` picks mAP for multi-label data)."""
    metric = cfg.train.metric
    if metric == "auto":
        metric = "map" if multi_label else "accuracy"
    return "val_map" if metric == "map" else "val_acc"


def _log_fields(metric: str) -> list[str]:
    return [f.format(metric=metric) for f in LOG_FIELDS]


def _read_log(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def write_log(path: Path, rows: list[dict[str, Any]], metric: str) -> None:
    """Rewrite ``training_log.csv`` (kept short: one row per epoch)."""
    fields = _log_fields(metric)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def plot_history(rows: list[dict[str, Any]], metric: str, path: Path) -> None:
    """``plot.png``: train / val loss and the validation metric per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(r["epoch"]) for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [float(r["train_loss"]) for r in rows], "o-", label="train")
    ax1.plot(epochs, [float(r["val_loss"]) for r in rows], "o-", label="val")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax2.plot(epochs, [float(r[metric]) for r in rows], "o-", color="C2")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel(metric.replace("val_", "validation "))
    ax2.set_ylim(0, 1)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# The run


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(cfg: RunConfig) -> nn.Module:
    from mbt.model import MBT

    return MBT(cfg.model)


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
    out = Path(out)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    info = dist.init_distributed(cfg.train.device)
    try:
        return _train(cfg, data, out, resume, info)
    finally:
        dist.cleanup()


def _train(cfg: RunConfig, data, out: Path, resume: bool, info: dist.DistInfo) -> dict[str, Any]:
    tc = cfg.train
    last_dir, best_dir = out / "checkpoints" / "last", out / "checkpoints" / "best"
    if tc.precision == "fp16" and info.device.type != "cuda":
        raise ValueError("train.precision=fp16 needs a CUDA device; use bf16 on CPU")
    try:  # checkpoints/last, or .last.old when a save was interrupted between its renames
        resume_dir: Path | None = ckpt.resolve_checkpoint(last_dir)
    except FileNotFoundError:
        resume_dir = None
    if resume and resume_dir is None:
        raise FileNotFoundError(f"{out}: nothing to resume (no checkpoints/last)")
    if not resume and resume_dir is not None:
        raise ValueError(f"{out} already holds a run; use --resume {out} or another --out")

    # -- data ----------------------------------------------------------------------------
    cfg = resolve_data(cfg, data)
    index = scan_data(cfg)
    if info.is_main:
        print(index.report.format() if index else f"data: prepared cache {cfg.data.cache}")
    _seed_everything(tc.seed)
    train_ds = open_split(cfg, "train", index, train=True)
    val_ds = open_split(cfg, "val", index, train=False)
    classes = list(train_ds.classes)
    multi_label = bool(train_ds.multi_label)
    if len(train_ds) == 0:
        raise ValueError(f"{cfg.data.cache or cfg.data.root}: the training split is empty")
    if len(val_ds) == 0:
        raise ValueError(f"{cfg.data.cache or cfg.data.root}: the validation split is empty")
    if tc.metric == "map" and not multi_label:
        raise ValueError(
            "train.metric=map needs multi-label data; this data set is single-label "
            "(use train.metric=accuracy or auto)"
        )
    cfg = replace(
        cfg,
        model=replace(cfg.model, num_classes=len(classes)),
        data=replace(cfg.data, multi_label=multi_label),
    )
    if info.is_main:
        print(
            f"splits: train {len(train_ds)} clips, val {len(val_ds)} clips, {len(classes)} classes"
        )
    sampler = DistributedSampler(
        train_ds, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=tc.seed
    )
    val_sampler = dist.ShardSampler(len(val_ds), info.rank, info.world_size)
    workers = cfg.data.num_workers
    train_loader = make_loader(train_ds, tc.batch_size, sampler, workers, info.device)
    val_loader = make_loader(val_ds, tc.batch_size, val_sampler, workers, info.device)

    # -- model, optimiser ------------------------------------------------------------------
    model = build_model(cfg).to(info.device)
    if cfg.model.init and not resume:
        from mbt.model.pretrained import init_from_vit

        init_from_vit(model, cfg.model.init)
    net: nn.Module = model
    if info.distributed:
        ids = [info.device.index] if info.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if tc.compile:
        net = torch.compile(net)
    optimizer = build_optimizer(model, tc)
    steps_per_epoch = math.ceil(len(train_loader) / tc.grad_accum)
    scheduler = build_scheduler(optimizer, tc, steps_per_epoch)
    scaler = torch.amp.GradScaler(info.device.type, enabled=tc.precision == "fp16")
    engine = Engine(cfg, model, net, optimizer, scheduler, scaler, info, multi_label)
    metric = metric_name(cfg, multi_label)

    # -- state -----------------------------------------------------------------------------
    start_epoch, best, best_epoch, bad_epochs = 0, -math.inf, 0, 0
    best_loss = math.inf  # the val loss of the best epoch: the fallback when the metric is NaN
    log_path = out / "training_log.csv"
    rows: list[dict[str, Any]] = []
    if resume:
        ckpt.load_weights(resume_dir, model)
        state = ckpt.load_state(resume_dir)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, engine.step = state["epoch"], state["step"]
        best, best_epoch, bad_epochs = (
            state["best_metric"],
            state["best_epoch"],
            state["bad_epochs"],
        )
        best_loss = state.get("best_val_loss", math.inf)
        ckpt.set_rng_state(state["rng"])
        rows = [r for r in _read_log(log_path) if int(r["epoch"]) <= start_epoch]
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        (out / "classes.json").write_text(json.dumps(classes, indent=1))
        n_params = sum(p.numel() for p in model.parameters())
        eff = tc.batch_size * tc.grad_accum * info.world_size
        print(
            f"model: {n_params / 1e6:.2f}M parameters, modalities {list(cfg.model.modalities)}, "
            f"{len(classes)} classes | device {info.device} x{info.world_size} | "
            f"effective batch {eff} | {steps_per_epoch} steps/epoch | run dir {out}"
        )
    finished = resume and (
        start_epoch >= tc.epochs or (tc.early_stopping > 0 and bad_epochs >= tc.early_stopping)
    )
    if info.is_main and resume:
        if finished:
            why = (
                f"it stopped early after epoch {start_epoch} (no improvement for {bad_epochs} "
                f"epochs, train.early_stopping={tc.early_stopping})"
                if start_epoch < tc.epochs
                else f"all {tc.epochs} epochs are done (raise train.epochs to train on)"
            )
            print(f"{out}: the run has already finished: {why}; nothing to train")
        else:
            print(f"resuming after epoch {start_epoch} (step {engine.step})")

    # -- epochs ----------------------------------------------------------------------------
    run_start = time.perf_counter()
    stopped_early, val, clips_seen, train_seconds = False, {}, 0, 0.0
    stopped_early = bool(finished) and start_epoch < tc.epochs
    nan_warned = False
    epoch = start_epoch
    for epoch in range(start_epoch, tc.epochs if not finished else start_epoch):
        sampler.set_epoch(epoch)
        if hasattr(train_ds, "set_epoch"):
            train_ds.set_epoch(epoch)
        lr = _lr(engine)
        try:
            stats = train_one_epoch(engine, train_loader, epoch)
        except NonFiniteLossError as e:
            good = f"{last_dir} (epoch {start_epoch_of(last_dir)})" if last_dir.exists() else "none"
            raise NonFiniteLossError(
                f"{e}; stopped. Last good checkpoint: {good}. "
                "Lower train.lr or set train.grad_clip."
            ) from None
        val = validate(engine, val_loader, epoch)
        clips_seen += stats.clips
        train_seconds += stats.seconds
        row = {
            "epoch": epoch + 1,
            "train_loss": f"{stats.loss:.6f}",
            "val_loss": f"{val['val_loss']:.6f}",
            metric: f"{val[metric]:.6f}",
            "lr": f"{lr:.6g}",
            "time": f"{stats.seconds:.2f}",
            "clips_per_s": f"{stats.clips / max(stats.seconds, 1e-9):.1f}",
        }
        rows.append(row)
        by_loss = math.isnan(val[metric])  # cannot be computed from this data
        if by_loss and not nan_warned and info.is_main:
            tqdm.write(
                f"warning: {metric} is NaN (no validation clip is positive for any class); "
                "selecting the best epoch by val_loss instead"
            )
        nan_warned = nan_warned or by_loss
        if best_epoch == 0:
            improved = True
        elif by_loss:
            improved = val["val_loss"] < best_loss
        else:
            improved = val[metric] > best or math.isnan(best)
        if improved:
            best, best_epoch, bad_epochs = val[metric], epoch + 1, 0
            best_loss = val["val_loss"]
        else:
            bad_epochs += 1
        stop = tc.early_stopping > 0 and bad_epochs >= tc.early_stopping
        if info.is_main:
            state = {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch + 1,
                "step": engine.step,
                "rng": ckpt.rng_state(),
                "best_metric": best,
                "best_epoch": best_epoch,
                "best_val_loss": best_loss,
                "bad_epochs": bad_epochs,
                "metric": metric,
                "config": to_dict(cfg),
                "classes": classes,
            }
            ckpt.save_checkpoint(last_dir, model, state)
            if improved:
                ckpt.save_checkpoint(best_dir, model, state)
            write_log(log_path, rows, metric)
            plot_history(rows, metric, out / "plot.png")
            skipped = f", {stats.skipped} clips failed to decode (skipped)" if stats.skipped else ""
            tqdm.write(
                f"epoch {epoch + 1}/{tc.epochs}  train_loss {stats.loss:.4f}  "
                f"val_loss {val['val_loss']:.4f}  {metric} {val[metric]:.4f}"
                f"{' *' if improved else ''}  lr {lr:.2e}  {stats.seconds:.1f}s "
                f"({stats.clips / max(stats.seconds, 1e-9):.1f} clips/s){skipped}"
            )
        dist.barrier()
        if stop:
            stopped_early = True
            if info.is_main:
                what = "val_loss" if nan_warned else metric
                print(f"early stopping: no {what} improvement for {bad_epochs} epochs")
            break

    summary = {
        "run_dir": str(out),
        "metric": metric,
        "best_metric": best,
        "best_epoch": best_epoch,
        "epochs_run": len(rows),
        "stopped_early": stopped_early,
        "last_val": val,
        "time_s": time.perf_counter() - run_start,
        "clips_per_s": clips_seen / max(train_seconds, 1e-9),
        "num_classes": len(classes),
        "multi_label": multi_label,
        "already_finished": bool(finished),
    }
    if info.is_main:
        print(
            f"done: best {metric} {best:.4f} at epoch {best_epoch}, {len(rows)} epochs"
            f"{' (early stop)' if stopped_early else ''}, {summary['time_s']:.1f}s, "
            f"{summary['clips_per_s']:.1f} clips/s | best weights: {best_dir / ckpt.WEIGHTS}"
        )
    return summary


def start_epoch_of(directory: Path) -> int:
    """The epoch a checkpoint was written after (0 when unreadable)."""
    try:
        return int(ckpt.load_state(directory)["epoch"])
    except (FileNotFoundError, KeyError, RuntimeError, ValueError):
        return 0


def load_run_config(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """The resolved ``config.yaml`` of a run directory, with ``key=value`` overrides."""
    from mbt.config import load_config

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no config.yaml)")
    return load_config(path, overrides)


def config_from_state(state: dict[str, Any]) -> RunConfig:
    """The config stored inside a checkpoint's ``state.pt``."""
    return from_dict(RunConfig, state["config"])
