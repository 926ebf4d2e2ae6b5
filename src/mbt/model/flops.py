"""Forward-pass FLOPs of a model configuration, counted without allocating any weights."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from mbt.config import ModelConfig
from mbt.model.mbt import MBT


def count_flops(cfg: ModelConfig, batch: int = 1) -> int:
    """FLOPs of one forward pass (inference) of ``MBT(cfg)`` on a batch of ``batch`` clips.

    The model is built on the ``meta`` device, so the paper-size model costs no memory and
    little time; ``torch.utils.flop_counter`` counts matmuls, convolutions and attention.
    """
    with torch.device("meta"):
        model = MBT(cfg).eval().requires_grad_(False)
        inputs = {}
        if "video" in cfg.modalities:
            inputs["video"] = torch.empty(batch, cfg.num_frames, 3, cfg.image_size, cfg.image_size)
        if "audio" in cfg.modalities:
            inputs["audio"] = torch.empty(batch, cfg.audio_frames, cfg.mel_bins)
    with FlopCounterMode(display=False) as counter:
        model(**inputs)
    return counter.get_total_flops()
