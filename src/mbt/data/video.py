"""Video decoding: probe a file, choose frame times, decode exactly those frames.

Times are seconds from the start of the video stream (its first frame is at 0), so they do not
depend on the container's time base or frame rate; :func:`read_frames` picks, for each wanted
time, the decoded frame whose timestamp is nearest. That works for variable frame rate files
and for every container FFmpeg reads (avi, mkv, webm, mov, mp4).

Sampling a clip and the audio that goes with it::

    info = probe_video(path)
    span = window_span(info.duration, 8, mode="window", fps=info.fps, train=True, generator=g)
    times = sample_times(info.duration, 8, mode="window", fps=info.fps, span=span)
    frames = read_frames(path, times, short_side=256)  # (8, 256, W, 3) uint8
    # span = (start, end) seconds of the video window: centre the audio crop on it.

Shape vocabulary: T frames, H x W pixels, 3 RGB channels (uint8, channels last, as decoded).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import av
import numpy as np
import torch

AV_TIME_BASE = 1_000_000  # FFmpeg's container-level time unit: microseconds


class MediaError(ValueError):
    """A media file cannot be read: missing, empty, corrupt, or without the wanted stream."""


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` learns from a file's header (nothing is decoded)."""

    path: str
    duration: float  # seconds
    fps: float  # average frame rate
    num_frames: int  # from the container, or duration * fps when the container doesn't say
    width: int
    height: int
    has_audio: bool


def open_media(path: str | Path) -> av.container.InputContainer:
    """Open ``path`` for reading; any failure becomes a one-line :class:`MediaError`."""
    p = Path(path)
    if not p.is_file():
        raise MediaError(f"{path}: no such file")
    if p.stat().st_size == 0:
        raise MediaError(f"{path}: empty file (0 bytes)")
    try:
        return av.open(str(p), "r")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise MediaError(f"{path}: not a readable media file ({_reason(e)})") from e


def _reason(e: BaseException) -> str:
    """The short part of an error, for one-line messages."""
    text = getattr(e, "strerror", None) or str(e)
    return text.splitlines()[0] if text else type(e).__name__


def _video_stream(container: av.container.InputContainer, path: str | Path) -> av.VideoStream:
    if not container.streams.video:
        raise MediaError(f"{path}: no video stream")
    return container.streams.video[0]


def probe_video(path: str | Path) -> VideoInfo:
    """Read the header of a video file.

    Args:
        path: any file FFmpeg can open.

    Returns:
        A :class:`VideoInfo`. ``duration`` comes from the video stream, else from the
        container; ``num_frames`` is the container's count, else ``round(duration * fps)``.

    Raises:
        MediaError: the file is missing, empty, corrupt, or has no video stream.
    """
    container = open_media(path)
    try:
        stream = _video_stream(container, path)
        fps = float(stream.average_rate or stream.guessed_rate or stream.base_rate or 0)
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / AV_TIME_BASE
        elif stream.frames and fps > 0:
            duration = stream.frames / fps
        else:
            raise MediaError(f"{path}: the container gives no duration")
        num_frames = stream.frames or max(1, round(duration * fps))
        cc = stream.codec_context
        if not cc.width or not cc.height:
            raise MediaError(f"{path}: video stream has no frame size (corrupt header?)")
        return VideoInfo(
            path=str(path),
            duration=duration,
            fps=fps if fps > 0 else num_frames / max(duration, 1e-9),
            num_frames=int(num_frames),
            width=int(cc.width),
            height=int(cc.height),
            has_audio=len(container.streams.audio) > 0,
        )
    finally:
        container.close()


# ---------------------------------------------------------------------------------------------
# Which frames


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


# ---------------------------------------------------------------------------------------------
# Decoding


