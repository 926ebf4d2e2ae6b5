"""FLOPs of a model configuration, counted without allocating any weights.

Both counts run ``torch.utils.flop_counter`` on the ``meta`` device: the paper-size model costs
no memory and little time, and ``scaled_dot_product_attention`` decomposes there into matmuls
that the counter sees. (On real CPU tensors it runs a fused kernel that the counter does not
count at all, forward nor backward: about a fifth of the paper model's FLOPs would go missing.)
The recomputation inside a flash-attention backward is not counted: these are model FLOPs, the
numerator of MFU. A multiply-add counts 2.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from mbt.config import ModelConfig
from mbt.model.mbt import MBT


def _meta_model_and_inputs(cfg: ModelConfig, batch: int, train: bool):
    with torch.device("meta"):
        model = MBT(cfg).train(train).requires_grad_(train)
        inputs = {}
        if "video" in cfg.modalities:
            inputs["video"] = torch.empty(batch, cfg.num_frames, 3, cfg.image_size, cfg.image_size)
        if "audio" in cfg.modalities:
            inputs["audio"] = torch.empty(batch, cfg.audio_frames, cfg.mel_bins)
    return model, inputs


def count_flops(cfg: ModelConfig, batch: int = 1) -> int:
    """FLOPs of one forward pass (inference) of ``MBT(cfg)`` on a batch of ``batch`` clips."""
    model, inputs = _meta_model_and_inputs(cfg, batch, train=False)
    with FlopCounterMode(display=False) as counter:
        model(**inputs)
    return counter.get_total_flops()


def count_training_flops(cfg: ModelConfig, batch: int = 1) -> int:
    """FLOPs of one training step's forward and backward of ``MBT(cfg)`` on ``batch`` clips
    (per-modality logits, as the training loss uses; about 3x the forward)."""
    model, inputs = _meta_model_and_inputs(cfg, batch, train=True)
    with FlopCounterMode(display=False) as counter:
        per = model(**inputs, per_modality=True)
        sum(logits.float().sum() for logits in per.values()).backward()
    return counter.get_total_flops()
