"""The model learns, and bottleneck fusion learns what late fusion cannot (issue 10).

Tensor clips, no media files: a picture attribute p (horizontal stripes, vertical stripes,
checkerboard, random colours, period and phase, pixel noise) and a sound attribute s (a band of
energy in one of three frequency regions of the spectrogram, random level and position, noise).

1. Warm-up on the six additive ``cycle`` classes of :mod:`mbt.data.demo` (each a (p, s) pair):
   the streams learn to find the cues. From scratch, the interaction gives neither stream any
   signal (one modality alone predicts nothing), as ``mbt demo``'s two stages reflect.
2. The ``pairing`` interaction, class = (s - p) mod 3: every picture and every sound occurs
   equally often in every class, so neither stream alone, nor any sum of a picture score and a
   sound score, beats chance in expectation. MBT and late fusion both start from the warm-up
   weights (new head); MBT must reach >= 90 %, late fusion must stay near 33 %.

Depth 3, Lf = 1: bottleneck fusion needs two fusion layers to reach a CLS token (layer Lf
gathers into the bottlenecks, layer Lf + 1 lets each CLS read them). About 20 s on one core.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mbt.config import ModelConfig, replace
from mbt.model import MBT

CYCLE = [(2, 2), (2, 0), (0, 1), (0, 0), (1, 1), (1, 2)]  # (p, s) of the six cycle classes
PAIRING = [(p, s, (s - p) % 3) for p in range(3) for s in range(3)]  # (p, s, class)
CFG = ModelConfig(
    num_classes=6, width=32, depth=3, num_heads=2, mlp_ratio=2.0, image_size=16, patch_size=8,
    num_frames=2, audio_frames=32, mel_bins=32, audio_patch_size=16, audio_patch_stride=16,
    fusion_layer=1, n_bottlenecks=4,
)  # fmt: skip


def _clips(cells: list[tuple[int, int, int]], n: int, seed: int):
    """(video (n, T, 3, S, S), audio (n, T_a, F), labels (n,)), balanced over ``cells``."""
    g = torch.Generator().manual_seed(seed)
    idx = (torch.arange(n) % len(cells))[torch.randperm(n, generator=g)]
    p, s, y = torch.tensor(cells)[idx].unbind(1)
    S, T = CFG.image_size, CFG.num_frames
    yy, xx = torch.arange(S).view(1, S, 1).float(), torch.arange(S).view(1, 1, S).float()
    period = 4 + 2 * torch.rand(n, 1, 1, generator=g)
    phase = period * torch.rand(n, 1, 1, generator=g)
    rows = torch.sin(2 * math.pi * (yy + phase) / period).expand(n, S, S)
    cols = torch.sin(2 * math.pi * (xx + phase) / period).expand(n, S, S)
    p3 = p.view(n, 1, 1)
    pattern = torch.where(p3 == 0, rows, torch.where(p3 == 1, cols, rows * cols))
    mask = (pattern > 0).float().unsqueeze(1)  # (n, 1, S, S)
    c0 = torch.rand(n, 3, 1, 1, generator=g) * 0.8 - 0.9
    c1 = c0 + 0.8 + 0.4 * torch.rand(n, 3, 1, 1, generator=g)
    video = (mask * c1 + (1 - mask) * c0).unsqueeze(1).expand(n, T, 3, S, S)
    video = video + 0.1 * torch.randn(n, T, 3, S, S, generator=g)
    f = torch.arange(CFG.mel_bins).float().view(1, 1, -1)
    jitter = (torch.rand(n, generator=g) - 0.5) * CFG.mel_bins / 12
    centre = (2 * s.float() + 1) / 6 * CFG.mel_bins + jitter
    band = torch.exp(-0.5 * ((f - centre.view(n, 1, 1)) / (CFG.mel_bins / 16)) ** 2)  # (n, 1, F)
    level = 0.8 + 0.6 * torch.rand(n, 1, 1, generator=g)
    noise = 0.15 * torch.randn(n, CFG.audio_frames, CFG.mel_bins, generator=g)
    return video, level * band - 0.5 + noise, y


def _fit(model: MBT, data, steps: int, seed: int, lr: float = 2e-3) -> None:
    """AdamW with warm-up and cosine decay, loss on the logits averaged over the streams."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / 20) * 0.5 * (1 + math.cos(math.pi * i / steps))
    )
    video, audio, y = data
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        j = torch.randint(len(y), (32,), generator=g)
        inputs = {"video": video[j], "audio": audio[j]}
        loss = F.cross_entropy(model(**{m: inputs[m] for m in model.cfg.modalities}), y[j])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()


@torch.no_grad()
def _accuracy(model: MBT, data, **kwargs) -> float:
    model.eval()
    video, audio, y = data
    return (model(video=video, audio=audio, **kwargs).argmax(1) == y).float().mean().item()


@pytest.fixture(scope="module")
def warm_state():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is fastest and deterministic
    torch.manual_seed(0)
    model = MBT(CFG)
    cycle = [(p, s, i) for i, (p, s) in enumerate(CYCLE)]
    _fit(model, _clips(cycle, 256, 100), 150, 0)
    assert _accuracy(model, _clips(cycle, 120, 200)) > 0.6  # the streams find the cues
    yield {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    torch.set_num_threads(threads)


@pytest.mark.parametrize("fusion", ["bottleneck", "late"])
def test_interaction_needs_mid_fusion(warm_state, fusion):
    torch.manual_seed(0)
    model = MBT(replace(CFG, num_classes=3, fusion=fusion))
    own = model.state_dict()
    model.load_state_dict({k: v for k, v in warm_state.items() if k in own}, strict=False)
    _fit(model, _clips(PAIRING, 256, 300), 200, 0)
    val = _clips(PAIRING, 270, 400)  # held-out clips: new colours, phases, noise
    acc = _accuracy(model, val)
    if fusion == "bottleneck":
        assert acc >= 0.9, acc
        assert _accuracy(model, val, fuse=False) <= 1 / 3 + 0.2  # the exchange solves it
    else:
        assert acc <= 1 / 3 + 0.15, acc  # no sum of per-stream logits separates the classes
