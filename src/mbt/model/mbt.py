"""MBT: the Multimodal Bottleneck Transformer (Nagrani et al., NeurIPS 2021).

Two ViT streams with separate weights (video tubelets, audio log-mel patches) run alone up to
the fusion layer Lf and exchange information from Lf on through the chosen fusion regime;
one shared final LayerNorm and one shared linear head (zero-initialised) classify the clip.

Shape vocabulary: B batch, T frames, T_a spectrogram frames, F mel bins, N_v / N_a tokens
(prefix tokens included), N_b bottlenecks, D width, C classes.
"""

from __future__ import annotations

from functools import partial

import torch
from timm.models.vision_transformer import Block, init_weights_vit_timm
from torch import nn

from mbt.config import ModelConfig
from mbt.model.embed import AudioEmbed, VideoEmbed, _normal_
from mbt.model.fusion import (
    BottleneckFusion,
    Separate,
    SharedFusion,
    SharedSeparate,
    Tokens,
    VanillaFusion,
)
from mbt.model.hub import HubMixin

_FUSION_LAYER = {"bottleneck": BottleneckFusion, "vanilla": VanillaFusion}


def _drop_path(cfg: ModelConfig, layer: int) -> float:
    # Official: grows linearly from 0 at the first layer to the rate at the last.
    return cfg.drop_path_rate * layer / max(cfg.depth - 1, 1)


def _block(cfg: ModelConfig, layer: int) -> Block:
    """A timm pre-LN ViT block (its attention uses ``F.scaled_dot_product_attention``)."""
    return Block(
        dim=cfg.width,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio,
        qkv_bias=cfg.qkv_bias,
        proj_drop=cfg.dropout,
        attn_drop=cfg.attn_dropout,
        drop_path=_drop_path(cfg, layer),
        norm_layer=partial(nn.LayerNorm, eps=1e-6),  # ViT / Flax epsilon
        act_layer=partial(nn.GELU, approximate=cfg.gelu_approximate),  # Flax nn.gelu: tanh
    )


def build_layers(cfg: ModelConfig) -> nn.ModuleList:
    """The encoder: ``Separate`` layers below the fusion layer, the regime's layers from it on."""
    shared = cfg.fusion == "shared" and len(cfg.modalities) > 1
    layers = []
    for layer in range(cfg.depth):
        fusing = layer >= cfg.fusion_start
        if shared:
            block = _block(cfg, layer)
            layers.append(SharedFusion(block) if fusing else SharedSeparate(block))
        else:
            blocks = {m: _block(cfg, layer) for m in cfg.modalities}
            layers.append(_FUSION_LAYER[cfg.fusion](blocks) if fusing else Separate(blocks))
    return nn.ModuleList(layers)


