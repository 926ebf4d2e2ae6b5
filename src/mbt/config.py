"""Run configuration: frozen, validated dataclasses, YAML overrides and ``key.sub=value`` overrides.

A run is described by one :class:`RunConfig` holding a :class:`ModelConfig` (what the network
is), a :class:`DataConfig` (what it reads and how) and a :class:`TrainConfig` (how it learns).
Every field has a default; a YAML file holds only the fields it changes, and command-line
``section.field=value`` overrides are applied last. Unknown keys and wrong types are errors,
and each dataclass validates its own ranges at construction (``ValueError`` naming the field).

A YAML file may start from another one: ``base: demo`` (a preset name, or a path relative to the
file) loads that file first and merges this one over it, section by section; chains are allowed,
cycles are errors. The config a run saves is resolved and flat (no ``base``).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from mbt.files import write_atomic

MODALITIES = ("video", "audio")
FUSIONS = ("bottleneck", "vanilla", "shared", "late")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # train.precision / --precision (mbt.runtime)
PRESET_DIR = Path(__file__).parent / "configs"


def _check(cond: bool, name: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"{name}: {msg}")


def _check_choice(value: Any, name: str, choices: tuple) -> None:
    _check(value in choices, name, f"must be one of {list(choices)}, got {value!r}")


def _check_finite(cfg: Any, section: str) -> None:
    """Every float field (and float in a tuple field) is a finite number: ``inf`` passes a
    ``> 0`` check (``train.lr=.inf`` would fail only at the first step) and NaN fails every
    comparison with a misleading range message. No field here has a use for either."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"{section}.{f.name}: must be a finite number, got {value!r}")


