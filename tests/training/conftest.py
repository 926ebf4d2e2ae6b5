"""Fixtures of the training tests: a prepared cache of the session's tiny demo data set."""

from __future__ import annotations

from pathlib import Path

import pytest

from mbt.config import RunConfig, load_config
from mbt.data.cache import prepare

# A smaller model than the demo's, CPU, one thread, in-process loading: each epoch takes ~1 s.
TINY = [
    "model.width=32", "model.depth=2", "model.num_heads=2", "model.fusion_layer=1",
    "data.val_fraction=0.4", "data.num_workers=0", "data.test_clips=2",
    "train.batch_size=4", "train.threads=1", "train.device=cpu", "train.epochs=2",
    "train.early_stopping=0", "train.log_every=1",
]  # fmt: skip


def tiny_config(*overrides: str) -> RunConfig:
    """``configs/demo.yaml`` shrunk by :data:`TINY`, then ``overrides``."""
    return load_config("demo", [*TINY, *overrides])


@pytest.fixture(scope="session")
def demo_cache(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo clips decoded once (``mbt prepare``) with the tiny config's sizes."""
    cfg = tiny_config()
    out = tmp_path_factory.mktemp("cache") / "cache"
    prepare(demo_root, out, cfg.data, cfg.model, workers=1, progress=False)
    return out
