"""Which frames of a clip to decode: the times of T frames, and the window they span.

Times are seconds from the start of the video stream (its first frame is at 0), as
:func:`mbt.data.video.read_frames` takes them. Two modes: ``uniform`` (the paper: T frames
spread over the whole clip) and ``window`` (official MBT: T frames ``stride`` source frames
apart in a window, whose centre also places the audio window, :mod:`mbt.data.clip`)::

    span = window_span(info.duration, 8, mode="window", fps=info.fps, train=True, generator=g)
    times = sample_times(info.duration, 8, mode="window", fps=info.fps, span=span)
"""

from __future__ import annotations

import math
from typing import Literal

import torch


def window_span(
    duration: float,
    num_frames: int,
    *,
    mode: Literal["uniform", "window"] = "uniform",
    fps: float = 25.0,
    stride: int = 2,
    train: bool = False,
    view: int = 0,
    num_views: int = 1,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """(start, end) seconds of the part of the clip that :func:`sample_times` takes frames from.

    ``uniform`` covers the whole clip: ``(0, duration)``. ``window`` covers
    ``num_frames * stride / fps`` seconds: a random start in training; at test the ``view``-th
    of ``num_views`` windows spread evenly from the first possible start to the last (the
    middle one when ``num_views == 1``). A clip shorter than the window gives ``start = 0`` and
    ``end > duration``. Arguments as in :func:`sample_times`; only window-mode training draws
    from ``generator`` (one number).
    """
    _check_sampling(duration, num_frames, mode, fps, stride, view, num_views)
    if mode == "uniform":
        return 0.0, float(duration)
    length = num_frames * stride / fps
    slack = max(0.0, duration - length)  # how far the window can move
    if train:
        start = slack * torch.rand((), generator=generator).item()
    elif num_views == 1:
        start = slack / 2
    else:
        start = slack * view / (num_views - 1)  # linspace(0, slack, num_views), as DMVR at test
    return start, start + length


def sample_times(
    duration: float,
    num_frames: int,
    *,
    mode: Literal["uniform", "window"] = "uniform",
    fps: float = 25.0,
    stride: int = 2,
    train: bool = False,
    view: int = 0,
    num_views: int = 1,
    generator: torch.Generator | None = None,
    span: tuple[float, float] | None = None,
) -> list[float]:
    """Timestamps (seconds) of the T frames to decode from a clip.

    ``uniform`` (paper: 8 frames spread over the clip): the clip is cut into T equal segments;
    training takes a random time in each segment, test the segment centres, or with
    ``num_views > 1`` the point ``(view + 0.5) / num_views`` of the way through each segment
    (views shifted evenly). ``window`` (official MBT: 32 frames, stride 2): T frames
    ``stride / fps`` seconds apart from the window start of :func:`window_span`; times past the
    end of a short clip are clamped to its last frame, so the last frame repeats.

    Args:
        duration: clip length in seconds (``VideoInfo.duration``).
        num_frames: T, how many frames to sample.
        mode: ``"uniform"`` or ``"window"``.
        fps: the clip's frame rate (window mode only).
        stride: take every ``stride``-th frame (window mode only).
        train: random jitter / random window (True) or deterministic views (False).
        view: which test view, ``0 <= view < num_views``.
        num_views: how many test views the clip is split into.
        generator: random source for training (None: torch's global generator).
        span: a window from :func:`window_span` to place the frames in (window mode), so the
            same window can be used to cut the audio; None draws one.

    Returns:
        T non-decreasing times in ``[0, duration]``.
    """
    _check_sampling(duration, num_frames, mode, fps, stride, view, num_views)
    t = torch.arange(num_frames, dtype=torch.float64)
    if mode == "uniform":
        segment = duration / num_frames
        if train:
            offset = torch.rand(num_frames, generator=generator, dtype=torch.float64)  # (T,)
        else:
            offset = torch.full((num_frames,), (view + 0.5) / num_views, dtype=torch.float64)
        times = (t + offset) * segment  # (T,)
    else:
        if span is None:
            span = window_span(
                duration, num_frames, mode=mode, fps=fps, stride=stride, train=train,
                view=view, num_views=num_views, generator=generator,
            )  # fmt: skip
        last = max(0.0, duration - 1.0 / fps)  # timestamp of the last frame
        times = (span[0] + t * stride / fps).clamp(0.0, last)  # (T,)
    return times.tolist()


def _check_sampling(
    duration: float, num_frames: int, mode: str, fps: float, stride: int, view: int, views: int
) -> None:
    if not (duration >= 0 and math.isfinite(duration)):
        raise ValueError(f"duration must be finite and >= 0, got {duration}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if mode not in ("uniform", "window"):
        raise ValueError(f"mode must be 'uniform' or 'window', got {mode!r}")
    if mode == "window" and not (fps > 0 and stride >= 1):
        raise ValueError(f"window sampling needs fps > 0 and stride >= 1, got {fps}, {stride}")
    if not 0 <= view < views:
        raise ValueError(f"view must be in [0, num_views={views}), got {view}")
