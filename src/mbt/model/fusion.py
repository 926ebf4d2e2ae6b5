"""One layer of the two-stream encoder, one module per fusion regime (REFERENCE.md section 1).

Every layer maps ``(x, z) -> (x, z)`` where ``x`` holds each present modality's tokens,
``{"video": (B, N_v, D), "audio": (B, N_a, D)}``, and ``z`` the bottleneck tokens (B, N_b, D)
(``None`` outside bottleneck fusion). ``fuse=False`` runs the layer with no cross-modal
exchange (official ``test_with_bottlenecks=False``). A modality missing from ``x`` simply does
not take part, so the same layers serve clips that lack audio or video.

Which layers fuse is decided when the encoder is built (layers below the fusion layer are
:class:`Separate`), never by branches inside one loop.
"""

from __future__ import annotations

import torch
from torch import nn

Tokens = dict[str, torch.Tensor]
ORDER = ("video", "audio")  # concatenation order of the official code (rgb, spectrogram)


def _each(blocks: nn.ModuleDict, x: Tokens) -> Tokens:
    """Every present stream through its own block, alone."""
    return {m: blocks[m](t) for m, t in x.items()}


class Separate(nn.Module):
    """Each stream runs its own block on its own tokens: no information crosses."""

    def __init__(self, blocks: dict[str, nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleDict(blocks)

    def forward(self, x: Tokens, z: torch.Tensor | None, fuse: bool = True):
        return _each(self.blocks, x), z


class SharedSeparate(nn.Module):
    """One block, shared by all streams, applied to each stream alone (shared encoder, l < Lf)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: Tokens, z: torch.Tensor | None, fuse: bool = True):
        return {m: self.block(t) for m, t in x.items()}, z


class BottleneckFusion(nn.Module):
    """MBT: each stream attends over its own tokens and the shared bottlenecks only.

    ``out_m = Block_m([x_m, z])``; ``x_m, z_m = split(out_m)``; ``z = mean_m(z_m)``.
    """

    def __init__(self, blocks: dict[str, nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleDict(blocks)

    def forward(self, x: Tokens, z: torch.Tensor | None, fuse: bool = True):
        if not fuse:
            return _each(self.blocks, x), z
        out, zs = {}, []
        for m, t in x.items():
            n = t.shape[1]
            y = self.blocks[m](torch.cat([t, z], dim=1))  # (B, N_m + N_b, D)
            out[m] = y[:, :n]  # (B, N_m, D)
            zs.append(y[:, n:])  # (B, N_b, D)
        return out, torch.stack(zs).mean(0)  # z: (B, N_b, D)


class VanillaFusion(nn.Module):
    """Cross-modal attention with separate weights: ``Block_m([x_other, x_m])``, keep m's part."""

    def __init__(self, blocks: dict[str, nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleDict(blocks)

    def forward(self, x: Tokens, z: torch.Tensor | None, fuse: bool = True):
        if not fuse:
            return _each(self.blocks, x), z
        out = {}
        for m, t in x.items():
            context = [x[o] for o in ORDER if o != m and o in x]
            y = self.blocks[m](torch.cat([*context, t], dim=1))  # (B, N_other + N_m, D)
            out[m] = y[:, y.shape[1] - t.shape[1] :]  # (B, N_m, D)
        return out, z


class SharedFusion(nn.Module):
    """Shared encoder (early / mid fusion): all streams concatenated through one block."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: Tokens, z: torch.Tensor | None, fuse: bool = True):
        if not fuse:
            return {m: self.block(t) for m, t in x.items()}, z
        names = [m for m in ORDER if m in x]
        sizes = [x[m].shape[1] for m in names]
        y = self.block(torch.cat([x[m] for m in names], dim=1))  # (B, N_v + N_a, D)
        return dict(zip(names, y.split(sizes, dim=1), strict=True)), z
