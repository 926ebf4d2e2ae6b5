"""Audio Spectrogram Transformer (AST) weights -> MBT's audio stream.

Two sources are read (REFERENCE.md section 4):

- Hugging Face transformers ``ASTModel`` / ``ASTForAudioClassification`` folders
  (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``), in the transformers 4.x
  key layout (``encoder.layer.{i}.attention.attention.query``) and the 5.x one
  (``layers.{i}.attention.q_proj``);
- the original AST ``.pth`` files (``module.v.cls_token``, ``module.v.dist_token``,
  ``module.v.pos_embed``, ``module.v.blocks.*``, ``module.mlp_head.*``), read with
  ``torch.load(weights_only=True)``.

AST feeds the spectrogram as (B, 1, F, T), frequency as height, and flattens its patch grid
(f, t) frequency-major; this package's audio stream sees (B, 1, T, F) and flattens time-major.
So the patch kernel's two spatial axes are swapped and the positional grid is permuted
(f, t) -> (t, f); then each grid axis is fitted to the configured size by AST's own rule:
cut from the middle when shorter, bilinear 2-D resize when longer. The CLS and distillation
tokens become ``audio_dist_token=True`` (pooled as their mean, as AST does).

Not carried over: AST's classifier (a LayerNorm then a Linear on the pooled token; this model's
head is a single Linear), so converted heads start at zero. HF configs use LayerNorm epsilon
1e-12 where the original AST (timm DeiT) and this model use 1e-6: a negligible difference.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from mbt.config import DataConfig, ModelConfig
from mbt.model.mbt import MBT
from mbt.model.safe_load import torch_load

_HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
# transformers 4.x / 5.x sub-module names -> timm names, inside one layer.
_HF4 = {
    "layernorm_before": "norm1", "attention.output.dense": "attn.proj",
    "layernorm_after": "norm2", "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2",
}  # fmt: skip
_HF5 = {
    "layernorm_before": "norm1", "attention.o_proj": "attn.proj", "layernorm_after": "norm2",
    "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
}  # fmt: skip


class ASTWeights:
    """An AST checkpoint in timm names, with its patch geometry.

    Attributes:
        sd: ``cls_token``, ``dist_token``, ``pos_embed`` (1, 2 + f * t, D),
            ``patch_embed.proj.weight`` (D, 1, k, k), ``blocks.{i}.*``, ``norm.*`` and, when
            present, ``head_norm.*`` / ``head.*`` (AST's classifier).
        freq_grid: f, patches along frequency.
        time_grid: t, patches along time.
        stride: patch stride (AST: 10, overlapping 16 x 16 patches).
        num_heads: attention heads.
        mel_bins: F the checkpoint was trained with.
        max_length: T_a the checkpoint was trained with.
    """

    def __init__(self, sd, freq_grid, time_grid, stride, num_heads, mel_bins, max_length) -> None:
        self.sd, self.freq_grid, self.time_grid, self.stride = sd, freq_grid, time_grid, stride
        self.num_heads, self.mel_bins, self.max_length = num_heads, mel_bins, max_length

    @property
    def width(self) -> int:
        return self.sd["cls_token"].shape[-1]

    @property
    def depth(self) -> int:
        return 1 + max(int(m.group(1)) for k in self.sd if (m := re.match(r"blocks\.(\d+)\.", k)))

    @property
    def patch_size(self) -> int:
        return self.sd["patch_embed.proj.weight"].shape[-1]

    @property
    def num_classes(self) -> int | None:
        return self.sd["head.weight"].shape[0] if "head.weight" in self.sd else None


def _from_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    sd = {k.removeprefix("audio_spectrogram_transformer."): v for k, v in sd.items()}
    e = "embeddings."
    out = {
        "cls_token": sd[e + "cls_token"],
        "dist_token": sd[e + "distillation_token"],
        "pos_embed": sd[e + "position_embeddings"],
        "patch_embed.proj.weight": sd[e + "patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd[e + "patch_embeddings.projection.bias"],
        "norm.weight": sd["layernorm.weight"],
        "norm.bias": sd["layernorm.bias"],
    }
    v5 = any(k.startswith("layers.") for k in sd)
    pattern = r"layers\.(\d+)\." if v5 else r"encoder\.layer\.(\d+)\."
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(pattern, k)))
    for i in range(depth):
        src = f"layers.{i}." if v5 else f"encoder.layer.{i}."
        for hf, timm_name in (_HF5 if v5 else _HF4).items():
            for p in ("weight", "bias"):
                out[f"blocks.{i}.{timm_name}.{p}"] = sd[f"{src}{hf}.{p}"]
        names = ("q_proj", "k_proj", "v_proj") if v5 else ("query", "key", "value")
        att = "attention." if v5 else "attention.attention."
        for p in ("weight", "bias"):
            if f"{src}{att}{names[0]}.{p}" in sd:
                qkv = [sd[f"{src}{att}{n}.{p}"] for n in names]
                out[f"blocks.{i}.attn.qkv.{p}"] = torch.cat(qkv)  # (3D, D) / (3D,)
    for ours, theirs in (("head_norm", "classifier.layernorm"), ("head", "classifier.dense")):
        for p in ("weight", "bias"):
            if f"{theirs}.{p}" in sd:
                out[f"{ours}.{p}"] = sd[f"{theirs}.{p}"]
    return out


def _from_original(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    out = {k.removeprefix("v."): v for k, v in sd.items() if k.startswith("v.")}
    out = {k: v for k, v in out.items() if not k.startswith(("head", "pre_logits"))}  # DeiT's
    for ours, theirs in (("head_norm", "mlp_head.0"), ("head", "mlp_head.1")):
        for p in ("weight", "bias"):
            if f"{theirs}.{p}" in sd:
                out[f"{ours}.{p}"] = sd[f"{theirs}.{p}"]
    return out


def _load_torch(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    sd = torch_load(path)  # never unpickles code
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    return sd


def load_ast(
    source: str | Path,
    *,
    mel_bins: int = 128,
    max_length: int = 1024,
    stride: int = 10,
    num_heads: int | None = None,
) -> ASTWeights:
    """Read AST weights from an HF folder / file or an original AST ``.pth``.

    Args:
        source: an HF model folder (``config.json`` + weights), an HF weights file beside its
            ``config.json``, or an original AST checkpoint.
        mel_bins: F of an original checkpoint (HF folders state it in ``config.json``).
        max_length: T_a of an original checkpoint, if it fits its patch count (AST: 1024).
        stride: patch stride of an original checkpoint (AST: 10 on both axes).
        num_heads: heads of an original checkpoint; default width / 64 (DeiT's head size).

    Raises:
        FileNotFoundError: nothing there.
        ValueError: not an AST checkpoint, or an unsupported variant.
    """
    path = _weights_file(source)
    try:
        raw = _load_torch(path)
    except (OSError, RuntimeError, ValueError, pickle.UnpicklingError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: cannot read AST weights ({first})") from None
    try:
        if any("embeddings.distillation_token" in k for k in raw):
            ast = _hf_weights(raw, path.parent / "config.json")
        elif any(k.removeprefix("module.").startswith("v.dist_token") for k in raw):
            ast = _original_weights(raw, mel_bins, max_length, stride, num_heads)
        else:
            raise ValueError("neither HF AST (embeddings.distillation_token) nor original AST "
                             "(module.v.dist_token) keys found")  # fmt: skip
    except KeyError as e:
        raise ValueError(f"{path}: AST checkpoint lacks {e}") from None
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    rows, f, t = ast.sd["pos_embed"].shape[1], ast.freq_grid, ast.time_grid
    if rows != 2 + f * t:
        raise ValueError(f"{path}: pos_embed has {rows} rows, expected 2 + {f}x{t}")
    return ast


def _weights_file(source: str | Path) -> Path:
    """The weights file of an HF folder (its first of :data:`_HF_WEIGHTS`), or ``source``."""
    path = Path(source).expanduser()
    if path.is_dir():
        files = [path / n for n in _HF_WEIGHTS if (path / n).is_file()]
        if not files:
            raise FileNotFoundError(f"{path}: no {' or '.join(_HF_WEIGHTS)} in this folder")
        path = files[0]
    if not path.is_file():
        raise FileNotFoundError(f"{source}: no such AST checkpoint")
    return path


def _hf_weights(raw: dict[str, torch.Tensor], config_path: Path) -> ASTWeights:
    """Transformers AST weights; the geometry comes from the ``config.json`` beside them."""
    if not config_path.is_file():
        raise ValueError(f"Hugging Face AST weights need {config_path}")
    hf: dict[str, Any] = json.loads(config_path.read_text())
    if hf.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"hidden_act {hf['hidden_act']!r}: only exact GELU is supported")
    if hf.get("frequency_stride", 10) != hf.get("time_stride", 10):
        raise ValueError("different frequency and time strides are not supported")
    sd = _from_hf(raw)
    mel_bins, length = hf.get("num_mel_bins", 128), hf.get("max_length", 1024)
    stride = hf.get("time_stride", 10)
    k = sd["patch_embed.proj.weight"].shape[-1]
    f = (mel_bins - k) // stride + 1
    t = (length - k) // stride + 1
    return ASTWeights(sd, f, t, stride, hf["num_attention_heads"], mel_bins, length)


def _original_weights(
    raw: dict[str, torch.Tensor],
    mel_bins: int,
    max_length: int,
    stride: int,
    num_heads: int | None,
) -> ASTWeights:
    """An original AST ``.pth``: the patch count along time is read from ``pos_embed``."""
    sd = _from_original(raw)
    k = sd["patch_embed.proj.weight"].shape[-1]
    f = (mel_bins - k) // stride + 1
    n = sd["pos_embed"].shape[1] - 2  # CLS and distillation token first
    if n % f:
        raise ValueError(
            f"pos_embed: {n} positions do not fit {f} frequency patches "
            f"(mel_bins={mel_bins}, stride={stride})"
        )
    t = n // f
    # The weights fix only the patch count; prefer the caller's length if it fits.
    fits = (max_length - k) // stride + 1 == t
    length = max_length if fits else (t - 1) * stride + k
    heads = num_heads or max(sd["cls_token"].shape[-1] // 64, 1)
    return ASTWeights(sd, f, t, stride, heads, mel_bins, length)


# ---------------------------------------------------------------------------------------------
# Geometry


def fit_axis(grid: torch.Tensor, axis: int, size: int) -> torch.Tensor:
    """AST's rule on one axis of a (1, D, a, b) grid: cut from the middle or resize bilinearly."""
    old = grid.shape[axis]
    if size <= old:
        start = old // 2 - size // 2
        return grid.narrow(axis, start, size)
    new = list(grid.shape[2:])
    new[axis - 2] = size
    return F.interpolate(grid, size=tuple(new), mode="bilinear", align_corners=False)


def audio_pos_grid(ast: ASTWeights, grid: tuple[int, int]) -> torch.Tensor:
    """AST's (f, t) frequency-major positions -> this model's (t, f) time-major table.

    Returns:
        (1, t_new * f_new, D) for ``grid = (t_new, f_new)``.
    """
    d = ast.width
    pos = ast.sd["pos_embed"][:, 2:]  # (1, f * t, D)
    g = pos.reshape(1, ast.freq_grid, ast.time_grid, d).permute(0, 3, 2, 1)  # (1, D, t, f)
    g = fit_axis(fit_axis(g.float(), 2, grid[0]), 3, grid[1])  # (1, D, t_new, f_new)
    return g.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], d)  # (1, N_a, D)


