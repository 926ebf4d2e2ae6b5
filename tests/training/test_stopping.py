"""Early stopping as a state machine: scripted validation numbers through select_best and
RunState, exactly as the training loop feeds them (no model, no data)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from mbt.config import TrainConfig
from mbt.training.engine import EpochStats
from mbt.training.loop import EpochResult, RunState, select_best


def run(
    tc: TrainConfig, accs: list[float], losses: list[float], metric: str = "val_acc"
) -> RunState:
    """The loop of ``train``: epochs while the state is not finished, each recorded by
    ``select_best``; the validation numbers of epoch ``e`` are ``accs[e - 1]``, ``losses[e - 1]``."""
    assert len(accs) == len(losses) == tc.epochs
    state = RunState()
    while not state.finished(tc, metric):
        e = state.epoch  # 0-based index of the next epoch
        val = {"val_loss": losses[e], metric: accs[e]}
        select_best(state, EpochResult(e + 1, 1e-3, EpochStats(1.0, 8, 1.0), val), metric, False)
    return state


def falling(start: float, stop: float, n: int) -> list[float]:
    return [start + (stop - start) * i / (n - 1) for i in range(n)]


# The issue's run (configs/demo.yaml on 216 clips, 36 of them validation: one clip = 2.8 points):
# val_acc spikes to 19/36 at epoch 3 and stays below it until epoch 18, while val_loss falls from
# 2.18 to 1.04 (lower in 15 of 17 epochs, a new low at the last one), then both go on improving.
DEMO = TrainConfig(epochs=40, early_stopping=15, warmup_epochs=2)
SPIKE_ACC = [8 / 36, 12 / 36, 19 / 36] + [17 / 36] * 15 + falling(20 / 36, 35 / 36, 22)
SPIKE_LOSS = falling(2.18, 1.04, 18) + falling(1.0, 0.3, 22)
SPIKE_LOSS[6] = SPIKE_LOSS[5] + 0.01  # two epochs whose loss rose
SPIKE_LOSS[11] = SPIKE_LOSS[10] + 0.01


def test_a_lucky_spike_does_not_stop_a_run_whose_loss_still_falls():
    state = run(DEMO, SPIKE_ACC, SPIKE_LOSS)
    assert not state.stopped_early(DEMO, "val_acc") and state.epoch == 40
    assert state.best_epoch == 40 and state.best_metric == max(SPIKE_ACC)


def test_watching_the_metric_alone_stops_it_as_the_issue_reports():
    # The rule before: "stopped at epoch 18 of 40 with best val_acc 0.5278 at epoch 3".
    tc = replace(DEMO, early_stopping_watch="metric")
    state = run(tc, SPIKE_ACC, SPIKE_LOSS)
    assert state.stopped_early(tc, "val_acc") and state.epoch == 18
    assert state.best_epoch == 3 and round(state.best_metric, 4) == 0.5278
    assert state.stop_reason(tc, "val_acc") == (
        "val_acc (last improved at epoch 3, to 0.5278) did not improve in the last 15 epochs "
        "(train.early_stopping=15)"
    )


def test_a_plateau_of_both_stops_after_patience_epochs():
    # Both improve until epoch 5, then wobble below their bests: stop at epoch 5 + patience.
    tc = TrainConfig(epochs=20, early_stopping=4)
    accs = [0.2, 0.3, 0.4, 0.5, 0.6] + [0.55, 0.6, 0.58] * 5
    losses = [2.0, 1.8, 1.6, 1.4, 1.2] + [1.25, 1.2, 1.3] * 5
    state = run(tc, accs, losses)
    assert state.stopped_early(tc, "val_acc") and state.epoch == 9
    assert state.best_epoch == 5
    assert state.stop_reason(tc, "val_acc") == (
        "neither val_acc (last improved at epoch 5, to 0.6000) nor val_loss (at epoch 5, to "
        "1.2000) improved in the last 4 epochs (train.early_stopping=4)"
    )
    # One epoch less and it would not have stopped: the count is exact.
    short = RunState(history=state.history[:8], epoch=8)
    assert not short.finished(tc, "val_acc") and short.plateau(tc, "val_acc").epochs == 3


def test_either_number_alone_keeps_the_run_going():
    tc = TrainConfig(epochs=12, early_stopping=3)
    flat_acc, flat_loss = [0.5] * 12, [1.0] * 12
    rising, falling_loss = falling(0.1, 0.9, 12), falling(2.0, 0.5, 12)
    assert run(tc, rising, flat_loss).epoch == 12  # the metric improves
    assert run(tc, flat_acc, falling_loss).epoch == 12  # the loss improves
    assert run(tc, flat_acc, flat_loss).epoch == 4  # neither: epoch 1 + 3
    # checkpoints/best is chosen by the metric alone: a falling loss does not move it
    assert run(tc, flat_acc, falling_loss).best_epoch == 1
    # watch=loss: a rising accuracy does not help; watch=metric: a falling loss does not
    assert run(replace(tc, early_stopping_watch="loss"), rising, flat_loss).epoch == 4
    assert run(replace(tc, early_stopping_watch="metric"), flat_acc, falling_loss).epoch == 4


def test_min_delta_counts_gains_from_the_last_improvement_and_is_strict():
    # Accuracy creeps up by 0.125 an epoch (exact binary fractions: no rounding at the edge).
    # With min_delta 0.25, 0.625 and 0.75 do not count against 0.5 (0.25 is not *more* than
    # 0.25), 0.875 does (0.375 from the last improvement, though only 0.125 above 0.75).
    tc = TrainConfig(epochs=5, early_stopping=3, early_stopping_watch="metric")
    accs, losses = [0.5, 0.625, 0.75, 0.875, 0.875], [1.0] * 5
    delta = replace(tc, early_stopping_min_delta=0.25)
    state = run(delta, accs, losses)
    assert state.epoch == 5 and not state.stopped_early(delta, "val_acc")
    assert state.plateau(delta, "val_acc").last == {"val_acc": (4, 0.875)}
    # Patience 2 does not wait for the creep to add up: it stops after epoch 3 ...
    assert run(replace(delta, early_stopping=2), accs, losses).epoch == 3
    # ... where without min_delta every step is an improvement.
    assert run(replace(tc, early_stopping=2), accs, losses).epoch == 5
    # min_delta does not move checkpoints/best: the best epoch is the first with 0.875
    assert state.best_epoch == 4
    assert state.stop_reason(replace(delta, early_stopping=1), "val_acc").startswith(
        "val_acc (last improved at epoch 4, to 0.8750; min_delta 0.25) did not improve in the "
        "last epoch"
    )


def test_loss_min_delta_treats_a_slow_drift_as_a_plateau():
    tc = TrainConfig(epochs=30, early_stopping=5, early_stopping_watch="loss")
    accs, losses = [0.5] * 30, falling(1.0, 0.971, 30)  # 0.001 lower every epoch
    assert run(tc, accs, losses).epoch == 30  # min_delta 0: every drop is an improvement
    tc = replace(tc, early_stopping_loss_min_delta=0.01)
    state = run(tc, accs, losses)
    assert state.stopped_early(tc, "val_acc") and state.epoch == 6  # 0.005 in 5 epochs
    assert state.stop_reason(tc, "val_acc") == (
        "val_loss (last improved at epoch 1, to 1.0000; min_delta 0.01) did not improve in the "
        "last 5 epochs (train.early_stopping=5)"
    )


@pytest.mark.parametrize("warmup, stop", [(0, 3), (1, 3), (2, 4), (2.5, 5), (3, 5)])
def test_no_stop_during_the_warm_up(warmup, stop):
    # Nothing improves after epoch 1; patience 2. Epochs that start inside the warm-up are not
    # counted (epoch e starts at e - 1 epochs), so the run stops at max(1, ceil(warmup)) + 2.
    tc = TrainConfig(epochs=10, early_stopping=2, warmup_epochs=warmup)
    state = run(tc, [0.5] * 10, [1.0] * 10)
    assert state.epoch == stop and state.stopped_early(tc, "val_acc")
    assert stop > warmup


def test_an_improvement_in_the_warm_up_is_the_reference_after_it():
    # A lucky epoch 2 inside the warm-up: later epochs must beat it (or the loss) to count.
    tc = TrainConfig(epochs=10, early_stopping=3, warmup_epochs=2, early_stopping_watch="metric")
    state = run(tc, [0.3, 0.9] + [0.5] * 8, [1.0] * 10)
    assert state.epoch == 5 and state.best_epoch == 2


def test_a_nan_metric_watches_and_selects_by_the_loss():
    # mAP of a split with no positive clip: NaN every epoch. Both rules fall back to val_loss.
    for watch in ("both", "metric"):
        tc = TrainConfig(epochs=10, early_stopping=2, early_stopping_watch=watch)
        losses = [1.0, 0.8, 0.6, 0.7, 0.65, 0.5, 0.5, 0.5, 0.5, 0.5]
        state = run(tc, [math.nan] * 10, losses, metric="val_map")
        assert state.metric_nan and state.epoch == 5 and state.best_epoch == 3
        assert state.stop_reason(tc, "val_map") == (
            "val_loss (last improved at epoch 3, to 0.6000) did not improve in the last 2 epochs "
            "(train.early_stopping=2)"
        )


def test_off_never_stops():
    tc = TrainConfig(epochs=8, early_stopping=0)
    state = run(tc, [0.5] * 8, [1.0] * 8)
    assert state.epoch == 8 and not state.stopped_early(tc, "val_acc")


def test_a_state_saved_under_the_old_rule_is_judged_by_the_new_one(tmp_path):
    # state.pt before the change: bad_epochs counted on val_acc alone, here 15 = out of patience
    # at epoch 18 (the issue's run). Restored, the history decides: the loss fell, so it trains on.
    done = run(replace(DEMO, early_stopping_watch="metric"), SPIKE_ACC, SPIKE_LOSS)
    old = {
        "epoch": 18, "best_metric": done.best_metric, "best_epoch": 3,
        "best_val_loss": done.best_val_loss, "bad_epochs": 15, "metric_nan": False,
        "history": done.history, "metric": "val_acc", "step": 162,
    }  # fmt: skip
    state = RunState.from_saved(old, tmp_path / "training_log.csv")
    assert state.epoch == 18 and state.best_epoch == 3
    assert not state.finished(DEMO, "val_acc")
    assert state.finished(replace(DEMO, early_stopping_watch="metric"), "val_acc")
