"""MBT: Multimodal Bottleneck Transformer for audio-visual classification in PyTorch."""

from mbt.config import DataConfig, ModelConfig, RunConfig, TrainConfig, load_config
from mbt.data.audio import load_audio, log_mel
from mbt.model import MBT

MBTConfig = ModelConfig  # the model's config under the name the paper's readers look for

__all__ = [
    "MBT",
    "DataConfig",
    "MBTConfig",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "load_audio",
    "load_config",
    "log_mel",
]
__version__ = "0.1.0"
