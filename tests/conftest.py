"""Shared fixtures: a tiny demo data set (real H.264 / wav / AAC files) made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mbt.config import DataConfig, ModelConfig, load_config, replace
from mbt.data.demo import CLASSES, make_demo_data


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` are skipped where there is no CUDA device (``-m gpu`` selects them)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def tiny_model_config(**changes) -> ModelConfig:
    """The demo's tiny model (``configs/demo.yaml``: 4 layers of width 64, 4 frames of 32x32,
    128 x 64 log-mel), with ``changes``."""
    return replace(load_config("demo").model, **changes)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 classes x 4 clips (groups of 2) of the demo data set; read-only for the tests."""
    return make_demo_data(
        tmp_path_factory.mktemp("demo") / "demo", clips_per_class=4, clips_per_group=2
    )


@pytest.fixture(scope="session")
def tiny_model_cfg() -> ModelConfig:
    """The tiny model's inputs: 4 frames of 32x32, 128 x 64 log-mel."""
    return tiny_model_config(num_classes=len(CLASSES))


@pytest.fixture(scope="session")
def demo_data_cfg() -> DataConfig:
    """Split two groups of two: half of each class is validation."""
    return DataConfig(val_fraction=0.4, crop_scale=(0.3, 1.0))
