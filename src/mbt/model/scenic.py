"""Convert official scenic MBT checkpoints (Flax msgpack) to this package's MBT.

The checkpoint is a msgpack file as written by ``flax.serialization`` (REFERENCE.md section 7):
nested maps of arrays, each array a msgpack extension (code 1) whose payload is the msgpack of
``(shape, dtype name, raw C-order bytes)``; arrays over 1 GiB are split into
``{"__msgpack_chunked_array__": True, "shape": {...}, "chunks": {...}}``. It is read here with
``msgpack`` alone (no flax / jax). The parameter tree sits under ``params`` or, for old
``flax.optim`` checkpoints, under ``optimizer/target``; everything else is ignored.

Mapping (flax -> torch), for each stream (``rgb`` names, ``_spectrogram`` suffix for audio)::

    cls / clsspectrogram (1, 1, D)            embed.{m}.prefix.cls_token
    Transformer/posembed_input*/pos_embedding  embed.{m}.prefix.pos + embed.{m}.pos_grid (joint)
    embedding/kernel (t, h, w, 3, D)           embed.video.proj.weight (D, 3, t, h, w)
    embedding_spectrogram/kernel (h, w, 3, D)  embed.audio.proj.weight (D, 1, h, w), summed over
                                               the 3 tiled input channels
    bottleneck (1, B + 1, D)                   bottleneck (n_bottlenecks = B, extra token)
    encoderblock_{l}[_spectrogram]/...         layers.{l}.blocks.{m}.* (q, k, v fused into qkv)
    Transformer/encoder_norm                   norm
    output_projection                          head

Flax ``nn.gelu`` is the tanh approximation, so converted configs set ``gelu_approximate="tanh"``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import torch

from mbt.config import DataConfig, ModelConfig
from mbt.model.mbt import MBT

_EXT_NDARRAY, _EXT_COMPLEX, _EXT_SCALAR = 1, 2, 3  # flax's msgpack extension codes
_CHUNKED = "__msgpack_chunked_array__"
# Sub-module names of one encoder block: current flax numbers per type, old flax globally.
_BLOCK_NAMES = {
    "new": ("LayerNorm_0", "MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0"),
    "old": ("LayerNorm_0", "MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3"),
}
_STREAM = {"video": "", "audio": "_spectrogram"}  # flax name suffix of each stream


# ---------------------------------------------------------------------------------------------
# Reading the flax msgpack format


def _dtype(name: str) -> tuple[np.dtype, str | None]:
    """numpy dtype to read the bytes with, and the torch dtype to view them as (bfloat16)."""
    if name == "bfloat16":  # not a numpy dtype: read the raw 16-bit words, view through torch
        return np.dtype(np.uint16), "bfloat16"
    return np.dtype(name), None


def _array(shape: Any, dtype_name: str, buffer: bytes) -> np.ndarray:
    dtype, special = _dtype(dtype_name)
    arr = np.frombuffer(buffer, dtype=dtype).reshape(tuple(shape))
    if special == "bfloat16":
        arr = torch.from_numpy(arr.copy()).view(torch.bfloat16).float().numpy()
    return arr


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _EXT_NDARRAY:
        shape, dtype_name, buffer = msgpack.unpackb(data, raw=False)
        return _array(shape, dtype_name, buffer)
    if code == _EXT_COMPLEX:
        real, imag = msgpack.unpackb(data, raw=False)
        return complex(real, imag)
    if code == _EXT_SCALAR:
        dtype_name, buffer = msgpack.unpackb(data, raw=False)
        return _array((), dtype_name, buffer)[()]
    return msgpack.ExtType(code, data)


def _unchunk(tree: Any) -> Any:
    if not isinstance(tree, dict):
        return tree
    if tree.get(_CHUNKED):
        shape = tuple(int(tree["shape"][str(i)]) for i in range(len(tree["shape"])))
        chunks = [tree["chunks"][str(i)] for i in range(len(tree["chunks"]))]
        return np.concatenate(chunks).reshape(shape)
    return {k: _unchunk(v) for k, v in tree.items()}


def read_flax_msgpack(path: str | Path) -> dict[str, Any]:
    """A flax-serialised msgpack file as nested dicts of numpy arrays (bfloat16 -> float32)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            tree = msgpack.unpackb(
                f.read(), ext_hook=_ext_hook, raw=False, strict_map_key=False, max_bin_len=2**31
            )
    except (OSError, ValueError, msgpack.ExtraData, msgpack.FormatError) as e:
        raise ValueError(f"{path}: not a flax msgpack checkpoint ({e})") from None
    if not isinstance(tree, dict):
        raise ValueError(f"{path}: expected a map at the top level, got {type(tree).__name__}")
    return _unchunk(tree)


