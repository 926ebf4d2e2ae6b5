"""MBT: Multimodal Bottleneck Transformer for audio-visual classification in PyTorch."""

from mbt.config import DataConfig, ModelConfig, RunConfig, TrainConfig, load_config

MBTConfig = ModelConfig  # the model's config under the name the paper's readers look for

__all__ = ["DataConfig", "MBTConfig", "ModelConfig", "RunConfig", "TrainConfig", "load_config"]
__version__ = "0.1.0"
