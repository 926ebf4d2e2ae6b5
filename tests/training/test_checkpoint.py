"""Atomic checkpoints (model folders + state.pt) and RNG state round trips."""

import json
import random

import numpy as np
import torch

from mbt.config import DataConfig, ModelConfig, to_dict
from mbt.model import MBT
from mbt.model.hub import load_model
from mbt.training import checkpoint as ckpt


def _model(seed: int = 0) -> MBT:
    """A two-class MBT of a few thousand parameters (checkpoints store an MBT with its cfg)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(
        num_classes=2, width=16, depth=2, num_heads=2, mlp_ratio=1.0, image_size=16,
        patch_size=8, num_frames=2, audio_frames=32, mel_bins=16, fusion_layer=1,
    )  # fmt: skip
    return MBT(cfg)


def test_save_load_round_trip_and_replace(tmp_path):
    model = _model()
    d = tmp_path / "checkpoints" / "last"
    ckpt.save_checkpoint(d, model, {"epoch": 1, "rng": ckpt.rng_state()})
    with torch.no_grad():
        model.head.weight.add_(1.0)
    ckpt.save_checkpoint(d, model, {"epoch": 2})  # replaces the whole folder
    assert sorted(p.name for p in d.parent.iterdir()) == ["last"]  # no tmp / old left behind
    other = _model(seed=1)
    ckpt.load_weights(d, other)
    assert torch.equal(other.head.weight, model.head.weight)
    assert ckpt.load_state(d)["epoch"] == 2
    assert ckpt.resolve_checkpoint(tmp_path, "last") == d
    assert ckpt.resolve_checkpoint(d / ckpt.WEIGHTS) == d


def test_interrupted_replace_falls_back_to_old(tmp_path):
    model = _model()
    d = tmp_path / "checkpoints" / "best"
    ckpt.save_checkpoint(d, model, {"epoch": 1})
    d.rename(d.parent / ".best.old")  # crash between the two renames
    assert ckpt.resolve_checkpoint(tmp_path, "best") == d.parent / ".best.old"


def test_rng_state_round_trip(tmp_path):
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    ckpt.save_checkpoint(tmp_path / "c", _model(), {"rng": ckpt.rng_state()})
    expected = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.set_rng_state(ckpt.load_state(tmp_path / "c")["rng"])  # loads with weights_only=True
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0])
    assert np.array_equal(expected[1], got[1]) and expected[2] == got[2]


def test_corrupt_checkpoint_files_are_value_errors(tmp_path):
    import pytest

    d = ckpt.save_checkpoint(tmp_path / "c", _model(), {"epoch": 1})
    (d / ckpt.WEIGHTS).write_bytes(b"junk")  # e.g. a truncated copy
    with pytest.raises(ValueError, match="unreadable checkpoint weights"):
        ckpt.load_weights(d, _model())
    (d / ckpt.STATE).write_bytes((d / ckpt.STATE).read_bytes()[:100])
    with pytest.raises(ValueError, match="unreadable checkpoint state"):
        ckpt.load_state(d)


def test_a_checkpoint_is_a_model_folder_with_names_and_data(tmp_path):
    model = _model()
    data = DataConfig(test_clips=2, audio_mean=-3.0)
    state = {"epoch": 3, "classes": ["cat", "dog"], "config": {"data": to_dict(data)}}
    d = ckpt.save_checkpoint(tmp_path / "checkpoints" / "best", model, state)
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "model.safetensors", "state.pt"]
    card = json.loads((d / ckpt.CONFIG).read_text())
    assert card["class_names"] == ["cat", "dog"] and card["data"]["audio_mean"] == -3.0
    loaded = load_model(d)  # alone: no run directory around it
    assert loaded.class_names == ["cat", "dog"] and loaded.data == data
    assert loaded.model.cfg == model.cfg and loaded.run_config is None
    assert torch.equal(loaded.model.head.weight, model.head.weight)

    # Explicit names / data win over the state's.
    ckpt.save_checkpoint(d, model, state, class_names=["a", "b"], data=DataConfig())
    assert load_model(d).class_names == ["a", "b"] and load_model(d).data == DataConfig()