def flatten_tree(tree: dict[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """``{"a": {"b": x}}`` -> ``{"a/b": x}``; only array leaves are kept."""
    out: dict[str, np.ndarray] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_tree(v, key + "/"))
        elif isinstance(v, np.ndarray):
            out[key] = v
    return out


def find_params(tree: dict[str, Any]) -> dict[str, np.ndarray]:
    """The flattened parameter tree of a scenic checkpoint (``params`` or ``optimizer/target``).

    Raises:
        ValueError: neither root is present.
    """
    if isinstance(tree.get("params"), dict):
        params = tree["params"]
    elif isinstance(tree.get("optimizer"), dict) and isinstance(
        tree["optimizer"].get("target"), dict
    ):
        params = tree["optimizer"]["target"]
    else:
        raise ValueError(
            f"no parameter tree under 'params' or 'optimizer/target' (top-level keys: "
            f"{sorted(tree)})"
        )
    if set(params) == {"params"}:  # a variables dict {"params": ...} stored as the params
        params = params["params"]
    return flatten_tree(params)


# ---------------------------------------------------------------------------------------------
# Architecture from shapes


def _block_scheme(params: dict[str, np.ndarray], block: str) -> tuple[str, str, str, str]:
    for names in _BLOCK_NAMES.values():
        if f"{block}/{names[1]}/query/kernel" in params:
            return names
    raise ValueError(f"{block}: no MultiHeadDotProductAttention_0 or _1 query kernel found")


def infer_config(
    params: dict[str, np.ndarray],
    *,
    fusion_layer: int,
    num_classes: int | None = None,
    audio_frames: int = 800,
    mel_bins: int = 128,
    image_size: int = 224,
) -> ModelConfig:
    """The ModelConfig of a scenic MBT parameter tree (flattened with ``/``).

    Width, depth, heads, MLP size, patch and tubelet sizes, the video frame count, classifier,
    fusion regime, bottleneck count and class count are read from the tensor shapes. What the
    weights cannot tell is an argument: the fusion layer, the spectrogram size (its positional
    table only holds the product of the time and frequency patch counts) and the image size.

    Raises:
        ValueError: the shapes contradict the arguments or each other.
    """
    modalities = _modalities(params)
    ref = "video" if "video" in modalities else "audio"
    encoder = _encoder_shape(params, _STREAM[ref])
    classifier = "token" if "cls" in params else "gap"
    n_prefix = 1 if classifier == "token" else 0
    fusion = _fusion(params, modalities, encoder["depth"], fusion_layer, classifier)
    kw: dict[str, Any] = {**encoder, **fusion}
    if "video" in modalities:
        kw.update(_video_geometry(params, image_size, n_prefix))
    if "audio" in modalities:
        kw.update(_audio_geometry(params, audio_frames, mel_bins, n_prefix))
    return ModelConfig(
        num_classes=_num_classes(params, num_classes), modalities=modalities,
        gelu_approximate="tanh", fusion_layer=min(fusion_layer, encoder["depth"]),
        bottleneck_extra_token=True, classifier=classifier, **kw,
    )  # fmt: skip


def _modalities(params: dict[str, np.ndarray]) -> tuple[str, ...]:
    """The streams present: rgb (``embedding``) and / or spectrogram."""
    modalities = tuple(
        m for m, k in (("video", "embedding/kernel"), ("audio", "embedding_spectrogram/kernel"))
        if k in params
    )  # fmt: skip
    if not modalities:
        raise ValueError(
            "neither 'embedding/kernel' (rgb) nor 'embedding_spectrogram/kernel' found"
        )
    return modalities


def _encoder_shape(params: dict[str, np.ndarray], suffix: str) -> dict[str, Any]:
    """Depth, width, heads, MLP ratio and qkv bias of one stream's encoder blocks."""
    depth = 1 + max(
        (int(m.group(1)) for k in params if (m := re.match(rf"Transformer/encoderblock_(\d+){suffix}/", k))),
        default=-1,
    )  # fmt: skip
    if depth == 0:
        raise ValueError(f"no Transformer/encoderblock_<l>{suffix} blocks found")
    block = f"Transformer/encoderblock_0{suffix}"
    _, attn, _, mlp = _block_scheme(params, block)
    width, heads, _ = params[f"{block}/{attn}/query/kernel"].shape  # (D, heads, head_dim)
    mlp_dim = params[f"{block}/{mlp}/Dense_0/kernel"].shape[1]
    if int(width * (mlp_dim / width)) != mlp_dim:
        raise ValueError(f"MLP size {mlp_dim} is not representable as a ratio of width {width}")
    return dict(
        depth=depth, width=width, num_heads=heads, mlp_ratio=mlp_dim / width,
        qkv_bias=f"{block}/{attn}/query/bias" in params,
    )  # fmt: skip


def _fusion(
    params: dict[str, np.ndarray],
    modalities: tuple[str, ...],
    depth: int,
    fusion_layer: int,
    classifier: str,
) -> dict[str, Any]:
    """The fusion regime and bottleneck count."""
    # One block per layer for both streams = the official shared encoder (share_encoder=True).
    shared = len(modalities) == 2 and not any(
        k.startswith("Transformer/encoderblock_0_spectrogram/") for k in params
    )
    if "bottleneck" in params:
        if shared:
            raise ValueError("bottleneck fusion with a shared encoder is not supported")
        fusion, n_tokens = "bottleneck", params["bottleneck"].shape[1]
    else:
        fusion, n_tokens = ("shared" if shared else "vanilla"), 0
    if len(modalities) == 2 and fusion == "vanilla" and fusion_layer >= depth:
        fusion = "late"
    extra = classifier == "token" and fusion == "bottleneck"  # official +1 with the token head
    return dict(fusion=fusion, n_bottlenecks=max(n_tokens - int(extra), 0))


def _num_classes(params: dict[str, np.ndarray], num_classes: int | None) -> int:
    if "output_projection/kernel" not in params:
        raise ValueError("no output_projection/kernel (classification head) found")
    classes = params["output_projection/kernel"].shape[1]
    if num_classes is not None and num_classes != classes:
        raise ValueError(f"--num-classes {num_classes}: the checkpoint's head has {classes}")
    return classes


def _video_geometry(params: dict[str, np.ndarray], image_size: int, n_prefix: int) -> dict:
    """Patch and tubelet size, frame count (from the positional table) of the rgb stream."""
    kernel = params["embedding/kernel"]  # (t, h, w, 3, D) 3-D conv, or (h, w, 3, D) 2-D
    t, ph, pw = kernel.shape[:3] if kernel.ndim == 5 else (1, *kernel.shape[:2])
    if ph != pw:
        raise ValueError(f"embedding/kernel: non-square patches {ph}x{pw} are not supported")
    if image_size % ph:
        raise ValueError(f"--image-size {image_size} is not a multiple of the patch size {ph}")
    n_grid = params["Transformer/posembed_input/pos_embedding"].shape[1] - n_prefix
    per_frame = (image_size // ph) ** 2
    if n_grid % per_frame:
        raise ValueError(
            f"posembed_input: {n_grid} video positions are not a multiple of the "
            f"{per_frame} patches of a {image_size} px frame (check --image-size)"
        )
    return dict(
        image_size=image_size, patch_size=ph, tubelet_size=t,
        num_frames=n_grid // per_frame * t, video_pos_embed="joint",
    )  # fmt: skip


def _audio_geometry(
    params: dict[str, np.ndarray], audio_frames: int, mel_bins: int, n_prefix: int
) -> dict:
    """Patch size of the spectrogram stream, checked against the given spectrogram size."""
    kernel = params["embedding_spectrogram/kernel"]  # (h, w, 3, D): time x freq patches
    ph, pw = kernel.shape[:2]
    if ph != pw:
        raise ValueError(f"embedding_spectrogram/kernel: non-square patches {ph}x{pw}")
    n_grid = params["Transformer/posembed_input_spectrogram/pos_embedding"].shape[1] - n_prefix
    grid = (audio_frames // ph, mel_bins // ph)
    if grid[0] * grid[1] != n_grid:
        raise ValueError(
            f"posembed_input_spectrogram: the checkpoint has {n_grid} spectrogram positions, "
            f"but --audio-frames {audio_frames} x --mel-bins {mel_bins} with {ph}x{ph} patches "
            f"give {grid[0]}x{grid[1]} = {grid[0] * grid[1]}; pass the spectrogram size the "
            "checkpoint was trained with (released AudioSet models: 800 x 128)"
        )
    return dict(
        audio_frames=audio_frames, mel_bins=mel_bins, audio_patch_size=ph, audio_patch_stride=ph
    )


# ---------------------------------------------------------------------------------------------
# Tensor mapping


class _Params:
    """The flat flax params; every key taken is recorded so leftovers can be reported."""

    def __init__(self, flat: dict[str, np.ndarray]) -> None:
        self.flat, self.used = flat, set()

    def __contains__(self, key: str) -> bool:
        return key in self.flat

    def take(self, key: str) -> torch.Tensor:
        if key not in self.flat:
            raise ValueError(f"{key}: missing from the checkpoint")
        self.used.add(key)
        return torch.from_numpy(np.array(self.flat[key], dtype=np.float32))  # a writable copy

    def unused(self) -> list[str]:
        return sorted(set(self.flat) - self.used)


def _block_tensors(p: _Params, block: str, heads_dim: int) -> dict[str, torch.Tensor]:
    """One flax encoder block -> timm ``Block`` state-dict entries."""
    ln1, attn, ln2, mlp = _block_scheme(p.flat, block)
    out = {
        "norm1.weight": p.take(f"{block}/{ln1}/scale"),
        "norm1.bias": p.take(f"{block}/{ln1}/bias"),
        "norm2.weight": p.take(f"{block}/{ln2}/scale"),
        "norm2.bias": p.take(f"{block}/{ln2}/bias"),
    }
    # q, k, v kernels (D, heads, head_dim) -> rows of timm's fused (3D, D) weight, heads-major.
    qkv = [p.take(f"{block}/{attn}/{n}/kernel").flatten(1).T for n in ("query", "key", "value")]
    out["attn.qkv.weight"] = torch.cat(qkv)  # (3D, D)
    if f"{block}/{attn}/query/bias" in p:
        qkv_b = [p.take(f"{block}/{attn}/{n}/bias").flatten() for n in ("query", "key", "value")]
        out["attn.qkv.bias"] = torch.cat(qkv_b)  # (3D,)
    out["attn.proj.weight"] = p.take(f"{block}/{attn}/out/kernel").reshape(heads_dim, -1).T
    out["attn.proj.bias"] = p.take(f"{block}/{attn}/out/bias")
    for i, fc in enumerate(("fc1", "fc2")):
        out[f"mlp.{fc}.weight"] = p.take(f"{block}/{mlp}/Dense_{i}/kernel").T  # (out, in)
        out[f"mlp.{fc}.bias"] = p.take(f"{block}/{mlp}/Dense_{i}/bias")
    return out


def state_dict_from_scenic(
    flat: dict[str, np.ndarray], cfg: ModelConfig
) -> dict[str, torch.Tensor]:
    """Map a flattened scenic parameter tree onto MBT state-dict names.

    Raises:
        ValueError: a tensor is missing, or the checkpoint holds keys nothing maps.
    """
    p = _Params(flat)
    sd: dict[str, torch.Tensor] = {}
    for m in cfg.modalities:
        sd.update(_embed_tensors(p, cfg, m))
    if "bottleneck" in p:
        bottleneck = p.take("bottleneck")  # (1, N_b, D)
        if cfg.fusion_start < cfg.depth:  # unimodal checkpoints carry unused bottlenecks
            sd["bottleneck"] = bottleneck
    sd.update(_layer_tensors(p, cfg))
    sd["norm.weight"] = p.take("Transformer/encoder_norm/scale")
    sd["norm.bias"] = p.take("Transformer/encoder_norm/bias")
    sd["head.weight"] = p.take("output_projection/kernel").T  # (C, D)
    sd["head.bias"] = p.take("output_projection/bias")
    unused = p.unused()
    if unused:
        raise ValueError(
            f"checkpoint keys not understood by the converter ({len(unused)}): "
            f"{', '.join(unused[:20])}{' ...' if len(unused) > 20 else ''}"
        )
    return sd


def _embed_tensors(p: _Params, cfg: ModelConfig, m: str) -> dict[str, torch.Tensor]:
    """Patch kernel, positions and CLS token of stream ``m`` (``embed.{m}.*``)."""
    n_prefix = 1 if cfg.classifier == "token" else 0
    sfx = _STREAM[m]
    pos = p.take(f"Transformer/posembed_input{sfx}/pos_embedding")  # (1, P + N, D)
    sd = {f"embed.{m}.pos_grid": pos[:, n_prefix:]}  # (1, N, D)
    if n_prefix:
        cls = "cls" if len(cfg.modalities) == 1 or m == "video" else "cls" + sfx[1:]
        sd[f"embed.{m}.prefix.cls_token"] = p.take(cls)  # (1, 1, D)
        sd[f"embed.{m}.prefix.pos"] = pos[:, :n_prefix]  # (1, 1, D)
    if m == "video":
        kernel = p.take("embedding/kernel")
        if kernel.ndim == 4:  # per-frame 2-D patches: (h, w, 3, D) -> one-frame tubelets
            kernel = kernel[None]
        sd["embed.video.proj.weight"] = kernel.permute(4, 3, 0, 1, 2)  # (D, 3, t, h, w)
        sd["embed.video.proj.bias"] = p.take("embedding/bias")
    else:
        kernel = p.take("embedding_spectrogram/kernel")  # (h=time, w=freq, 3, D)
        # The official input tiles the spectrogram to 3 channels: summing the kernel over
        # them gives the same response to our 1-channel input.
        sd["embed.audio.proj.weight"] = kernel.permute(3, 2, 0, 1).sum(1, keepdim=True)
        sd["embed.audio.proj.bias"] = p.take("embedding_spectrogram/bias")
    return sd


def _layer_tensors(p: _Params, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Every encoder block: ``layers.{l}.block.*`` (shared) or ``layers.{l}.blocks.{m}.*``."""
    sd: dict[str, torch.Tensor] = {}
    shared = cfg.fusion == "shared" and len(cfg.modalities) > 1
    for layer in range(cfg.depth):
        if shared:
            block = _block_tensors(p, f"Transformer/encoderblock_{layer}", cfg.width)
            sd.update({f"layers.{layer}.block.{k}": v for k, v in block.items()})
            continue
        for m in cfg.modalities:
            block = _block_tensors(p, f"Transformer/encoderblock_{layer}{_STREAM[m]}", cfg.width)
            sd.update({f"layers.{layer}.blocks.{m}.{k}": v for k, v in block.items()})
    return sd


def convert_scenic(
    checkpoint: str | Path,
    out_dir: str | Path | None = None,
    *,
    fusion_layer: int,
    num_classes: int | None = None,
    audio_frames: int = 800,
    mel_bins: int = 128,
    image_size: int = 224,
    class_names: list[str] | None = None,
    data: DataConfig | None = None,
):
    """Read a scenic MBT checkpoint, build the matching :class:`~mbt.model.MBT`, load it.

    Args:
        checkpoint: the msgpack file (e.g. ``checkpoint_<step>``).
        out_dir: if given, the converted model is written there with ``save_pretrained``.
        fusion_layer: the training config's ``model.fusion_layer`` (not in the weights).
        num_classes: checked against the head when given; ``None`` reads it from the head.
        audio_frames: spectrogram frames T_a the checkpoint was trained with.
        mel_bins: mel bins F the checkpoint was trained with.
        image_size: frame side the checkpoint was trained with.
        class_names: optional names of the outputs, stored in ``config.json``.
        data: optional preprocessing to store with the weights (e.g. ``multi_label=True`` for
            AudioSet: sigmoid scores).

    Returns:
        The converted model in eval mode.
    """
    flat = find_params(read_flax_msgpack(checkpoint))
    try:
        cfg = infer_config(
            flat, fusion_layer=fusion_layer, num_classes=num_classes,
            audio_frames=audio_frames, mel_bins=mel_bins, image_size=image_size,
        )  # fmt: skip
        sd = state_dict_from_scenic(flat, cfg)
    except ValueError as e:
        raise ValueError(f"{checkpoint}: {e}") from None
    model = MBT(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    assert not missing, f"converter left model tensors unset: {missing}"
    for k, v in sd.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise ValueError(
                f"{checkpoint}: {k} has shape {tuple(v.shape)}, the model expects "
                f"{tuple(expected[k].shape)}"
            )
    model.load_state_dict(sd, strict=True)
    model.class_names = class_names
    model.eval()
    if out_dir is not None:
        info = {"converted_from": str(checkpoint), "format": "scenic"}
        model.save_pretrained(out_dir, data=data, info=info)
    return model
