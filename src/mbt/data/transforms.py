"""Tensor transforms: crops and flips (uint8), pixel normalisation, SpecAugment, mixup.

Everything works on torch tensors. Random transforms take a ``torch.Generator`` (None: torch's
global generator), so a seeded generator reproduces the same augmentation; evaluation
transforms draw nothing.

Shape vocabulary: B batch, T frames, H x W pixels, C = 3 channels, S crop size,
T_a audio frames, F mel bins.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

# The augreg / Inception ViTs (timm's default ViT-B/16, scenic's ImageNet-21k ViT) were trained
# on pixels scaled to [-1, 1]: (x - 0.5) / 0.5. ImageNet statistics are for other backbones.
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS = {
    "inception": (INCEPTION_MEAN, INCEPTION_STD),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
}


def normalize_video(
    x: torch.Tensor, normalization: Literal["inception", "imagenet"] = "inception"
) -> torch.Tensor:
    """uint8 (..., 3, H, W) pixels -> float32 ``(x / 255 - mean) / std`` per channel.

    Items carry uint8 video (a quarter of the bytes to collate and copy); the training step,
    evaluation and :func:`mbt.data.clip.clip_inputs_from_file` call this on the device. Black
    is exactly -1 and white exactly +1 with ``"inception"`` (the ops run in this order so the
    ends are exact).
    """
    if x.dtype != torch.uint8:
        raise ValueError(f"expected uint8 video, got {x.dtype} (already normalised?)")
    if normalization not in NORMALIZATIONS:
        raise ValueError(
            f"normalization must be one of {list(NORMALIZATIONS)}, got {normalization!r}"
        )
    mean, std = NORMALIZATIONS[normalization]
    m = torch.tensor(mean, device=x.device)[:, None, None]  # (3, 1, 1)
    s = torch.tensor(std, device=x.device)[:, None, None]
    return x.to(torch.float32).div_(255.0).sub_(m).div_(s)


def _resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear, anti-aliased when shrinking; uint8 (T, 3, H, W) -> (T, 3, height, width).

    torch resizes uint8 directly (a vectorised path for channels-last layouts, as
    torchvision's v2 transforms use): ~5x cheaper than converting to float first, and within
    one level (1/255) of the float result.
    """
    if x.shape[-2:] == (height, width):
        return x
    x = x.contiguous(memory_format=torch.channels_last)  # (T, 3, H, W), stored (T, H, W, 3)
    return F.interpolate(
        x, size=(height, width), mode="bilinear", align_corners=False, antialias=True
    )


def _resize_short(x: torch.Tensor, short: int) -> torch.Tensor:
    """Resize (T, 3, H, W) so min(H, W) == short, keeping the aspect ratio."""
    h, w = x.shape[-2:]
    if h <= w:
        return _resize(x, short, max(short, round(w * short / h)))
    return _resize(x, max(short, round(h * short / w)), short)


