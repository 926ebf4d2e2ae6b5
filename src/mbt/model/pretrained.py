"""Initialise both MBT streams from an ImageNet ViT (REFERENCE.md section 3).

Sources: a timm model name (downloaded by timm when online), or a local file: timm state
dicts as ``.safetensors`` / ``.pth`` / ``.pt`` / ``.bin``, Hugging Face transformers ViT
checkpoints (``vit.embeddings...`` keys, converted to timm names), and big_vision / augreg
``.npz`` files (read by timm's own npz loader). Every ViT block is copied into each stream,
the final norm into the shared final norm; the 2-D positional grid is resized in 2-D; the RGB
patch kernel is summed over its input channels for the 1-channel spectrogram; 3-D tubelet
kernels get the central-frame (official) or average init; the classification head is not
restored. Every copied tensor is shape-checked; a mismatch is a ``ValueError`` naming the key.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from timm.layers import resample_patch_embed
from timm.models.vision_transformer import VisionTransformer, _load_weights
from torch import nn

from mbt.config import ModelConfig
from mbt.model.fusion import ORDER
from mbt.model.safe_load import torch_load

_TORCH_SUFFIXES = {".pth", ".pt", ".bin", ".ckpt"}


# ---------------------------------------------------------------------------------------------
# Reading a ViT state dict in timm names


def _from_hf_vit(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face ``ViTModel`` keys -> timm ``VisionTransformer`` keys (q, k, v fused)."""
    sd = {k.removeprefix("vit."): v for k, v in sd.items()}
    out = {
        "cls_token": sd["embeddings.cls_token"],
        "pos_embed": sd["embeddings.position_embeddings"],
        "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": sd["layernorm.weight"],
        "norm.bias": sd["layernorm.bias"],
    }
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"encoder\.layer\.(\d+)\.", k)))
    names = {
        "norm1": "layernorm_before", "norm2": "layernorm_after",
        "attn.proj": "attention.output.dense", "mlp.fc1": "intermediate.dense",
        "mlp.fc2": "output.dense",
    }  # fmt: skip
    for i in range(depth):
        src = f"encoder.layer.{i}."
        for timm_name, hf_name in names.items():
            for p in ("weight", "bias"):
                out[f"blocks.{i}.{timm_name}.{p}"] = sd[f"{src}{hf_name}.{p}"]
        for p in ("weight", "bias"):
            qkv = [sd[f"{src}attention.attention.{n}.{p}"] for n in ("query", "key", "value")]
            out[f"blocks.{i}.attn.qkv.{p}"] = torch.cat(qkv)
    return out


def _from_npz(path: Path) -> dict[str, torch.Tensor]:
    """Read a big_vision / augreg ``.npz`` ViT with timm's own loader."""
    with np.load(path) as npz:
        keys = set(npz.files)
        kernel = npz["embedding/kernel"]  # (p, p, 3, D)
        pos = npz["Transformer/posembed_input/pos_embedding"]  # (1, 1 + N, D)
        mlp = npz["Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel"].shape[1]
        heads = npz["Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel"].shape[
            1
        ]
    depth = 1 + max(
        int(m.group(1)) for k in keys if (m := re.match(r"Transformer/encoderblock_(\d+)/", k))
    )
    width, patch = kernel.shape[-1], kernel.shape[0]
    prefix = 1 if "cls" in keys else 0
    grid = math.isqrt(pos.shape[1] - prefix)
    vit = VisionTransformer(
        img_size=grid * patch, patch_size=patch, embed_dim=width, depth=depth, num_heads=heads,
        mlp_ratio=mlp / width, num_classes=0, class_token=bool(prefix),
        global_pool="token" if prefix else "avg",
    )  # fmt: skip
    _load_weights(vit, str(path))
    return vit.state_dict()


def load_vit_state_dict(source: str | Path) -> dict[str, torch.Tensor]:
    """A ViT's weights in timm names, from a local file or a timm model name.

    Raises:
        FileNotFoundError: ``source`` looks like a path but does not exist.
        ValueError: the file is not a ViT checkpoint this loader understands.
    """
    path = Path(source)
    if path.is_file():
        suffix = path.suffix.lower()
        try:
            if suffix == ".safetensors":
                sd = load_file(str(path))
            elif suffix == ".npz":
                return _from_npz(path)
            elif suffix in _TORCH_SUFFIXES:
                sd = torch_load(path)  # never unpickles code
                for key in ("state_dict", "model", "module"):
                    if isinstance(sd, dict) and isinstance(sd.get(key), dict):
                        sd = sd[key]
            else:
                raise ValueError(f"unknown checkpoint suffix {suffix!r}")
        except (OSError, RuntimeError, KeyError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"{path}: cannot read ViT weights ({first})") from None
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
        if "embeddings.cls_token" in sd or "vit.embeddings.cls_token" in sd:
            sd = _from_hf_vit(sd)
        if "patch_embed.proj.weight" not in sd:
            raise ValueError(f"{path}: not a ViT checkpoint (no patch_embed.proj.weight)")
        return sd
    text = str(source)
    looks_like_path = path.suffix.lower() in _TORCH_SUFFIXES | {".safetensors", ".npz"} or (
        not text.startswith("hf-hub:") and ("/" in text or text.startswith((".", "~")))
    )
    if looks_like_path:
        raise FileNotFoundError(f"{source}: no such checkpoint file")
    try:  # a timm model name (or hf-hub:org/name): needs the network or timm's cache
        return timm.create_model(str(source), pretrained=True, num_classes=0).state_dict()
    except Exception as e:  # timm raises many kinds for unknown names / no network
        raise ValueError(f"{source}: cannot load timm model weights ({e})") from None