def audio_stream_tensors(
    ast: ASTWeights, cfg: ModelConfig, num_prefix: int
) -> dict[str, torch.Tensor]:
    """The audio embedding's tensors (``embed.audio.*``) for a model configured by ``cfg``."""
    if cfg.audio_patch_size != ast.patch_size:
        raise ValueError(
            f"model.audio_patch_size {cfg.audio_patch_size} != the AST kernel {ast.patch_size}"
        )
    sd = ast.sd
    out = {
        # (D, 1, k_F, k_T) over AST's (F, T) image -> (D, 1, k_T, k_F) over our (T, F) image.
        "embed.audio.proj.weight": sd["patch_embed.proj.weight"].transpose(-1, -2),
        "embed.audio.proj.bias": sd["patch_embed.proj.bias"],
        "embed.audio.pos_grid": audio_pos_grid(ast, cfg.audio_grid),
    }
    if num_prefix:
        tokens = torch.cat([sd["cls_token"], sd["dist_token"]], dim=1)  # (1, 2, D)
        out["embed.audio.prefix.cls_token"] = tokens[:, :num_prefix]
        out["embed.audio.prefix.pos"] = sd["pos_embed"][:, :num_prefix]
    return out


# ---------------------------------------------------------------------------------------------
# Public entry points


