"""The FLOP counts of mbt.model.flops: the training count includes attention, which torch's
counter misses on real CPU tensors (the fused SDPA kernel has no FLOP formula there)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from mbt.model import MBT
from mbt.model.flops import count_flops, count_training_flops
from tests.conftest import tiny_model_config


def test_training_count_is_forward_and_backward_with_attention():
    cfg = tiny_model_config(fusion="late")  # no bottlenecks: N per stream is known
    train = count_training_flops(cfg)
    assert 2.5 * count_flops(cfg) < train < 3.1 * count_flops(cfg)
    assert count_training_flops(cfg, batch=3) == 3 * train

    model = MBT(cfg).train()
    video = torch.randn(1, cfg.num_frames, 3, cfg.image_size, cfg.image_size)
    audio = torch.randn(1, cfg.audio_frames, cfg.mel_bins)
    with FlopCounterMode(display=False) as counter:
        per = model(video=video, audio=audio, per_modality=True)
        sum(lg.sum() for lg in per.values()).backward()
    # Attention per call: QK^T and PV, 2 * N^2 * D each, forward; the backward twice that.
    n_video = cfg.num_frames * (cfg.image_size // cfg.patch_size) ** 2 + 1  # + CLS
    n_audio = (cfg.audio_frames // 16) * (cfg.mel_bins // 16) + 1
    attention = 3 * 4 * cfg.width * cfg.depth * (n_video**2 + n_audio**2)
    # A torch that learns to count its CPU attention kernel fails here: then the note in
    # mbt/model/flops.py (and benchmarks/RESULTS.md) is out of date.
    assert train - counter.get_total_flops() == attention