@dataclass(frozen=True)
class ModelConfig:
    """The MBT network (REFERENCE.md sections 1-3). Defaults are the paper's MBT-B/16."""

    num_classes: int = 10  # size of the linear head
    modalities: tuple[str, ...] = ("video", "audio")  # one entry = unimodal baseline
    # Transformer (ViT-B/16 defaults), the same for both streams.
    width: int = 768  # D
    depth: int = 12  # number of layers per stream
    num_heads: int = 12
    mlp_ratio: float = 4.0  # MLP hidden = 3072 for ViT-B
    qkv_bias: bool = True
    drop_path_rate: float = 0.0  # stochastic depth at the last layer, linear from 0 (paper: 0.3)
    dropout: float = 0.0  # dropout after attention / MLP projections
    attn_dropout: float = 0.0
    gelu_approximate: Literal["none", "tanh"] = "none"  # timm: exact erf; Flax/scenic: "tanh"
    # Video tokens: frames (B, T, 3, H, W) -> tubelets t x p x p.
    image_size: int = 224
    patch_size: int = 16
    num_frames: int = 8  # T: the paper samples 8 frames spread over the clip
    tubelet_size: int = 1  # t: 1 = per-frame 2-D patches (paper); 2 = official MBT-B/16x2
    tubelet_init: Literal["central", "average"] = "central"  # 2-D kernel -> 3-D (official: central)
    video_pos_embed: Literal["separable", "joint"] = "separable"  # spatial + temporal, or one table
    # Audio tokens: log-mel (B, T_a, F), time first as in AST's input convention.
    audio_frames: int = 800  # T_a: 8 s at a 10 ms hop
    mel_bins: int = 128  # F
    audio_patch_size: int = 16
    audio_patch_stride: int = 16  # 16 = non-overlapping (MBT); 10 = overlapping (AST)
    audio_dist_token: bool = False  # AST's DeiT distillation token; pooled = mean(cls, dist)
    # Fusion (section 1).
    fusion: Literal["bottleneck", "vanilla", "shared", "late"] = "bottleneck"
    fusion_layer: int = 8  # Lf: layers >= Lf exchange information; Lf == depth is late fusion
    n_bottlenecks: int = 4  # N_b shared tokens in bottleneck fusion (paper: 4)
    bottleneck_extra_token: bool = (
        True  # official code adds one bottleneck with the token classifier
    )
    classifier: Literal["token", "gap"] = "token"  # shared head on each CLS, or mean of all tokens
    test_with_bottlenecks: bool = True  # official switch: False turns fusion off at inference
    # Initialisation: "" (random), a timm model name, or a local ViT checkpoint file.
    init: str = ""
    # Audio stream from AST, applied after ``init``: "" (none), an HF AST folder or weights
    # file, an original AST .pth, or a Hub id (org/name). See mbt.model.inits.
    audio_init: str = ""
    # Warm start, applied last: "" (none) or an mbt run, checkpoint or model folder. Every
    # weight whose name and shape match is copied, except the classifier head (new classes);
    # a run directory gives its ``last`` checkpoint (the weights training ended with).
    warm_start: str = ""

    def __post_init__(self) -> None:
        _check_finite(self, "model")
        _check(self.num_classes >= 1, "model.num_classes", "must be >= 1")
        _check(len(self.modalities) >= 1, "model.modalities", "needs at least one modality")
        _check(
            len(set(self.modalities)) == len(self.modalities)
            and all(m in MODALITIES for m in self.modalities),
            "model.modalities",
            f"must be distinct entries of {list(MODALITIES)}, got {list(self.modalities)}",
        )
        _check(self.width >= 1 and self.depth >= 1, "model.width/depth", "must be >= 1")
        _check(self.num_heads >= 1, "model.num_heads", "must be >= 1")
        _check(
            self.width % self.num_heads == 0,
            "model.num_heads",
            f"must divide width {self.width}, got {self.num_heads}",
        )
        _check(self.mlp_ratio > 0, "model.mlp_ratio", "must be > 0")
        for name in ("drop_path_rate", "dropout", "attn_dropout"):
            v = getattr(self, name)
            _check(0.0 <= v < 1.0, f"model.{name}", f"must be in [0, 1), got {v}")
        _check_choice(self.gelu_approximate, "model.gelu_approximate", ("none", "tanh"))
        _check(self.patch_size >= 1, "model.patch_size", "must be >= 1")
        _check(
            self.image_size % self.patch_size == 0,
            "model.image_size",
            f"must be a multiple of patch_size {self.patch_size}, got {self.image_size}",
        )
        _check(self.num_frames >= 1, "model.num_frames", "must be >= 1")
        _check(
            self.tubelet_size >= 1 and self.num_frames % self.tubelet_size == 0,
            "model.tubelet_size",
            f"must be >= 1 and divide num_frames {self.num_frames}, got {self.tubelet_size}",
        )
        _check_choice(self.tubelet_init, "model.tubelet_init", ("central", "average"))
        _check_choice(self.video_pos_embed, "model.video_pos_embed", ("separable", "joint"))
        _check(
            1 <= self.audio_patch_stride <= self.audio_patch_size,
            "model.audio_patch_stride",
            f"must be in [1, audio_patch_size={self.audio_patch_size}], got {self.audio_patch_stride}",
        )
        _check(
            self.audio_frames >= self.audio_patch_size and self.mel_bins >= self.audio_patch_size,
            "model.audio_frames/mel_bins",
            f"must be >= audio_patch_size {self.audio_patch_size}",
        )
        _check_choice(self.fusion, "model.fusion", FUSIONS)
        _check(
            0 <= self.fusion_layer <= self.depth,
            "model.fusion_layer",
            f"must be in [0, depth={self.depth}], got {self.fusion_layer}",
        )
        _check(self.n_bottlenecks >= 0, "model.n_bottlenecks", "must be >= 0")
        _check_choice(self.classifier, "model.classifier", ("token", "gap"))

    @property
    def fusion_start(self) -> int:
        """First layer that exchanges information; ``depth`` means none (late fusion)."""
        if self.fusion == "late" or len(self.modalities) == 1:
            return self.depth
        return self.fusion_layer

    @property
    def num_bottleneck_tokens(self) -> int:
        """Bottleneck tokens actually built: N_b, plus one with the token classifier (official)."""
        extra = self.classifier == "token" and self.bottleneck_extra_token
        return self.n_bottlenecks + int(extra)

    @property
    def video_grid(self) -> tuple[int, int, int]:
        """(T', H', W') tubelet grid of the video tokens."""
        g = self.image_size // self.patch_size
        return (self.num_frames // self.tubelet_size, g, g)

    @property
    def audio_grid(self) -> tuple[int, int]:
        """(time, freq) patch grid of the audio tokens."""
        p, s = self.audio_patch_size, self.audio_patch_stride
        return ((self.audio_frames - p) // s + 1, (self.mel_bins - p) // s + 1)


@dataclass(frozen=True)
class DataConfig:
    """Where clips come from and how they become tensors."""

    root: str = ""  # data set folder (or set with --data)
    layout: Literal["auto", "pjzuf", "ucf101", "csv"] = "auto"
    manifest: str = ""  # CSV manifest for layout=csv (relative to root unless absolute)
    cache: str = ""  # folder written by `mbt prepare`; read instead of decoding media
    split: int = 1  # UCF101 official split 1..3
    val_fraction: float = 0.2  # held-out fraction when the data set defines no split
    split_seed: int = 0  # seed of that split (group-aware on UCF101)
    multi_label: bool = False  # AudioSet-style targets (sigmoid BCE, mAP)
    missing_audio: Literal["skip", "silence", "error"] = "skip"  # clips without any audio
    # Truncated files (the header promises more than decodes) when sampling reaches the missing
    # part: skip the clip (logged, counted as failed), stop with an error, or pad (last frame,
    # silence; logged). A file merely shorter than the audio window is zero-padded, as AST does.
    on_short: Literal["pad", "skip", "error"] = "skip"
    require_audio: bool = False  # UCF101: keep only clips with an audio track, remap classes
    # Temporal sampling.
    sampling: Literal["uniform", "window"] = "uniform"  # uniform over the clip (paper) or a window
    frame_stride: int = 2  # window sampling: take every k-th frame (official: 2)
    test_clips: int = 4  # K evenly spaced temporal views at evaluation (official: 4)
    test_crops: int = 1  # spatial crops per view at evaluation (1 = centre)
    # Pixels.
    normalization: Literal["inception", "imagenet"] = (
        "inception"  # 0.5/0.5 (augreg ViT) or ImageNet
    )
    resize_short: int = 0  # short side before cropping; 0 = image_size * 256 / 224
    # Audio features: AST Kaldi fbank; normalisation (x - mean) / (2 * std), AST AudioSet stats.
    audio_mean: float = -4.2677393
    audio_std: float = 4.5689974
    # Augmentation (training only).
    crop_scale: tuple[float, float] = (0.08, 1.0)  # random resized crop area range
    hflip: bool = True
    freq_masks: int = 1  # SpecAugment
    freq_mask_width: int = 48
    time_masks: int = 4
    time_mask_width: int = 48
    num_workers: int = 2

    def __post_init__(self) -> None:
        _check_finite(self, "data")
        _check_choice(self.layout, "data.layout", ("auto", "pjzuf", "ucf101", "csv"))
        _check(1 <= self.split <= 3, "data.split", f"must be 1, 2 or 3, got {self.split}")
        _check(0.0 < self.val_fraction < 1.0, "data.val_fraction", "must be in (0, 1)")
        _check_choice(self.missing_audio, "data.missing_audio", ("skip", "silence", "error"))
        _check_choice(self.on_short, "data.on_short", ("pad", "skip", "error"))
        _check_choice(self.sampling, "data.sampling", ("uniform", "window"))
        _check(self.frame_stride >= 1, "data.frame_stride", "must be >= 1")
        _check(self.test_clips >= 1, "data.test_clips", "must be >= 1")
        _check(self.test_crops in (1, 3), "data.test_crops", "must be 1 or 3")
        _check_choice(self.normalization, "data.normalization", ("inception", "imagenet"))
        _check(self.resize_short >= 0, "data.resize_short", "must be >= 0")
        _check(self.audio_std > 0, "data.audio_std", "must be > 0")
        lo, hi = self.crop_scale
        _check(
            0.0 < lo <= hi <= 1.0,
            "data.crop_scale",
            f"need 0 < lo <= hi <= 1, got {self.crop_scale}",
        )
        for name in (
            "freq_masks",
            "freq_mask_width",
            "time_masks",
            "time_mask_width",
            "num_workers",
        ):
            _check(getattr(self, name) >= 0, f"data.{name}", "must be >= 0")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation. Defaults are the seed's recipe (Adam 1e-4, early stopping)."""

    epochs: int = 30
    batch_size: int = 8
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-4
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0  # applied to weights only, never to norms, biases or tokens
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_epochs: float = 0.0  # linear warm-up (official: 2.5)
    grad_clip: float = 0.0  # max global grad norm; 0 = off (official: 1)
    label_smoothing: float = 0.0  # official: 0.3
    mixup_alpha: float = 0.0  # one lambda for both modalities; 0 = off (official: 0.5)
    per_modality_loss: bool = (
        True  # official: mean of per-modality losses; False: loss on mean logits
    )
    modality_dropout: float = 0.0  # fraction of training clips that lose one modality
    # Early stopping (training/stopping.py): stop after `early_stopping` epochs (0 = off) in
    # which no watched number improved; epochs inside the lr warm-up are not counted.
    early_stopping: int = 5
    # both: the metric and val_loss (an improvement of either resets the count); metric; loss
    early_stopping_watch: Literal["both", "metric", "loss"] = "both"
    early_stopping_min_delta: float = 0.0  # the metric must rise by more than this (0.01 = 1 pt)
    early_stopping_loss_min_delta: float = 0.0  # val_loss must fall by more than this
    metric: Literal["auto", "accuracy", "map"] = "auto"  # auto: mAP if multi-label else accuracy
    # autocast: auto = bf16 where the device does it natively (GPUs from Ampere on, CPUs with
    # AVX512-BF16 / AMX / Arm BF16), else fp32; fp16 (CUDA only) is never picked by auto.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    grad_accum: int = 1
    compile: bool = False
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:1 ...
    log_every: int = 10  # steps between progress-bar metric refreshes
    threads: int = 0  # CPU threads per process (torch.set_num_threads); 0 = torch's default
    # Parameter-name prefixes kept fixed (e.g. [embed., layers.0.]): each must name a parameter
    freeze: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_finite(self, "train")
        _check(self.epochs >= 1, "train.epochs", "must be >= 1")
        _check(self.batch_size >= 1, "train.batch_size", "must be >= 1")
        _check_choice(self.optimizer, "train.optimizer", ("adam", "adamw", "sgd"))
        _check(self.lr > 0, "train.lr", "must be > 0")
        _check(0.0 <= self.momentum < 1.0, "train.momentum", "must be in [0, 1)")
        _check(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        _check_choice(self.schedule, "train.schedule", ("constant", "cosine"))
        _check(self.warmup_epochs >= 0, "train.warmup_epochs", "must be >= 0")
        _check(self.grad_clip >= 0, "train.grad_clip", "must be >= 0")
        _check(0.0 <= self.label_smoothing < 1.0, "train.label_smoothing", "must be in [0, 1)")
        _check(self.mixup_alpha >= 0, "train.mixup_alpha", "must be >= 0")
        _check(0.0 <= self.modality_dropout <= 1.0, "train.modality_dropout", "must be in [0, 1]")
        _check(self.early_stopping >= 0, "train.early_stopping", "must be >= 0")
        _check_choice(
            self.early_stopping_watch, "train.early_stopping_watch", ("both", "metric", "loss")
        )
        delta = self.early_stopping_min_delta  # accuracy and mAP are fractions
        _check(
            0.0 <= delta < 1.0, "train.early_stopping_min_delta", f"must be in [0, 1), got {delta}"
        )
        _check(
            self.early_stopping_loss_min_delta >= 0, "train.early_stopping_loss_min_delta",
            "must be >= 0",
        )  # fmt: skip
        _check_choice(self.metric, "train.metric", ("auto", "accuracy", "map"))
        _check_choice(self.precision, "train.precision", ("auto", "fp32", "bf16", "fp16"))
        _check(self.grad_accum >= 1, "train.grad_accum", "must be >= 1")
        _check(self.threads >= 0, "train.threads", "must be >= 0")


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs; saved as ``config.yaml`` in the run directory and in checkpoints."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ---------------------------------------------------------------------------------------------
# dict <-> dataclass, with type checking


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted where lossless."""
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{name}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, prefix=f"{name}.")
    if origin is Literal:
        if value not in get_args(tp):
            raise ValueError(f"{name}: must be one of {list(get_args(tp))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in get_args(tp):
            try:
                return _coerce(value, arg, name)
            except ValueError:
                continue
        raise ValueError(f"{name}: {value!r} does not match {tp}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name}: expected a list, got {type(value).__name__} {value!r}")
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{name}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ValueError(f"{name}: expected {len(args)} items, got {len(value)}")
        return tuple(
            _coerce(v, a, f"{name}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    if tp is type(None):
        if value is not None:
            raise ValueError(f"{name}: expected null, got {value!r}")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{name}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{name}: unsupported annotation {tp}")  # a bug in this module, not user input


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a (possibly partial) nested dict; unknown keys are errors."""
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; "
            f"known keys in {prefix.rstrip('.') or 'the top level'}: {', '.join(sorted(known))}"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples become lists) for YAML and JSON."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(cfg)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_override(text: str) -> dict[str, Any]:
    """``"train.lr=3e-4"`` -> ``{"train": {"lr": 0.0003}}`` (the value is parsed as YAML)."""
    if "=" not in text:
        raise ValueError(f"override {text!r}: expected key.sub=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ValueError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ValueError(f"override {text!r}: value is not valid YAML ({e})") from None
    out: dict[str, Any] = {parts[-1]: value}
    for p in reversed(parts[:-1]):
        out = {p: out}
    return out


def resolve_config_path(name: str | Path, relative_to: Path | None = None) -> Path:
    """A config file path, or the name of a preset shipped in ``mbt/configs`` (``demo``).

    Args:
        name: the path or preset name.
        relative_to: the folder a relative path is relative to (a ``base:`` entry: the folder
            of the file that names it); default the working directory.
    """
    p = Path(name)
    candidate = relative_to / p if relative_to is not None else p  # an absolute p stays itself
    if candidate.is_file():
        return candidate
    preset = PRESET_DIR / (p.name if p.suffix else f"{p.name}.yaml")
    if preset.is_file():
        return preset
    presets = ", ".join(sorted(q.stem for q in PRESET_DIR.glob("*.yaml")))
    raise ValueError(f"{name}: no such config file or preset (presets: {presets})")


def load_yaml(path: str | Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return data


def load_preset(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The YAML file at ``path`` merged over its ``base:`` chain (a nested dict, no ``base``).

    Args:
        path: the file.
        chain: the files that named this one as their base (to refuse cycles).
    """
    chain = (*chain, path.resolve())
    data = load_yaml(path)
    if "base" not in data:
        return data
    base = data.pop("base")
    if not isinstance(base, str) or not base:
        raise ValueError(f"{path}: base must be a preset name or a file path, got {base!r}")
    try:
        base_path = resolve_config_path(base, relative_to=path.parent)
    except ValueError as e:
        raise ValueError(f"{path}: base {e}") from None
    if base_path.resolve() in chain:
        cycle = " -> ".join(p.name for p in (*chain, base_path.resolve()))
        raise ValueError(f"{path}: base cycle {cycle}")
    return _merge(load_preset(base_path, chain), data)


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> RunConfig:
    """Defaults <- YAML file (a path or preset name, with its ``base:`` chain) <- ``key.sub=value``
    overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        data = load_preset(resolve_config_path(path))
    for o in overrides:
        data = _merge(data, parse_override(o))
    return from_dict(RunConfig, data)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write ``cfg`` as YAML, atomically (a kill leaves the old file or the new one)."""
    write_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def replace(cfg: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` that re-validates (frozen dataclasses validate in __post_init__)."""
    return dataclasses.replace(cfg, **changes)
