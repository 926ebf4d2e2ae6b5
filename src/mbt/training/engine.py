"""One training step, one training epoch, one evaluation pass (MAE's ``engine_finetune``).

:func:`train_one_epoch` and :func:`validate` are what :func:`mbt.training.loop.train` calls once
per epoch; :func:`collect_logits` is the evaluation pass that ``mbt evaluate`` shares.

One training step::

    batch -> model_inputs (to the device, normalise uint8 video) -> soft targets -> [mixup, label smoothing, modality dropout]
      -> net(video, audio, per_modality=True) under autocast -> training_loss -> finite?
      -> scaled backward (no_sync inside an accumulation group) -> at the group's end:
         [average grads by hand] -> clip -> optimizer + GradScaler step -> schedule step

Randomness: mixup and modality dropout draw from a generator seeded with (seed, epoch, rank)
(:func:`epoch_generator`); dropout and drop-path from the global RNG, which the loop saves in
every checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from mbt.config import RunConfig
from mbt.data.transforms import mixup, normalize_video
from mbt.errors import TrainingError
from mbt.progress import progress_bar
from mbt.runtime import autocast
from mbt.training import distributed as dist
from mbt.training.metrics import classification_metrics

if TYPE_CHECKING:
    from mbt.data.loaders import Loader


class NonFiniteLossError(TrainingError):
    """The training loss became NaN or infinite; the run stops, checkpoints stay intact."""


# ---------------------------------------------------------------------------------------------
# Inputs, targets, loss


def model_inputs(
    batch: dict, modalities: Iterable[str], device: torch.device, normalization: str
) -> dict[str, torch.Tensor]:
    """``{"video": ..., "audio": ...}`` for the modalities the model was built with, on
    ``device``; uint8 video (the item contract) is normalised there (``data.normalization``)."""
    inputs = {m: batch[m].to(device, non_blocking=True) for m in modalities}
    if "video" in inputs:  # copied as uint8: a quarter of the bytes of float32
        inputs["video"] = normalize_video(inputs["video"], normalization)
    return inputs


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


def epoch_generator(seed: int, epoch: int, rank: int) -> torch.Generator:
    """The generator of mixup and modality dropout for one epoch on one process."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 10_007 + rank)


# ---------------------------------------------------------------------------------------------
# Training


@dataclass
class EpochStats:
    loss: float  # mean training loss over every process's clips
    clips: int  # clips trained on, all processes
    seconds: float
    skipped: int = 0  # clips that failed to decode, all processes
    accuracy: float = math.nan  # top-1 of the training forward passes (see train_step)


@dataclass
class Engine:
    """The pieces one training step needs, built once by :func:`mbt.training.loop.train`."""

    cfg: RunConfig
    model: nn.Module  # unwrapped (checkpoints, evaluation)
    net: nn.Module  # what runs the training forward: DDP and / or compiled wrapper of model
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    info: dist.DistInfo
    multi_label: bool
    precision: str = "fp32"  # train.precision resolved for this machine (never "auto")
    step: int = 0  # optimizer steps taken


@dataclass
class _Group:
    """The accumulation group being filled: did a batch of it run backward, and was the last
    of those backward passes all-reduced by DDP (not under ``no_sync``)."""

    backward: bool = False
    synced: bool = False


def train_one_epoch(engine: Engine, loader: Loader, epoch: int) -> EpochStats:
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
    tc, info = engine.cfg.train, engine.info
    gen = epoch_generator(tc.seed, epoch, info.rank)
    engine.net.train()
    loss_sum, clips = torch.zeros((), dtype=torch.float64), 0
    hits = torch.zeros((), dtype=torch.float64)
    start = time.perf_counter()
    bar = progress_bar(
        total=loader.clips_per_epoch * info.world_size, desc=f"epoch {epoch + 1}/{tc.epochs}",
        unit="clip", disable=not info.is_main, leave=False,
    )  # fmt: skip
    engine.optimizer.zero_grad(set_to_none=True)
    group = _Group()
    for i, batch in enumerate(loader):
        group_size, last_in_group = _accumulation_group(i, len(loader), tc.grad_accum)
        loss, b = None, 0
        if _all_have_batch(batch is not None, info):  # None: every clip failed to decode
            sync = last_in_group or not info.distributed
            loss, b, correct = train_step(engine, batch, gen, epoch, group_size, sync)
            group = _Group(backward=True, synced=sync)
            loss_sum += loss.detach().double().cpu() * b
            hits += correct.double().cpu()
            clips += b
        if last_in_group:
            _end_group(engine, group)
            group = _Group()
        if loss is not None:
            bar.update(b * info.world_size)
            if i % max(1, tc.log_every) == 0 or i == len(loader) - 1:
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{current_lr(engine):.2e}")
    bar.close()
    return _epoch_stats(loss_sum, hits, clips, loader.clips_per_epoch, start)