def read_frames(
    path: str | Path, times: Sequence[float], *, short_side: int | None = None
) -> torch.Tensor:
    """Decode the frames nearest to ``times``.

    Seeks to the key frame before the earliest time, decodes forward, and for each wanted time
    keeps the frame whose timestamp is nearest (so variable frame rate is handled); times past
    the last frame give the last frame. Only the chosen frames are converted to RGB. If a seek
    lands after the wanted time (a broken index), decoding restarts from the beginning.

    Args:
        path: a video file.
        times: T timestamps in seconds from the first frame, in any order, repeats allowed.
        short_side: if given, resize (FFmpeg's area-averaging scaler, so downscaling is
            anti-aliased) so the shorter side has this many pixels, keeping the aspect ratio.

    Returns:
        uint8 (T, H, W, 3) RGB frames, in the order of ``times``.

    Raises:
        MediaError: the file cannot be opened or decoded, or has no video stream.
    """
    if len(times) == 0:
        raise ValueError("times is empty")
    container = open_media(path)
    try:
        chosen = _decode_nearest(container, path, list(times), seek=min(times) > 0)
        if chosen is None:  # the seek overshot: decode again from the start, without seeking
            container.close()
            container = open_media(path)
            chosen = _decode_nearest(container, path, list(times), seek=False)
        assert chosen is not None
        images = [_to_rgb(frame, short_side) for frame in chosen]
    except av.FFmpegError as e:
        raise MediaError(f"{path}: cannot decode video ({_reason(e)})") from e
    finally:
        container.close()
    return torch.from_numpy(np.stack(images))  # (T, H, W, 3)


def _decode_nearest(
    container: av.container.InputContainer, path: str | Path, times: list[float], seek: bool
) -> list[av.VideoFrame] | None:
    """Frames nearest to each time (in the order given); None if a seek went past the first."""
    stream = _video_stream(container, path)
    stream.thread_type = "AUTO"  # frame and slice threads
    tb = float(stream.time_base)
    origin = stream.start_time or 0  # pts of the first frame, in time_base units
    fps = float(stream.average_rate or stream.guessed_rate or 25)
    order = sorted(range(len(times)), key=times.__getitem__)
    chosen: list[av.VideoFrame | None] = [None] * len(times)
    if seek:
        container.seek(origin + int(times[order[0]] / tb), stream=stream, backward=True)
    k = 0  # next position in `order` to resolve
    prev: av.VideoFrame | None = None
    prev_t = -math.inf
    for i, frame in enumerate(container.decode(stream)):
        t = _frame_time(frame, tb, origin)
        if t is None:  # no timestamp: count frames, which only works from the start
            if seek:
                return None
            t = i / fps
        if seek and prev is None and t > times[order[0]] + 1e-3 and t > 0:
            return None  # landed after the first wanted frame
        while k < len(order) and times[order[k]] <= t:
            want = times[order[k]]
            # nearest of the previous and this frame; ties go to the earlier frame
            chosen[order[k]] = prev if prev is not None and want - prev_t <= t - want else frame
            k += 1
        if k == len(order):
            break
        prev, prev_t = frame, t
    if prev is None and chosen[order[0]] is None:
        raise MediaError(f"{path}: no video frame could be decoded")
    for j in order[k:]:  # past the last frame
        chosen[j] = prev
    return chosen  # type: ignore[return-value]


def _frame_time(frame: av.VideoFrame, tb: float, origin: int) -> float | None:
    """Seconds from the first frame, or None if the frame carries no timestamp."""
    pts = frame.pts if frame.pts is not None else frame.dts
    return None if pts is None else (pts - origin) * tb


def _to_rgb(frame: av.VideoFrame, short_side: int | None) -> np.ndarray:
    """uint8 (H, W, 3), optionally resized so min(H, W) == short_side."""
    if short_side is None:
        return frame.to_ndarray(format="rgb24")
    w, h = frame.width, frame.height
    scale = short_side / min(w, h)
    size = (
        (short_side, max(1, round(h * scale))) if w <= h else (max(1, round(w * scale)), short_side)
    )
    if size == (w, h):
        return frame.to_ndarray(format="rgb24")
    resized = frame.reformat(width=size[0], height=size[1], format="rgb24", interpolation="AREA")
    return resized.to_ndarray()
