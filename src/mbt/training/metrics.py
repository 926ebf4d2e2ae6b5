"""Classification metrics on collected scores: top-k accuracy, per-class accuracy, confusion
matrix, and average precision / mAP for multi-label targets (no sklearn needed).

Shapes: N clips, C classes. ``scores`` (N, C) are logits or probabilities (only their order
matters); single-label ``labels`` (N,) int; multi-label ``targets`` (N, C) in {0, 1}.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from mbt.files import atomic_path


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    """Fraction of clips whose label is among the ``k`` highest scores (k is capped at C)."""
    k = min(k, scores.shape[1])
    top = scores.topk(k, dim=1).indices  # (N, k)
    return (top == labels[:, None]).any(dim=1).float().mean().item()


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) counts; row = true class, column = predicted class."""
    idx = labels.long() * num_classes + preds.long()
    return torch.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)


def per_class_accuracy(confusion: torch.Tensor) -> list[float]:
    """Recall of each class from a confusion matrix; NaN for a class with no clips."""
    support = confusion.sum(dim=1)
    return [
        (confusion[c, c] / support[c]).item() if support[c] > 0 else math.nan
        for c in range(confusion.shape[0])
    ]


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """Per-class average precision, NaN for a class without positives.

    AP = sum_n (R_n - R_{n-1}) P_n over the distinct score thresholds in decreasing order
    (precision P_n and recall R_n of "score >= threshold n"). Tied scores form one threshold,
    so the result matches ``sklearn.metrics.average_precision_score``.

    Args:
        scores: (N, C) scores, higher = more confident.
        targets: (N, C) binary relevance.
    """
    scores = scores.double()
    targets = (targets > 0.5).double()
    out = []
    for c in range(scores.shape[1]):
        s, t = scores[:, c], targets[:, c]
        n_pos = t.sum()
        if n_pos == 0:
            out.append(math.nan)
            continue
        order = torch.argsort(s, descending=True, stable=True)
        s, t = s[order], t[order]
        tp = torch.cumsum(t, 0)
        # Keep the last position of each group of tied scores: one threshold per distinct score.
        last = torch.ones_like(s, dtype=torch.bool)
        last[:-1] = s[1:] != s[:-1]
        tp = tp[last]
        rank = torch.nonzero(last).squeeze(1).double() + 1  # clips scored >= threshold
        precision = tp / rank
        recall = tp / n_pos
        d_recall = torch.diff(recall, prepend=recall.new_zeros(1))
        out.append((d_recall * precision).sum().item())
    return out


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean of :func:`average_precision` over the classes that have positives."""
    ap = [a for a in average_precision(scores, targets) if not math.isnan(a)]
    return float(np.mean(ap)) if ap else math.nan


def classification_metrics(
    scores: torch.Tensor, targets: torch.Tensor, multi_label: bool
) -> dict[str, float | list[float]]:
    """The evaluation summary: ``top1``, ``top5`` and ``per_class_acc`` for single-label
    targets; ``map`` and ``per_class_ap`` for multi-label ones (plus ``top1`` = the top class is
    a positive)."""
    if multi_label:
        ap = average_precision(scores, targets)
        top = scores.argmax(dim=1)
        hit = targets.gather(1, top[:, None]).squeeze(1) > 0.5
        return {
            "map": mean_average_precision(scores, targets),
            "top1": hit.float().mean().item(),
            "per_class_ap": ap,
        }
    cm = confusion_matrix(scores.argmax(dim=1), targets, scores.shape[1])
    return {
        "top1": topk_accuracy(scores, targets, 1),
        "top5": topk_accuracy(scores, targets, 5),
        "per_class_acc": per_class_accuracy(cm),
    }


def plot_confusion(confusion: torch.Tensor, classes: list[str], path: str | Path) -> None:
    """Row-normalised confusion matrix as an image (class names shown up to 40 classes)."""
    # matplotlib takes ~1 s to import: only when a plot is drawn. The object-oriented Figure
    # needs no pyplot backend, so a notebook's backend is left alone.
    from matplotlib.figure import Figure

    cm = confusion.double()
    cm = (cm / cm.sum(dim=1, keepdim=True).clamp(min=1)).numpy()
    c = len(classes)
    size = min(4 + 0.3 * c, 20)
    fig = Figure(figsize=(size, size))
    ax = fig.subplots()
    im = ax.imshow(cm, vmin=0, vmax=1, cmap="Blues")
    if c <= 40:
        ax.set_xticks(range(c), classes, rotation=90, fontsize=8)
        ax.set_yticks(range(c), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    with atomic_path(path) as tmp:  # a kill leaves the old image or the new one
        fig.savefig(tmp, format="png", dpi=100)