def train_step(
    engine: Engine,
    batch: dict,
    generator: torch.Generator,
    epoch: int,
    group_size: int,
    sync: bool,
) -> tuple[torch.Tensor, int, torch.Tensor]:
    """Forward and backward of one batch (the optimizer steps at the end of its group).

    Args:
        group_size: batches in this accumulation group (the loss is divided by it).
        sync: let DDP all-reduce the gradients in this backward (the group's last batch).

    Returns:
        ``(loss, clips in the batch, clips whose top class is their label)``. The hits are
        those of the training forward pass itself (dropout, augmentation and modality dropout
        on; with mixup, against each clip's own label), the seed's ``train_acc``.
    """
    tc = engine.cfg.train
    inputs, targets = _augmented(engine, batch, generator)
    with contextlib.nullcontext() if sync else engine.net.no_sync():
        with autocast(engine.info.device, engine.precision):
            per = engine.net(**inputs, per_modality=True)
        loss = training_loss(per, targets, engine.multi_label, tc.per_modality_loss)
        _check_finite(loss, epoch, engine.step)
        engine.scaler.scale(loss / group_size).backward()
    logits = torch.stack([lg.detach().float() for lg in per.values()]).mean(0)  # (B, C)
    return loss, targets.shape[0], top1_hits(logits, batch["label"], engine.multi_label)


