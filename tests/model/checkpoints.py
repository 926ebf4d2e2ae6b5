"""Tiny pretrained checkpoints in the real file formats, written at test time.

- :func:`write_vit`: a timm ``VisionTransformer`` state dict as ``.safetensors`` (what
  ``hf download timm/vit_base_patch16_224.augreg_in21k model.safetensors`` gives);
- :func:`write_ast_pth`: an original AST checkpoint (YuanGongND/ast ``audioset_10_10_0.4593.pth``
  key layout: DataParallel ``module.`` prefix, ``v.`` DeiT encoder with CLS and distillation
  tokens, ``mlp_head``), for 128 mel bins and patch stride 10 as the AudioSet model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

AST_MEL, AST_STRIDE, AST_PATCH = 128, 10, 16  # the AudioSet AST's front-end


def write_vit(
    path: Path, *, width: int, depth: int, heads: int, mlp_ratio: float, image: int, patch: int
) -> dict[str, torch.Tensor]:
    """A random timm ViT saved at ``path``; returns its state dict."""
    torch.manual_seed(1)
    vit = VisionTransformer(
        img_size=image, patch_size=patch, embed_dim=width, depth=depth, num_heads=heads,
        mlp_ratio=mlp_ratio, num_classes=7,
    )  # fmt: skip
    sd = {k: (v + 0.05 * torch.randn_like(v)).contiguous() for k, v in vit.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))
    return sd


def write_ast_pth(
    path: Path,
    *,
    width: int,
    depth: int,
    mlp_ratio: float,
    time_patches: int = 4,
    classes: int = 527,
) -> dict[str, torch.Tensor]:
    """A random original-layout AST ``.pth`` at ``path``; returns the saved dict."""
    gen = torch.Generator().manual_seed(2)
    freq = (AST_MEL - AST_PATCH) // AST_STRIDE + 1  # 12, as AudioSet AST
    hidden = int(width * mlp_ratio)
    shapes = {
        "v.cls_token": (1, 1, width),
        "v.dist_token": (1, 1, width),
        "v.pos_embed": (1, 2 + freq * time_patches, width),
        "v.patch_embed.proj.weight": (width, 1, AST_PATCH, AST_PATCH),
        "v.patch_embed.proj.bias": (width,),
        "v.norm.weight": (width,),
        "v.norm.bias": (width,),
        "mlp_head.0.weight": (width,),
        "mlp_head.0.bias": (width,),
        "mlp_head.1.weight": (classes, width),
        "mlp_head.1.bias": (classes,),
    }
    for i in range(depth):
        b = f"v.blocks.{i}."
        shapes |= {
            b + "norm1.weight": (width,), b + "norm1.bias": (width,),
            b + "attn.qkv.weight": (3 * width, width), b + "attn.qkv.bias": (3 * width,),
            b + "attn.proj.weight": (width, width), b + "attn.proj.bias": (width,),
            b + "norm2.weight": (width,), b + "norm2.bias": (width,),
            b + "mlp.fc1.weight": (hidden, width), b + "mlp.fc1.bias": (hidden,),
            b + "mlp.fc2.weight": (width, hidden), b + "mlp.fc2.bias": (width,),
        }  # fmt: skip
    sd = {f"module.{k}": 0.1 * torch.randn(s, generator=gen) for k, s in shapes.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, path)
    return sd