# ---------------------------------------------------------------------------------------------
# Tensor surgery


def resize_grid(pos: torch.Tensor, old: tuple[int, int], new: tuple[int, int]) -> torch.Tensor:
    """Resize a positional grid in 2-D, never as a 1-D sequence.

    Args:
        pos: (1, old_h * old_w, D) row-major grid.
        old: (old_h, old_w).
        new: (new_h, new_w).

    Returns:
        (1, new_h * new_w, D), bilinearly interpolated (the official choice for spectrograms).
    """
    if tuple(old) == tuple(new):
        return pos
    d = pos.shape[-1]
    grid = pos.reshape(1, old[0], old[1], d).permute(0, 3, 1, 2)  # (1, D, h, w)
    grid = F.interpolate(grid.float(), size=new, mode="bilinear", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, new[0] * new[1], d).to(pos.dtype)  # (1, N, D)


def inflate_kernel(kernel: torch.Tensor, t: int, method: str = "central") -> torch.Tensor:
    """2-D patch kernel (D, C, p, p) -> 3-D tubelet kernel (D, C, t, p, p).

    ``central``: the 2-D kernel at temporal index t // 2, zeros elsewhere (official);
    ``average``: the kernel divided by t at every step (filter inflation).
    """
    if method == "average":
        return kernel.unsqueeze(2).repeat(1, 1, t, 1, 1) / t
    out = kernel.new_zeros(kernel.shape[0], kernel.shape[1], t, *kernel.shape[2:])
    out[:, :, t // 2] = kernel
    return out


# ---------------------------------------------------------------------------------------------
# Copying into the model


def _copy(dst: torch.Tensor, src: torch.Tensor, key: str) -> None:
    if tuple(dst.shape) != tuple(src.shape):
        raise ValueError(
            f"{key}: checkpoint shape {tuple(src.shape)} does not fit the model's {tuple(dst.shape)}"
        )
    with torch.no_grad():
        dst.copy_(src.to(dst.dtype))


def _split_pos(
    sd: dict[str, torch.Tensor],
) -> tuple[torch.Tensor | None, torch.Tensor, tuple[int, int]]:
    """(prefix pos (1, P, D) or None, grid pos (1, h*w, D), (h, w)) of a ViT's pos_embed."""
    pos = sd["pos_embed"]
    n_prefix = sd["cls_token"].shape[1] if "cls_token" in sd else 0
    n_prefix += sd["dist_token"].shape[1] if "dist_token" in sd else 0
    grid = pos[:, n_prefix:]
    side = math.isqrt(grid.shape[1])
    if side * side != grid.shape[1]:
        raise ValueError(f"pos_embed: {grid.shape[1]} grid positions are not a square grid")
    return (pos[:, :n_prefix] if n_prefix else None), grid, (side, side)


def _patch_kernel(sd: dict[str, torch.Tensor], patch: int) -> torch.Tensor:
    w = sd["patch_embed.proj.weight"]  # (D, 3, p, p)
    if w.shape[-1] != patch:
        w = resample_patch_embed(w, [patch, patch])  # FlexiViT-style resampling
    return w


class _Filler:
    """Copies checkpoint tensors into named model parameters and remembers which it set."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.params = dict(model.named_parameters())
        self.done: set[str] = set()

    def put(self, name: str, value: torch.Tensor, key: str) -> None:
        """``model.<name>`` <- ``value`` (checkpoint ``key``, named in a shape error)."""
        _copy(self.params[name], value, key)
        self.done.add(name)

    def untouched(self) -> list[str]:
        return sorted(set(self.params) - self.done)


def init_from_vit(model: torch.nn.Module, source: str | Path | dict) -> list[str]:
    """Copy an ImageNet ViT into both streams of ``model`` (an :class:`mbt.model.MBT`).

    Args:
        model: the MBT model; its depth and width must match the ViT's.
        source: a timm model name, a checkpoint path, or a timm-named state dict.

    Returns:
        The model's parameter names that were NOT initialised from the ViT (bottlenecks,
        head, temporal positions, distillation tokens where the ViT has none, ...).
    """
    sd = source if isinstance(source, dict) else load_vit_state_dict(source)
    cfg = model.cfg
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    if depth != cfg.depth:
        raise ValueError(f"blocks: checkpoint has {depth} blocks, model.depth is {cfg.depth}")
    fill = _Filler(model)
    _put_blocks(fill, model, sd)
    fill.put("norm.weight", sd["norm.weight"], "norm.weight")
    fill.put("norm.bias", sd["norm.bias"], "norm.bias")
    prefix_pos, grid, old = _split_pos(sd)
    for m in ORDER:
        if m not in model.embed:
            continue
        _put_prefix(fill, m, model.embed[m].prefix.num_prefix, sd, prefix_pos)
        if m == "video":
            _put_video_embed(fill, model.embed["video"], cfg, sd, grid, old)
        else:
            _put_audio_embed(fill, model.embed["audio"], cfg, sd, grid, old)
    return fill.untouched()


def _put_blocks(fill: _Filler, model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> None:
    """ViT block i into every stream's block of layer i (or into the one shared block)."""
    for i, layer in enumerate(model.layers):
        for name, _ in layer.named_parameters():
            sub = name.split(".", 2)[-1] if name.startswith("blocks.") else name.split(".", 1)[-1]
            key = f"blocks.{i}.{sub}"
            if key not in sd:
                raise ValueError(f"{key}: missing from the checkpoint")
            fill.put(f"layers.{i}.{name}", sd[key], key)


