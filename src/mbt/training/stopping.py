"""Early stopping: has the run stopped improving? (``train.early_stopping`` and its keys)

A run stops when, for ``train.early_stopping`` epochs in a row, none of the watched validation
numbers improved. What is watched (``train.early_stopping_watch``):

    both     the selected metric (val_acc / val_map) and val_loss: an improvement of either
             resets the count (the default). On a small validation split one clip moves the
             accuracy by several points, so a lucky early spike alone would end a run whose
             loss is still falling; the loss moves with every clip's confidence.
    metric   the metric alone (the rule of earlier versions; Keras' and Lightning's
             ``EarlyStopping(monitor="val_acc")``)
    loss     val_loss alone (Keras' default ``monitor``)

When the metric cannot be computed (NaN, see :func:`~.loop.select_best`), val_loss alone is
watched.

An epoch improves a number when it beats the value of that number's last improvement by more
than its ``min_delta`` (``train.early_stopping_min_delta`` for the metric, an absolute fraction:
0.02 = 2 points of accuracy; ``train.early_stopping_loss_min_delta`` for val_loss, in nats), as
``min_delta`` in Lightning's ``EarlyStopping`` (a change of at most ``min_delta`` is none; Keras'
``min_delta`` and HF's ``early_stopping_threshold`` are the same idea): the reference moves only
on an improvement, so a slow creep counts once it adds up to more than ``min_delta``. The first
epoch sets the references.

Epochs that start inside the learning-rate warm-up (``train.warmup_epochs``) are not counted
(as Keras' ``start_from_epoch``, except that their numbers still set the references): no run
stops before epoch ``ceil(warmup_epochs) + early_stopping``.

The decision is a function of the run's history (the ``training_log.csv`` rows the RunState
keeps, values as logged: 6 decimals), so a resumed run decides exactly as the uninterrupted one would, and
a run resumed from a checkpoint written under the old rule is judged by this one.

Which epoch is *best* (``checkpoints/best``) is another question, answered by the metric alone
(:func:`~.loop.select_best`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mbt.config import TrainConfig


@dataclass(frozen=True)
class Watched:
    """One validation number early stopping watches."""

    column: str  # its training_log.csv column: val_acc, val_map or val_loss
    higher_is_better: bool
    min_delta: float  # an improvement is a change of more than this

    def improves(self, value: float, reference: float | None) -> bool:
        """``value`` beats ``reference`` (None: nothing to beat yet) by more than min_delta."""
        if math.isnan(value):
            return False
        if reference is None:
            return True
        gain = value - reference if self.higher_is_better else reference - value
        return gain > self.min_delta


def watched(tc: TrainConfig, metric: str, metric_nan: bool) -> tuple[Watched, ...]:
    """The numbers ``train.early_stopping_watch`` names (val_loss alone once the metric was NaN)."""
    loss = Watched("val_loss", False, tc.early_stopping_loss_min_delta)
    if tc.early_stopping_watch == "loss" or metric_nan:
        return (loss,)
    score = Watched(metric, True, tc.early_stopping_min_delta)
    return (score,) if tc.early_stopping_watch == "metric" else (score, loss)


@dataclass(frozen=True)
class Plateau:
    """How long the watched numbers have not improved, as of the last epoch of a history."""

    epochs: int  # counted epochs since the last improvement of any watched number
    last: dict[str, tuple[int, float]]  # column -> (epoch, value) of its last improvement


def plateau(
    history: Sequence[dict[str, Any]], watch: Sequence[Watched], warmup_epochs: float
) -> Plateau:
    """Replay ``history`` (log rows, first epoch first) through the rule of the module."""
    last: dict[str, tuple[int, float]] = {}
    epochs = 0
    for row in history:
        epoch, improved = int(row["epoch"]), False
        for w in watch:
            value, ref = float(row[w.column]), last.get(w.column)
            if w.improves(value, None if ref is None else ref[1]):
                last[w.column], improved = (epoch, value), True
        if improved:
            epochs = 0
        elif epoch - 1 >= warmup_epochs:  # the epoch started after the warm-up had ended
            epochs += 1
    return Plateau(epochs, last)


def describe(p: Plateau, watch: Sequence[Watched]) -> str:
    """Why the run stopped, e.g. ``neither val_acc (last improved at epoch 3, to 0.5278) nor
    val_loss (at epoch 12, to 1.0400) improved in the last 15 epochs``."""
    parts = []
    for i, w in enumerate(watch):
        epoch, value = p.last.get(w.column, (0, math.nan))
        delta = f"; min_delta {w.min_delta:g}" if w.min_delta else ""
        last = "last improved " if i == 0 else ""
        parts.append(f"{w.column} ({last}at epoch {epoch}, to {value:.4f}{delta})")
    span = "the last epoch" if p.epochs == 1 else f"the last {p.epochs} epochs"
    if len(parts) == 1:
        return f"{parts[0]} did not improve in {span}"
    return f"neither {' nor '.join(parts)} improved in {span}"