def _check_fits(model, ast: ASTWeights) -> None:
    cfg = model.cfg
    if (cfg.width, cfg.depth) != (ast.width, ast.depth):
        raise ValueError(
            f"AST is width {ast.width} x depth {ast.depth}; the model is {cfg.width} x {cfg.depth}"
        )
    if "audio" not in cfg.modalities:
        raise ValueError("the model has no audio stream")


def init_audio_from_ast(
    model, source: str | Path | ASTWeights, *, final_norm: bool = True, **load_kwargs: Any
) -> list[str]:
    """Initialise the audio stream of an MBT (and the shared final norm) from AST weights.

    The positional grid is fitted to the model's audio grid (cut from the middle or resized);
    a model with one audio prefix token takes AST's CLS only. With ``fusion="shared"`` the
    blocks are shared with the video stream and receive the AST blocks too.

    Args:
        model: an :class:`mbt.model.MBT` with an audio stream of AST's width and depth.
        source: an AST checkpoint (see :func:`load_ast`) or loaded :class:`ASTWeights`.
        final_norm: also copy AST's final LayerNorm into the model's shared final norm (False
            keeps the norm the video stream was initialised with).
        **load_kwargs: passed to :func:`load_ast`.

    Returns:
        The model's parameter names that were not initialised (video stream, bottlenecks,
        head, ...).
    """
    ast = source if isinstance(source, ASTWeights) else load_ast(source, **load_kwargs)
    _check_fits(model, ast)
    prefix = model.embed["audio"].prefix.num_prefix
    values = audio_stream_tensors(ast, model.cfg, prefix)
    if final_norm:
        values["norm.weight"], values["norm.bias"] = ast.sd["norm.weight"], ast.sd["norm.bias"]
    params = dict(model.named_parameters())
    for i, layer in enumerate(model.layers):
        for name, _ in layer.named_parameters():
            if name.startswith("blocks.video."):
                continue
            sub = name.removeprefix("blocks.audio.").removeprefix("block.")
            values[f"layers.{i}.{name}"] = ast.sd[f"blocks.{i}.{sub}"]
    with torch.no_grad():
        for name, v in values.items():
            if tuple(params[name].shape) != tuple(v.shape):
                raise ValueError(
                    f"{name}: AST gives {tuple(v.shape)}, the model has {tuple(params[name].shape)}"
                )
            params[name].copy_(v.to(params[name].dtype))
    return sorted(set(params) - set(values))


