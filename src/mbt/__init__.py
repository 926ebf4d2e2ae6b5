"""MBT: Multimodal Bottleneck Transformer for audio-visual classification in PyTorch.

``import mbt`` loads only the configuration (no torch): the command line parses its arguments,
and answers ``--help`` or a config error, before anything heavy is imported. The names that
need torch (:class:`MBT`, :func:`load_audio`, :func:`log_mel`, :func:`load_model`) are imported
on first use (PEP 562 module ``__getattr__``).
"""

from __future__ import annotations

import importlib
from typing import Any

from mbt.config import DataConfig, ModelConfig, RunConfig, TrainConfig, load_config

MBTConfig = ModelConfig  # the model's config under the name the paper's readers look for

# name -> the module it comes from, imported when the name is first used
_LAZY = {
    "MBT": "mbt.model.mbt",
    "load_audio": "mbt.data.audio",
    "log_mel": "mbt.data.audio",
    "load_model": "mbt.loading",
}

__all__ = [
    "MBT",
    "DataConfig",
    "MBTConfig",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "load_audio",
    "load_config",
    "load_model",
    "log_mel",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'mbt' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # the next access is a plain lookup
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
