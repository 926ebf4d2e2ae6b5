"""Atomic checkpoints and RNG state round trips."""

import random

import numpy as np
import torch
from torch import nn

from mbt.training import checkpoint as ckpt


def test_save_load_round_trip_and_replace(tmp_path):
    model = nn.Linear(3, 2)
    d = tmp_path / "checkpoints" / "last"
    ckpt.save_checkpoint(d, model, {"epoch": 1, "rng": ckpt.rng_state()})
    with torch.no_grad():
        model.weight.add_(1.0)
    ckpt.save_checkpoint(d, model, {"epoch": 2})  # replaces the whole folder
    assert sorted(p.name for p in d.parent.iterdir()) == ["last"]  # no tmp / old left behind
    other = nn.Linear(3, 2)
    ckpt.load_weights(d, other)
    assert torch.equal(other.weight, model.weight)
    assert ckpt.load_state(d)["epoch"] == 2
    assert ckpt.resolve_checkpoint(tmp_path, "last") == d
    assert ckpt.resolve_checkpoint(d / ckpt.WEIGHTS) == d


def test_interrupted_replace_falls_back_to_old(tmp_path):
    model = nn.Linear(3, 2)
    d = tmp_path / "checkpoints" / "best"
    ckpt.save_checkpoint(d, model, {"epoch": 1})
    d.rename(d.parent / ".best.old")  # crash between the two renames
    assert ckpt.resolve_checkpoint(tmp_path, "best") == d.parent / ".best.old"


def test_rng_state_round_trip(tmp_path):
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    ckpt.save_checkpoint(tmp_path / "c", nn.Linear(1, 1), {"rng": ckpt.rng_state()})
    expected = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.set_rng_state(ckpt.load_state(tmp_path / "c")["rng"])  # loads with weights_only=True
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0])
    assert np.array_equal(expected[1], got[1]) and expected[2] == got[2]


def test_corrupt_checkpoint_files_are_value_errors(tmp_path):
    import pytest

    d = ckpt.save_checkpoint(tmp_path / "c", nn.Linear(3, 2), {"epoch": 1})
    (d / ckpt.WEIGHTS).write_bytes(b"junk")  # e.g. a truncated copy
    with pytest.raises(ValueError, match="unreadable checkpoint weights"):
        ckpt.load_weights(d, nn.Linear(3, 2))
    (d / ckpt.STATE).write_bytes((d / ckpt.STATE).read_bytes()[:100])
    with pytest.raises(ValueError, match="unreadable checkpoint state"):
        ckpt.load_state(d)