def config_from_ast(
    ast: ASTWeights, audio_frames: int | None = None, num_classes: int | None = None
) -> ModelConfig:
    """An audio-only MBT config that reproduces the AST encoder."""
    mlp = ast.sd["blocks.0.mlp.fc1.weight"].shape[0]
    classes = num_classes or ast.num_classes
    if classes is None:
        raise ValueError("this AST checkpoint has no classifier: pass num_classes")
    return ModelConfig(
        num_classes=classes, modalities=("audio",), width=ast.width, depth=ast.depth,
        num_heads=ast.num_heads, mlp_ratio=mlp / ast.width,
        qkv_bias="blocks.0.attn.qkv.bias" in ast.sd, audio_frames=audio_frames or ast.max_length,
        mel_bins=ast.mel_bins, audio_patch_size=ast.patch_size, audio_patch_stride=ast.stride,
        audio_dist_token=True, classifier="token", fusion_layer=ast.depth,
    )  # fmt: skip


def convert_ast(
    source: str | Path,
    out_dir: str | Path | None = None,
    *,
    audio_frames: int | None = None,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    data: DataConfig | None = None,
    **load_kwargs: Any,
):
    """An audio-only MBT carrying AST's encoder; saved with ``save_pretrained`` if ``out_dir``.

    Args:
        source: an AST checkpoint (see :func:`load_ast`).
        out_dir: where to write the model directory.
        audio_frames: T_a of the converted model (default: the checkpoint's own length);
            the positional grid is cut or resized along time to fit.
        num_classes: size of the (zero-initialised) head; default: the AST classifier's.
        class_names: optional output names, stored in ``config.json``.
        data: optional preprocessing to store with the weights (e.g. ``multi_label=True``).
        **load_kwargs: passed to :func:`load_ast`.

    Returns:
        The model in eval mode; its pooled audio feature equals AST's pooled output.
    """
    ast = load_ast(source, **load_kwargs)
    cfg = config_from_ast(ast, audio_frames, num_classes)
    model = MBT(cfg)
    missing = init_audio_from_ast(model, ast)
    assert set(missing) <= {"head.weight", "head.bias"}, missing
    model.class_names = class_names
    model.eval()
    if out_dir is not None:
        info = {"converted_from": str(source), "format": "ast", "head": "not converted (zeros)"}
        model.save_pretrained(out_dir, data=data, info=info)
    return model


def pooled_audio_features(model, audio: torch.Tensor) -> torch.Tensor:
    """The audio stream's pooled feature (B, D): mean of CLS and distillation token for AST."""
    return model.pool(model.forward_features(audio=audio))["audio"]


__all__ = [
    "ASTWeights", "audio_pos_grid", "config_from_ast", "convert_ast", "fit_axis",
    "init_audio_from_ast", "load_ast", "pooled_audio_features",
]  # fmt: skip
