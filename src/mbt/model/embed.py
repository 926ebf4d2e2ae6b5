"""Tokenisers: video tubelets and log-mel patches, each with its prefix tokens and positions.

Shape vocabulary: B batch, T frames, T' = T / t tubelet steps, H' x W' patch grid,
N_v = T' * H' * W' video tokens, T_a spectrogram frames, F mel bins, N_a audio tokens,
P prefix tokens (CLS, and AST's distillation token), D width.
"""

from __future__ import annotations

import torch
from torch import nn


def _normal_(t: torch.Tensor, std: float = 0.02) -> torch.Tensor:
    # BERT / official MBT init for positional embeddings and bottlenecks.
    return nn.init.trunc_normal_(t, std=std, a=-2 * std, b=2 * std)


class PrefixTokens(nn.Module):
    """P learned tokens (CLS, distillation) with their own positions, prepended to a stream.

    With P = 0 (gap classifier) it holds no parameters and passes tokens through.
    """

    def __init__(self, width: int, num_prefix: int) -> None:
        super().__init__()
        self.num_prefix = num_prefix
        if num_prefix:
            self.cls_token = nn.Parameter(torch.zeros(1, num_prefix, width))  # official: zeros
            self.pos = nn.Parameter(_normal_(torch.empty(1, num_prefix, width)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.num_prefix:
            return x
        prefix = (self.cls_token + self.pos).expand(x.shape[0], -1, -1)  # (B, P, D)
        return torch.cat([prefix, x], dim=1)  # (B, P + N, D)


class VideoEmbed(nn.Module):
    """Frames (B, T, 3, H, W) -> tokens (B, P + N_v, D).

    ``tubelet=1`` is the paper's per-frame 2-D patching (8 frames x 196 = 1568 tokens at 224 px);
    ``tubelet=2`` is the official MBT-B/16x2 3-D patching. Positions are either separable
    (a spatial grid table plus a temporal table, the paper's description) or one joint table
    over all T' x H' x W' positions (the official code and its checkpoints).

    Args:
        width: D.
        image_size: H = W of the input frames.
        patch_size: spatial patch side p.
        num_frames: T.
        tubelet: temporal extent t of a patch.
        pos_embed: ``"separable"`` or ``"joint"``.
        num_prefix: P, CLS tokens prepended (1 for the token classifier, 0 for gap).
    """

    def __init__(
        self,
        width: int,
        image_size: int,
        patch_size: int,
        num_frames: int,
        tubelet: int = 1,
        pos_embed: str = "separable",
        num_prefix: int = 1,
    ) -> None:
        super().__init__()
        self.image_size, self.num_frames = image_size, num_frames
        self.grid = (num_frames // tubelet, image_size // patch_size, image_size // patch_size)
        t, h, w = self.grid
        self.proj = nn.Conv3d(
            3, width, (tubelet, patch_size, patch_size), (tubelet, patch_size, patch_size)
        )
        self.prefix = PrefixTokens(width, num_prefix)
        self.separable = pos_embed == "separable"
        if self.separable:
            self.pos_spatial = nn.Parameter(_normal_(torch.empty(1, h * w, width)))
            self.pos_temporal = nn.Parameter(_normal_(torch.empty(1, t, width)))
        else:
            self.pos_grid = nn.Parameter(_normal_(torch.empty(1, t * h * w, width)))

    @property
    def num_tokens(self) -> int:
        t, h, w = self.grid
        return t * h * w

    def grid_pos(self) -> torch.Tensor:
        """Positional table of the patch tokens, (1, N_v, D), time-major."""
        if self.separable:
            pos = self.pos_temporal[:, :, None] + self.pos_spatial[:, None]  # (1, T', H'W', D)
            return pos.flatten(1, 2)  # (1, N_v, D)
        return self.pos_grid

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if video.ndim != 5 or tuple(video.shape[1:]) != (
            self.num_frames,
            3,
            self.image_size,
            self.image_size,
        ):
            raise ValueError(
                f"video: expected (B, {self.num_frames}, 3, {self.image_size}, "
                f"{self.image_size}), got {tuple(video.shape)}"
            )
        x = self.proj(video.transpose(1, 2))  # (B, D, T', H', W')
        x = x.flatten(2).transpose(1, 2) + self.grid_pos()  # (B, N_v, D)
        return self.prefix(x)  # (B, P + N_v, D)


class AudioEmbed(nn.Module):
    """Log-mel spectrogram (B, T_a, F) -> tokens (B, P + N_a, D).

    A 1-channel patch embedding over the spectrogram seen as a T_a x F image (time first, as the
    official MBT feeds it), kernel ``patch_size`` and ``stride`` (16/16 for MBT, 16/10 for AST's
    overlapping patches), with one learned position per cell of the 2-D (time, freq) grid.

    Args:
        width: D.
        num_frames: T_a.
        mel_bins: F.
        patch_size: kernel side.
        stride: patch stride (<= patch_size).
        num_prefix: P: 0 (gap), 1 (CLS) or 2 (CLS + AST distillation token; pooled as their mean).
    """

    def __init__(
        self,
        width: int,
        num_frames: int,
        mel_bins: int,
        patch_size: int = 16,
        stride: int = 16,
        num_prefix: int = 1,
    ) -> None:
        super().__init__()
        self.num_frames, self.mel_bins = num_frames, mel_bins
        self.grid = ((num_frames - patch_size) // stride + 1, (mel_bins - patch_size) // stride + 1)
        self.proj = nn.Conv2d(1, width, patch_size, stride)
        self.prefix = PrefixTokens(width, num_prefix)
        self.pos_grid = nn.Parameter(_normal_(torch.empty(1, self.grid[0] * self.grid[1], width)))

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        if audio.ndim != 3 or tuple(audio.shape[1:]) != (self.num_frames, self.mel_bins):
            raise ValueError(
                f"audio: expected (B, {self.num_frames}, {self.mel_bins}) log-mel frames, "
                f"got {tuple(audio.shape)}"
            )
        x = self.proj(audio.unsqueeze(1))  # (B, D, t, f)
        x = x.flatten(2).transpose(1, 2) + self.pos_grid  # (B, N_a, D), time-major
        return self.prefix(x)  # (B, P + N_a, D)
