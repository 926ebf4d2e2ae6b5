"""model.warm_start and train.freeze: a model trained on one task starts another."""

from __future__ import annotations

import pytest
import torch

from mbt.config import replace
from mbt.model import MBT
from mbt.model.folder import write_pretrained
from mbt.model.inits import apply_init, load_init_weights
from mbt.training.loop import freeze
from tests.conftest import tiny_model_config


@pytest.fixture
def source(tmp_path):
    """A saved 6-class fused model."""
    torch.manual_seed(1)
    model = MBT(tiny_model_config(num_classes=6))
    write_pretrained(model, tmp_path / "src")
    return tmp_path / "src", model.state_dict()


def _started(cfg):
    torch.manual_seed(2)
    model = MBT(cfg)
    apply_init(model, load_init_weights(cfg))
    return model


@pytest.mark.parametrize("change", [{}, {"fusion": "late"}, {"modalities": ("audio",)}])
def test_warm_start_copies_all_but_the_head(source, change):
    folder, saved = source
    cfg = tiny_model_config(num_classes=3, warm_start=str(folder), **change)
    model = _started(cfg)
    fresh = _started(replace(cfg, warm_start=""))
    for name, value in model.state_dict().items():
        if name.startswith("head."):  # new classes: the head is the fresh model's
            assert torch.equal(value, fresh.state_dict()[name]), name
        else:  # everything else exists in the fused source, with the same shape
            assert torch.equal(value, saved[name]), name


def test_warm_start_errors_name_the_source(tmp_path, source):
    with pytest.raises(FileNotFoundError, match="model.warm_start=.*nowhere"):
        load_init_weights(tiny_model_config(warm_start=str(tmp_path / "nowhere")))
    wide = tiny_model_config(width=128, warm_start=str(source[0]))
    with pytest.raises(ValueError, match="no weight has the name and shape"):
        _started(wide)


def test_freeze_keeps_parameters_fixed():
    model = MBT(tiny_model_config())
    freeze(model, ("embed.", "layers.0."))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and not any(n.startswith(("embed.", "layers.0.")) for n in trainable)
    assert any(n.startswith("layers.1.") for n in trainable)
    with pytest.raises(ValueError, match=r"train.freeze: 'layer.0.' names no parameter"):
        freeze(model, ("layer.0.",))