class MBT(HubMixin, nn.Module):
    """Audio-visual classifier with bottleneck (or vanilla / shared / late) fusion.

    Args:
        cfg: the model configuration; ``cfg.modalities`` picks a fused or unimodal model.

    Call ``model(video=..., audio=...)`` with ``video`` (B, T, 3, H, W) and ``audio``
    (B, T_a, F); either may be ``None``, in which case only the present stream runs (a clip
    without sound is still classified).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        num_prefix = 1 if cfg.classifier == "token" else 0
        embeds: dict[str, nn.Module] = {}
        if "video" in cfg.modalities:
            embeds["video"] = VideoEmbed(
                cfg.width, cfg.image_size, cfg.patch_size, cfg.num_frames,
                cfg.tubelet_size, cfg.video_pos_embed, num_prefix,
            )  # fmt: skip
        if "audio" in cfg.modalities:
            audio_prefix = num_prefix + (1 if cfg.audio_dist_token and num_prefix else 0)
            embeds["audio"] = AudioEmbed(
                cfg.width, cfg.audio_frames, cfg.mel_bins, cfg.audio_patch_size,
                cfg.audio_patch_stride, audio_prefix,
            )  # fmt: skip
        self.embed = nn.ModuleDict(embeds)
        self.bottleneck: nn.Parameter | None = None  # only bottleneck fusion has them
        if cfg.fusion == "bottleneck" and cfg.fusion_start < cfg.depth:
            n = cfg.num_bottleneck_tokens
            self.bottleneck = nn.Parameter(_normal_(torch.empty(1, n, cfg.width)))  # (1, N_b, D)
        self.layers = build_layers(cfg)
        self.norm = nn.LayerNorm(cfg.width, eps=1e-6)  # shared by both streams
        self.head = nn.Linear(cfg.width, cfg.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for name, m in self.layers.named_modules():
            init_weights_vit_timm(m, name)  # trunc-normal(0.02) Linear weights, zero biases
        nn.init.zeros_(self.head.weight)  # official: zero-initialised output projection
        nn.init.zeros_(self.head.bias)

    # -- API -------------------------------------------------------------------------------

    def no_weight_decay(self) -> set[str]:
        """Tokens and positional tables, which are never weight-decayed."""
        return {
            n for n, _ in self.named_parameters() if "token" in n or "pos" in n or n == "bottleneck"
        }

    def forward_features(
        self,
        video: torch.Tensor | None = None,
        audio: torch.Tensor | None = None,
        *,
        fuse: bool | None = None,
    ) -> Tokens:
        """Encode the present modalities; returns final-normed tokens ``{m: (B, N_m, D)}``."""
        inputs = {"video": video, "audio": audio}
        given = [m for m in inputs if inputs[m] is not None]
        unknown = [m for m in given if m not in self.embed]
        if unknown:
            raise ValueError(
                f"model was built for {list(self.cfg.modalities)}, got input for {unknown}"
            )
        if not given:
            raise ValueError("forward needs at least one of video=, audio=")
        if fuse is None:  # official: bottlenecks always in training, at test if configured
            fuse = self.training or self.cfg.test_with_bottlenecks
        x = {m: self.embed[m](inputs[m]) for m in self.embed if inputs[m] is not None}
        z = None
        if self.bottleneck is not None:
            z = self.bottleneck.expand(next(iter(x.values())).shape[0], -1, -1)  # (B, N_b, D)
        for layer in self.layers:
            x, z = layer(x, z, fuse)
        return {m: self.norm(t) for m, t in x.items()}

    def pool(self, tokens: Tokens) -> dict[str, torch.Tensor]:
        """Token classifier: each stream's CLS (mean of CLS and distillation token for AST);
        gap: the mean over all tokens of all streams, under the key ``"fused"``."""
        if self.cfg.classifier == "gap":
            return {"fused": torch.cat(list(tokens.values()), dim=1).mean(1)}  # (B, D)
        return {
            m: t[:, : self.embed[m].prefix.num_prefix].mean(1)  # (B, D)
            for m, t in tokens.items()
        }

    def forward_head(self, tokens: Tokens, per_modality: bool = False):
        logits = {m: self.head(f) for m, f in self.pool(tokens).items()}  # {m: (B, C)}
        if per_modality:
            return logits
        return torch.stack(list(logits.values())).mean(0)  # (B, C)

    def forward(
        self,
        video: torch.Tensor | None = None,
        audio: torch.Tensor | None = None,
        *,
        fuse: bool | None = None,
        per_modality: bool = False,
    ):
        """Logits (B, C), averaged over modalities for the token classifier.

        Args:
            video: (B, T, 3, H, W) normalised frames, or None.
            audio: (B, T_a, F) normalised log-mel frames, or None.
            fuse: cross-modal exchange on/off; default: on in training, and at evaluation
                when ``cfg.test_with_bottlenecks`` (the official switch).
            per_modality: return ``{modality: (B, C)}`` (``{"fused": ...}`` for gap) for the
                official per-modality loss instead of the average.
        """
        return self.forward_head(self.forward_features(video, audio, fuse=fuse), per_modality)