class VideoTransform:
    """Decoded frames -> cropped uint8 clip: crop, resize, flip; one crop for all T frames.

    Training: a random resized crop (area fraction in ``crop_scale``, aspect ratio 3/4..4/3,
    as torchvision's RandomResizedCrop) of the frames resized to ``size`` x ``size``, then a
    horizontal flip with probability 1/2. Evaluation: resize the short side to
    ``resize_short`` and take the centre crop (``crops=3``: left/top, centre and right/bottom
    crops along the long side). Pixels stay uint8 (resampled within one level of a float
    resize); :func:`normalize_video` turns them into model inputs.

    Args:
        size: S, output height and width.
        train: random augmentation (True) or deterministic crops (False).
        resize_short: short side before the eval crop; 0 = ``size * 256 // 224``.
        crop_scale: (min, max) area fraction of the training crop.
        hflip: random horizontal flips in training.
        crops: evaluation crops per clip, 1 or 3.
    """

    def __init__(
        self,
        size: int,
        *,
        train: bool,
        resize_short: int = 0,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        hflip: bool = True,
        crops: int = 1,
    ) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        lo, hi = crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"crop_scale needs 0 < lo <= hi <= 1, got {crop_scale}")
        if crops not in (1, 3) or (train and crops != 1):
            raise ValueError(f"crops must be 1 or 3 (and 1 in training), got {crops}")
        self.size = size
        self.train = train
        self.resize_short = resize_short or size * 256 // 224
        if self.resize_short < size:
            raise ValueError(f"resize_short {self.resize_short} is smaller than size {size}")
        self.crop_scale = (float(lo), float(hi))
        self.hflip = hflip
        self.crops = crops

    def __repr__(self) -> str:
        mode = (
            "train" if self.train else f"eval, resize_short={self.resize_short}, crops={self.crops}"
        )
        return f"VideoTransform(size={self.size}, {mode})"

    def __call__(
        self, frames: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """uint8 (T, H, W, 3) -> uint8 (T, 3, S, S), or (crops, T, 3, S, S) if crops > 1."""
        if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(
                f"expected uint8 (T, H, W, 3) frames, got {frames.dtype} {tuple(frames.shape)}"
            )
        x = frames.permute(0, 3, 1, 2)  # (T, 3, H, W), a channels-last view: no copy
        if self.train:
            x = self._train(x, generator)  # (T, 3, S, S)
        else:
            x = self._eval(x)  # (crops, T, 3, S, S)
            x = x[0] if self.crops == 1 else x
        return x.contiguous()  # the usual (contiguous NCHW) layout for collate and the model

    def _train(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        top, left, h, w = random_resized_crop_box(
            x.shape[-2], x.shape[-1], self.crop_scale, generator=generator
        )
        x = _resize(x[..., top : top + h, left : left + w], self.size, self.size)  # (T, 3, S, S)
        if self.hflip and torch.rand((), generator=generator).item() < 0.5:
            x = x.flip(-1)
        return x

    def _eval(self, x: torch.Tensor) -> torch.Tensor:
        x = _resize_short(x, self.resize_short)  # (T, 3, H', W'), min(H', W') = resize_short
        h, w = x.shape[-2:]
        s = self.size
        top, left = (h - s) // 2, (w - s) // 2
        if self.crops == 1:
            boxes = [(top, left)]
        elif w >= h:  # left, centre, right
            boxes = [(top, 0), (top, left), (top, w - s)]
        else:  # top, centre, bottom
            boxes = [(0, left), (top, left), (h - s, left)]
        return torch.stack([x[..., i : i + s, j : j + s] for i, j in boxes])  # (crops, T, 3, S, S)


def random_resized_crop_box(
    height: int,
    width: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    *,
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random crop covering ``scale`` of the area with aspect ``ratio``.

    torchvision's RandomResizedCrop rule: 10 tries of a random area and log-uniform aspect
    ratio; if none fits, the centre crop with the aspect ratio clamped to ``ratio``.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        u = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[1])
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=generator))
            left = int(torch.randint(0, width - w + 1, (), generator=generator))
            return top, left, h, w
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def spec_augment(
    fbank: torch.Tensor,
    *,
    freq_masks: int = 1,
    freq_width: int = 48,
    time_masks: int = 4,
    time_width: int = 48,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """SpecAugment: zero random bands of mel bins and of frames (returns a new tensor).

    Each mask has a width drawn uniformly from ``0..max_width`` and a uniform start, as
    torchaudio's FrequencyMasking / TimeMasking (used by AST). Masked values are set to 0, so
    apply this after :func:`mbt.data.audio.normalize_fbank`: 0 is then the data set mean.

    Args:
        fbank: (T_a, F) normalised log-mel (leading dims, if any, share the masks).
        freq_masks: number of frequency masks.
        freq_width: maximum width of each, in mel bins.
        time_masks: number of time masks.
        time_width: maximum width of each, in frames.
        generator: random source.

    Returns:
        (T_a, F) copy of ``fbank`` with the masks applied.
    """
    out = fbank.clone()
    n_time, n_freq = fbank.shape[-2:]
    for _ in range(freq_masks):
        lo, hi = _mask_band(n_freq, freq_width, generator)
        out[..., lo:hi] = 0.0
    for _ in range(time_masks):
        lo, hi = _mask_band(n_time, time_width, generator)
        out[..., lo:hi, :] = 0.0
    return out


def _mask_band(size: int, max_width: int, generator: torch.Generator | None) -> tuple[int, int]:
    """[lo, hi) of one mask: width uniform in 0..min(max_width, size), start uniform."""
    width = int(torch.randint(0, min(max_width, size) + 1, (), generator=generator))
    lo = int(torch.randint(0, size - width + 1, (), generator=generator))
    return lo, lo + width


def mixup(
    video: torch.Tensor | None,
    audio: torch.Tensor | None,
    targets: torch.Tensor,
    alpha: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor, float]:
    """Mix each clip with another clip of the batch, the same way in both modalities.

    One ``lam ~ Beta(alpha, alpha)`` and one permutation for the whole batch:
    ``x = lam * x + (1 - lam) * x[perm]`` for video, audio and targets alike (official MBT).

    Args:
        video: float (B, ...) video input, or None for an audio-only model.
        audio: float (B, ...) audio input, or None for a video-only model.
        targets: float (B, C) one-hot or multi-hot targets.
        alpha: Beta parameter; 0 turns mixup off (inputs returned unchanged, ``lam = 1``).
        generator: random source.

    Returns:
        (video, audio, targets, lam); a None input stays None.
    """
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if alpha == 0:
        return video, audio, targets, 1.0
    tensors = [x for x in (video, audio, targets) if x is not None]
    if not all(x.is_floating_point() for x in tensors):
        raise ValueError("mixup needs float video, audio and targets (one-hot targets as floats)")
    # torch's Beta sampler takes no generator: seed numpy's from the torch generator instead.
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    perm = torch.randperm(targets.shape[0], generator=generator)  # (B,)

    def mix(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else lam * x + (1.0 - lam) * x[perm.to(x.device)]

    return mix(video), mix(audio), mix(targets), lam  # type: ignore[return-value]