def top1_hits(logits: torch.Tensor, labels: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """How many clips' highest-scoring class is their label (multi-label: one of them).

    Args:
        logits: (B, C).
        labels: (B,) class ids, or (B, C) multi-hot.
    """
    top = logits.argmax(-1)  # (B,)
    labels = labels.to(top.device)
    if multi_label:
        return (labels.gather(1, top[:, None]).squeeze(1) > 0.5).sum()
    return (top == labels).sum()


def _augmented(
    engine: Engine, batch: dict, generator: torch.Generator
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Inputs and (B, C) soft targets after mixup, label smoothing and modality dropout."""
    tc, cfg = engine.cfg.train, engine.model.cfg
    inputs = model_inputs(batch, cfg.modalities, engine.info.device, engine.cfg.data.normalization)
    targets = soft_targets(batch["label"], cfg.num_classes, engine.multi_label)
    targets = targets.to(engine.info.device)
    if tc.mixup_alpha > 0:
        video, audio, targets, _ = mixup(
            inputs.get("video"), inputs.get("audio"), targets, tc.mixup_alpha, generator
        )
        mixed = {"video": video, "audio": audio}
        inputs = {m: mixed[m] for m in inputs}
    if tc.label_smoothing > 0:
        # scenic's apply_label_smoothing: y (1 - eps) + eps / C, for softmax and sigmoid.
        targets = targets * (1 - tc.label_smoothing) + tc.label_smoothing / cfg.num_classes
    return drop_modality(inputs, tc.modality_dropout, generator), targets


def _accumulation_group(i: int, n_batches: int, accum: int) -> tuple[int, bool]:
    """The size of batch ``i``'s accumulation group (the last may be short), and whether ``i``
    is its last batch."""
    group_start = (i // accum) * accum
    size = min(accum, n_batches - group_start)
    return size, i == group_start + size - 1


def _end_group(engine: Engine, group: _Group) -> None:
    """The optimizer step that closes an accumulation group (only the schedule's step when no
    batch of the group ran backward)."""
    if group.backward and engine.info.distributed and not group.synced:
        _average_gradients(engine.model, engine.info.world_size)
    _optimizer_step(engine, take=group.backward)


def _epoch_stats(
    loss_sum: torch.Tensor, hits: torch.Tensor, clips: int, sampled: int, start: float
) -> EpochStats:
    """Mean loss and accuracy over every process's clips; clips that failed to decode were
    dropped by collate and count as skipped."""
    sums = torch.tensor([loss_sum.item(), clips, sampled - clips, hits.item()], dtype=torch.float64)
    sums = dist.all_reduce_sum(sums)
    loss_mean = (sums[0] / sums[1]).item() if sums[1] > 0 else math.nan
    accuracy = (sums[3] / sums[1]).item() if sums[1] > 0 else math.nan
    return EpochStats(loss_mean, int(sums[1]), time.perf_counter() - start, int(sums[2]), accuracy)


def current_lr(engine: Engine) -> float:
    """The learning rate of the next optimizer step."""
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


# ---------------------------------------------------------------------------------------------
# Evaluation

Logits = dict[str, torch.Tensor]  # variant name -> (N, C)


@torch.no_grad()
def collect_logits(
    model: nn.Module,
    loader: Iterable,
    device: torch.device,
    precision: str = "fp32",
    variants: dict[str, dict] | None = None,
    desc: str = "eval",
    show: bool = True,
    *,
    normalization: str,
) -> tuple[Logits, torch.Tensor, torch.Tensor]:
    """Run ``model`` over ``loader`` and gather the logits of every clip on every process.

    Multi-view items (video (V, T, 3, H, W), audio (V, T_a, F)) are flattened into the batch
    and their logits averaged over the V views.

    Args:
        model: the unwrapped model.
        loader: evaluation batches (:func:`mbt.data.loaders.build_loader`, ``train=False``).
        device: where to run.
        precision: ``fp32`` / ``bf16`` / ``fp16`` autocast.
        variants: ``{name: forward kwargs}``, e.g. ``{"video_only": {"audio": None}}`` to drop an
            input or ``{"no_fusion": {"fuse": False}}``; default ``{"fusion": {}}``.
        desc: progress-bar label.
        show: progress bar on this process (drawn only on a terminal).
        normalization: the run's ``data.normalization`` (items carry uint8 video).

    Returns:
        ``({variant: logits (N, C) float32}, targets (N,) or (N, C), clip indices (N,))``, in
        the data set's order.
    """
    variants = _runnable(variants or {"fusion": {}}, model.cfg.modalities)
    model.eval()
    out: dict[str, list[torch.Tensor]] = {k: [] for k in variants}
    targets, indices = [], []
    for batch in progress_bar(iterable=loader, desc=desc, disable=not show, leave=False):
        if batch is None:  # every clip of the batch failed to decode
            continue
        inputs = model_inputs(batch, model.cfg.modalities, device, normalization)
        logits = _view_averaged_logits(model, inputs, variants, device, precision)
        for name, lg in logits.items():
            out[name].append(lg.cpu())
        targets.append(batch["label"])
        indices.append(torch.as_tensor(batch["index"]))
    num_classes = model.cfg.num_classes
    local = (  # a process without clips sends (0, C) logits and no targets
        {k: torch.cat(v) if v else torch.empty(0, num_classes) for k, v in out.items()},
        torch.cat(targets) if targets else None,
        torch.cat(indices) if indices else torch.empty(0, dtype=torch.long),
    )
    return _gather_in_order(local, list(variants))


def _runnable(variants: dict[str, dict], modalities: Iterable[str]) -> dict[str, dict]:
    """The variants that leave the model at least one input. Decided up front, so a process
    with no clips at all (a val split smaller than the world size) agrees with the others."""
    present = dict.fromkeys(modalities, True)
    return {
        k: kw
        for k, kw in variants.items()
        if not all({**present, **kw}.get(m) is None for m in ("video", "audio"))
    }


def _view_averaged_logits(
    model: nn.Module,
    inputs: dict[str, torch.Tensor],
    variants: dict[str, dict],
    device: torch.device,
    precision: str,
) -> Logits:
    """``{variant: (B, C)}`` logits of one batch, averaged over its views."""
    b = next(iter(inputs.values())).shape[0]
    # (B, V, T, 3, H, W) / (B, V, T_a, F) at multi-view evaluation, one dim less otherwise.
    multi_view = inputs["video"].ndim == 6 if "video" in inputs else inputs["audio"].ndim == 4
    if multi_view:
        inputs = {m: x.flatten(0, 1) for m, x in inputs.items()}  # (B * V, ...)
    out = {}
    for name, kwargs in variants.items():
        with autocast(device, precision):
            logits = model(**{**inputs, **kwargs}).float()  # (B * V, C)
        out[name] = logits.view(b, -1, logits.shape[-1]).mean(1)  # (B, C)
    return out


def _gather_in_order(
    local: tuple[Logits, torch.Tensor | None, torch.Tensor], variants: list[str]
) -> tuple[Logits, torch.Tensor, torch.Tensor]:
    """Every process's ``(logits, targets, indices)`` concatenated in the data set's order."""
    parts = dist.all_gather_objects(local)
    idx = torch.cat([p[2] for p in parts])
    order = torch.argsort(idx)
    logits = {k: torch.cat([p[0][k] for p in parts])[order] for k in variants}
    labels = [p[1] for p in parts if p[1] is not None]
    if not labels:
        raise ValueError("no clip could be evaluated (every clip failed to decode)")
    return logits, torch.cat(labels)[order], idx[order]


def validate(engine: Engine, loader: Loader, epoch: int) -> dict[str, float]:
    """Validation loss (no smoothing, no mixup) and metric on the whole val split."""
    logits, labels, _ = collect_logits(
        engine.model, loader, engine.info.device, engine.precision,
        desc=f"val {epoch + 1}", show=engine.info.is_main,
        normalization=engine.cfg.data.normalization,
    )  # fmt: skip
    scores = logits["fusion"]
    targets = soft_targets(labels, scores.shape[1], engine.multi_label)
    m = classification_metrics(scores, labels, engine.multi_label)
    return {
        "val_loss": loss_fn(scores, targets, engine.multi_label).item(),
        "val_acc": m["top1"],
        "val_map": m.get("map", math.nan),
    }