def _put_prefix(
    fill: _Filler,
    m: str,
    n_prefix: int,
    sd: dict[str, torch.Tensor],
    prefix_pos: torch.Tensor | None,
) -> None:
    """The stream's prefix tokens and their positions from the ViT's CLS (and dist) token."""
    if not n_prefix or "cls_token" not in sd:
        return
    tokens = [sd["cls_token"]] + ([sd["dist_token"]] if "dist_token" in sd else [])
    tokens = torch.cat(tokens, dim=1)[:, :n_prefix]  # (1, P, D)
    if tokens.shape[1] < n_prefix:  # a CLS-only ViT into AST's CLS + distillation pair
        tokens = tokens[:, :1].expand(-1, n_prefix, -1)
    fill.put(f"embed.{m}.prefix.cls_token", tokens, "cls_token")
    if prefix_pos is not None:
        pp = prefix_pos[:, :n_prefix]
        pp = pp[:, :1].expand(-1, n_prefix, -1) if pp.shape[1] < n_prefix else pp
        fill.put(f"embed.{m}.prefix.pos", pp, "pos_embed[prefix]")


def _put_video_embed(
    fill: _Filler,
    emb: nn.Module,
    cfg: ModelConfig,
    sd: dict[str, torch.Tensor],
    grid: torch.Tensor,
    old: tuple[int, int],
) -> None:
    """Inflated tubelet kernel; the 2-D grid resized and tiled over time (or separable)."""
    t, h, w = emb.grid
    kernel = inflate_kernel(_patch_kernel(sd, cfg.patch_size), cfg.tubelet_size, cfg.tubelet_init)
    fill.put("embed.video.proj.weight", kernel, "patch_embed.proj.weight")
    fill.put("embed.video.proj.bias", sd["patch_embed.proj.bias"], "patch_embed.proj.bias")
    spatial = resize_grid(grid, old, (h, w))  # (1, H'W', D)
    if emb.separable:
        fill.put("embed.video.pos_spatial", spatial, "pos_embed")
        # Zero temporal table: one frame reproduces the image model exactly.
        fill.put("embed.video.pos_temporal", torch.zeros_like(emb.pos_temporal), "pos_embed")
    else:
        fill.put("embed.video.pos_grid", spatial.repeat(1, t, 1), "pos_embed")  # tiled over time


def _put_audio_embed(
    fill: _Filler,
    emb: nn.Module,
    cfg: ModelConfig,
    sd: dict[str, torch.Tensor],
    grid: torch.Tensor,
    old: tuple[int, int],
) -> None:
    """RGB kernel summed to 1 channel; the 2-D grid resized to the (time, freq) grid."""
    kernel = _patch_kernel(sd, cfg.audio_patch_size).sum(1, keepdim=True)  # RGB -> 1 channel
    fill.put("embed.audio.proj.weight", kernel, "patch_embed.proj.weight")
    fill.put("embed.audio.proj.bias", sd["patch_embed.proj.bias"], "patch_embed.proj.bias")
    fill.put("embed.audio.pos_grid", resize_grid(grid, old, emb.grid), "pos_embed")
