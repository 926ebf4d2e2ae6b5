"""Optimiser, parameter groups and the per-step learning-rate schedule.

Weight decay goes to weight matrices and kernels only: never to norms, biases (every 1-D
parameter), nor to the tokens and positional embeddings the model names in ``no_weight_decay()``.
The schedule is a function of the optimiser step (not the epoch): linear warm-up from 0, then
constant or cosine decay to 0 at the last step, as in the official MBT configs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mbt.config import TrainConfig


def _no_decay_names(model: nn.Module) -> set[str]:
    fn = getattr(model, "no_weight_decay", None)
    return set(fn()) if callable(fn) else set()


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split trainable parameters into a decayed group and a non-decayed group.

    Args:
        model: the network; its optional ``no_weight_decay()`` names parameters (or module
            prefixes) that must not be decayed.
        weight_decay: decay of the first group.

    Returns:
        ``[{"params": decay, "weight_decay": wd, "names": [...]},
        {"params": no_decay, "weight_decay": 0.0, "names": [...]}]``; empty groups are dropped.
    """
    skip = _no_decay_names(model)
    decay, no_decay = ([], []), ([], [])
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        excluded = p.ndim <= 1 or name in skip or any(name.startswith(s + ".") for s in skip)
        group = no_decay if excluded else decay
        group[0].append(p)
        group[1].append(name)
    groups = [
        {"params": decay[0], "weight_decay": weight_decay, "names": decay[1]},
        {"params": no_decay[0], "weight_decay": 0.0, "names": no_decay[1]},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam / AdamW / SGD-momentum over :func:`param_groups` at ``cfg.lr``."""
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    # Adam's weight_decay is L2 added to the gradient (the seed's recipe uses 0).
    return torch.optim.Adam(groups, lr=cfg.lr)


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the base lr at optimiser step ``step`` (0-based).

    Warm-up is linear, reaching 1 at step ``warmup_steps``; after it the factor is 1 (constant)
    or ``0.5 * (1 + cos(pi * progress))`` with progress going 0 -> 1 over the remaining steps.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step scheduler: call ``scheduler.step()`` after every ``optimizer.step()``.

    Args:
        optimizer: the optimiser whose groups' lr is scaled.
        cfg: ``schedule``, ``warmup_epochs`` (fractional epochs allowed) and ``epochs``.
        steps_per_epoch: optimiser steps per epoch (after gradient accumulation).
    """
    total = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, warmup, cfg.schedule)
    )
