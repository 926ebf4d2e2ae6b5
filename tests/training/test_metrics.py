"""Metrics against hand-computed values."""

import math

import pytest
import torch

from mbt.training.metrics import (
    average_precision,
    classification_metrics,
    confusion_matrix,
    mean_average_precision,
    per_class_accuracy,
    plot_confusion,
    topk_accuracy,
)


def test_topk_accuracy():
    scores = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.6, 0.1, 0.3]])
    labels = torch.tensor([1, 1, 0, 2])
    assert topk_accuracy(scores, labels, 1) == pytest.approx(1 / 4)  # only clip 0
    assert topk_accuracy(scores, labels, 2) == pytest.approx(3 / 4)  # + clips 1 and 3
    assert topk_accuracy(scores, labels, 5) == 1.0  # k capped at C


def test_confusion_and_per_class_accuracy():
    preds = torch.tensor([0, 1, 1, 2, 0])
    labels = torch.tensor([0, 1, 0, 2, 0])
    cm = confusion_matrix(preds, labels, 4)
    assert cm.tolist() == [[2, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    acc = per_class_accuracy(cm)
    assert acc[:3] == pytest.approx([2 / 3, 1.0, 1.0])
    assert math.isnan(acc[3])  # no clips of class 3


def test_average_precision_known_example():
    # sklearn's documented example: average_precision_score -> 0.8333...
    scores = torch.tensor([[0.1], [0.4], [0.35], [0.8]])
    targets = torch.tensor([[0], [0], [1], [1]])
    assert average_precision(scores, targets)[0] == pytest.approx(5 / 6)


def test_average_precision_by_hand_and_ties():
    # Ranked: + - + - + -> precisions at positives 1, 2/3, 3/5 -> AP = (1 + 2/3 + 3/5) / 3.
    s = torch.tensor([[5.0], [4.0], [3.0], [2.0], [1.0]])
    t = torch.tensor([[1], [0], [1], [0], [1]])
    assert average_precision(s, t)[0] == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    # A tie between a positive and a negative is one threshold: precision 1/2 at recall 1.
    s = torch.tensor([[1.0], [1.0]])
    t = torch.tensor([[1], [0]])
    assert average_precision(s, t)[0] == pytest.approx(0.5)


def test_map_skips_classes_without_positives():
    scores = torch.tensor([[0.9, 0.1, 0.3], [0.2, 0.8, 0.4], [0.6, 0.3, 0.5]])
    targets = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 1, 0]])
    ap = average_precision(scores, targets)
    # class 0: positive ranked 1st -> 1. class 1: scores .8(+) .3(+) .1(-) -> 1.
    assert ap[0] == pytest.approx(1.0) and ap[1] == pytest.approx(1.0)
    assert math.isnan(ap[2])
    assert mean_average_precision(scores, targets) == pytest.approx(1.0)
    # class 0 made worse: positive ranked 2nd of 3 -> AP 1/2; mAP = (1/2 + 1) / 2.
    scores[2, 0] = 0.95
    assert mean_average_precision(scores, targets) == pytest.approx(0.75)


def test_classification_metrics_and_plot(tmp_path):
    scores = torch.eye(3)[[0, 1, 2, 0]]
    labels = torch.tensor([0, 1, 2, 1])
    m = classification_metrics(scores, labels, multi_label=False)
    assert m["top1"] == pytest.approx(0.75) and m["top5"] == 1.0
    assert m["per_class_acc"] == pytest.approx([1.0, 0.5, 1.0])
    m = classification_metrics(scores, torch.eye(3)[[0, 1, 2, 1]], multi_label=True)
    assert m["top1"] == pytest.approx(0.75) and "map" in m
    plot_confusion(
        confusion_matrix(scores.argmax(1), labels, 3), ["a", "b", "c"], tmp_path / "c.png"
    )
    assert (tmp_path / "c.png").stat().st_size > 0
