"""One clip -> model inputs: the one front-end of training, evaluation, predict and explain.

:func:`load_views` samples frame times, reads the frames and the log-mel through a
:class:`ClipReader` (:class:`MediaReader` decodes the media files,
``mbt.data.cache.CacheReader`` reads a prepared cache), crops, cuts the audio window and
normalises, for V = ``views * crops`` views (temporal views outer, crops inner).
:class:`mbt.data.dataset.AVDataset` calls it for every item; :func:`clip_inputs_from_file`
calls it for one media file (predict, explain).

Audio alignment: the audio window (``model_cfg.audio_frames`` x 10 ms) is cut from the clip's
whole log-mel. In ``window`` sampling it is centred on the centre of the sampled video window,
clamped to the sound's length; in ``uniform`` sampling the video window is the whole clip, so
the audio window is placed like a video window of its own: random in training, centred at test,
or evenly spread over the clip for the temporal views. A window past the end of the sound is
zero-padded before normalising, as AST does (:func:`mbt.data.audio.pad_or_cut`).

Errors: a reader's media errors (:class:`MediaError`, FFmpeg errors, ``OSError``) come out as
one-line :class:`MediaError` naming the file; anything else (a bug) propagates unchanged.

Shape vocabulary: V views, T frames, S crop size, T_a audio frames, F mel bins.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import av
import torch

from mbt.config import DataConfig, ModelConfig
from mbt.data.audio import (
    FBANK_RATE,
    NoAudioError,
    load_audio,
    log_mel,
    normalize_fbank,
    pad_or_cut,
)
from mbt.data.layouts import Clip
from mbt.data.transforms import VideoTransform, normalize_video, spec_augment
from mbt.data.video import (
    MediaError,
    open_media,
    probe_video,
    read_frames,
    sample_times,
    window_span,
)

R = TypeVar("R")


class ClipReader(Protocol):
    """Where decoded pixels and log-mels come from (media files or a cache)."""

    def video_info(self, clip: Clip) -> tuple[float, float]:
        """(duration in seconds, frame rate) of the clip's video."""
        ...

    def frames(self, clip: Clip, times: Sequence[float]) -> torch.Tensor:
        """uint8 (T, H, W, 3) frames nearest to ``times``, short side already resized."""
        ...

    def fbank(self, clip: Clip) -> torch.Tensor:
        """float32 (N_a, F) un-normalised log-mel of the clip's whole sound track."""
        ...


class MediaReader:
    """Decode media files (PyAV): frames resized to ``short_side``, the whole track's log-mel."""

    def __init__(self, short_side: int, mel_bins: int) -> None:
        self.short_side = short_side
        self.mel_bins = mel_bins

    def video_info(self, clip: Clip) -> tuple[float, float]:
        info = probe_video(_video_file(clip))
        return info.duration, info.fps

    def frames(self, clip: Clip, times: Sequence[float]) -> torch.Tensor:
        return read_frames(_video_file(clip), times, short_side=self.short_side)

    def fbank(self, clip: Clip) -> torch.Tensor:
        # The whole track, then a slice: the same features as the cache stores, and the
        # window can be clamped to the sound's true length (a wav may be shorter than the mp4).
        sound = clip.audio or clip.video
        if sound is None:
            raise MediaError(f"{clip.key}: the clip has no media file")
        wav = load_audio(sound)  # (N,) 16 kHz mono
        return log_mel(wav, num_mel_bins=self.mel_bins)  # (N_a, F)


def _video_file(clip: Clip) -> Path:
    if clip.video is None:
        raise MediaError(f"{clip.key}: the clip has no video file")
    return clip.video


def resolve_short_side(model_cfg: ModelConfig, data_cfg: DataConfig) -> int:
    """Short side frames are resized to before cropping: ``resize_short`` or S * 256 / 224.

    Raises:
        ValueError: ``data.resize_short`` is smaller than the crop (``model.image_size``).
    """
    short = data_cfg.resize_short or model_cfg.image_size * 256 // 224
    if short < model_cfg.image_size:
        raise ValueError(
            f"data.resize_short={short} is smaller than model.image_size={model_cfg.image_size}"
        )
    return short


# ---------------------------------------------------------------------------------------------
# the front-end


def load_views(
    reader: ClipReader,
    clip: Clip,
    model_cfg: ModelConfig,
    data_cfg: DataConfig,
    *,
    train: bool,
    views: int = 1,
    crops: int = 1,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """The model inputs of one clip, V = ``views * crops`` of them.

    Args:
        reader: Source of frames and log-mels (:class:`MediaReader`, a cache reader).
        clip: The clip.
        model_cfg: ``modalities`` (which inputs), ``image_size``, ``num_frames``,
            ``audio_frames``, ``mel_bins``.
        data_cfg: Sampling (``sampling``, ``frame_stride``), pixels (``resize_short``,
            ``normalization``), audio statistics and, in training, the augmentation options.
        train: Random sampling and augmentation, or deterministic views.
        views: Temporal views (1 in training).
        crops: Spatial crops per temporal view, 1 or 3 (1 in training).
        generator: Random source of the sampling and augmentation (training).

    Returns:
        ``video`` uint8 (V, T, 3, S, S) if the model reads video (normalised on the device by
        :func:`~mbt.data.transforms.normalize_video`), ``audio`` float32
        (V, T_a, F) normalised log-mel if it reads audio (zeros for a clip without sound); the
        crops of one temporal view share its sound.

    Raises:
        MediaError: a file cannot be read (one line, naming it), or the model reads video and
            the clip has none.
    """
    if views < 1 or crops not in (1, 3) or (train and views * crops != 1):
        raise ValueError(f"views >= 1 and crops 1 or 3 (both 1 in training), got {views}, {crops}")
    timing, fbank = _read_clip(reader, clip, model_cfg, data_cfg)
    read_video = "video" in model_cfg.modalities
    transform = _video_transform(model_cfg, data_cfg, train, crops) if read_video else None
    video, audio = [], []
    for view in range(views):  # random draws in this order: window, frame times, crop, audio
        span, times = None, None
        if timing is not None:
            span, times = _sample(timing, model_cfg, data_cfg, train, view, views, generator)
        if transform is not None:
            frames = _read(clip, clip.video, lambda t=times: reader.frames(clip, t))
            x = transform(frames, generator=generator)  # ([crops,] T, 3, S, S)
            video.append(x.reshape(-1, *x.shape[-4:]))  # (crops, T, 3, S, S)
        if "audio" in model_cfg.modalities:
            a = _audio_view(fbank, span, model_cfg, data_cfg, train, view, views, generator)
            audio.append(a)  # (T_a, F)
    out = {}
    if video:
        out["video"] = torch.cat(video)  # (V, T, 3, S, S)
    if audio:
        out["audio"] = torch.stack(audio).repeat_interleave(crops, dim=0)  # (V, T_a, F)
    return out


def _read_clip(
    reader: ClipReader, clip: Clip, model_cfg: ModelConfig, data_cfg: DataConfig
) -> tuple[tuple[float, float] | None, torch.Tensor | None]:
    """What every view needs: the video's (duration, fps), None if no window is cut from a
    video; the whole track's (N_a, F) log-mel, None if the model reads no audio or there is
    none."""
    read_video = "video" in model_cfg.modalities
    if read_video and clip.video is None:
        raise MediaError(f"{clip.key}: clip has no video file but the model reads video")
    timing = None
    if clip.video is not None and (read_video or data_cfg.sampling == "window"):
        timing = _read(clip, clip.video, lambda: reader.video_info(clip))
    fbank = None
    if "audio" in model_cfg.modalities and clip.has_audio:
        fbank = _read(clip, clip.audio or clip.video, lambda: reader.fbank(clip))
    return timing, fbank


def _sample(
    timing: tuple[float, float],
    model_cfg: ModelConfig,
    data_cfg: DataConfig,
    train: bool,
    view: int,
    views: int,
    generator: torch.Generator | None,
) -> tuple[tuple[float, float], list[float]]:
    """The video window of one view (seconds) and the times of its T frames."""
    duration, fps = timing
    kw = dict(
        mode=data_cfg.sampling, fps=fps, stride=data_cfg.frame_stride, train=train, view=view,
        num_views=views, generator=generator,
    )  # fmt: skip
    span = window_span(duration, model_cfg.num_frames, **kw)
    return span, sample_times(duration, model_cfg.num_frames, span=span, **kw)


def _video_transform(
    model_cfg: ModelConfig, data_cfg: DataConfig, train: bool, crops: int
) -> VideoTransform:
    return VideoTransform(
        model_cfg.image_size, train=train, resize_short=resolve_short_side(model_cfg, data_cfg),
        crop_scale=data_cfg.crop_scale, hflip=data_cfg.hflip, crops=crops,
    )  # fmt: skip


def _audio_view(
    fbank: torch.Tensor | None,
    span: tuple[float, float] | None,
    model_cfg: ModelConfig,
    data_cfg: DataConfig,
    train: bool,
    view: int,
    views: int,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """One normalised (T_a, F) window, aligned with the video window ``span`` as the module
    docstring says."""
    target = model_cfg.audio_frames
    if fbank is None:  # no sound (missing_audio=silence): zeros, flagged by has_audio
        return torch.zeros(target, model_cfg.mel_bins)
    centre = None
    if data_cfg.sampling == "window" and span is not None:
        centre = 0.5 * (span[0] + span[1])  # seconds
    start = audio_window_start(
        len(fbank), target, centre=centre, train=train, view=view, num_views=views,
        generator=generator,
    )  # fmt: skip
    x = pad_or_cut(fbank[start:], target).float()  # (T_a, F)
    x = normalize_fbank(x, data_cfg.audio_mean, data_cfg.audio_std)
    if train:
        d = data_cfg
        x = spec_augment(
            x, freq_masks=d.freq_masks, freq_width=d.freq_mask_width,
            time_masks=d.time_masks, time_width=d.time_mask_width, generator=generator,
        )  # fmt: skip
    return x


def audio_window_start(
    length: int,
    target: int,
    *,
    centre: float | None,
    train: bool,
    view: int = 0,
    num_views: int = 1,
    generator: torch.Generator | None = None,
) -> int:
    """First log-mel frame of a ``target``-frame window in a ``length``-frame track.

    With ``centre`` (seconds; window sampling) the window is centred on it; without, it is
    random in training, centred at test, or the ``view``-th of ``num_views`` evenly spread
    positions. Always clamped so the window stays inside the track (start 0 if it is shorter).
    """
    slack = max(0, length - target)
    if centre is not None:
        start = round(centre * FBANK_RATE - target / 2)
    elif train:
        start = int(torch.randint(0, slack + 1, (), generator=generator))
    elif num_views == 1:
        start = slack // 2
    else:
        start = round(slack * view / (num_views - 1))
    return min(max(0, start), slack)


def _read(clip: Clip, path: Path | None, read: Callable[[], R]) -> R:
    """One read from a reader. A media error (FFmpeg, the file system) becomes a one-line
    :class:`MediaError` naming ``path``; any other exception is a bug and propagates."""
    try:
        return read()
    except MediaError:
        raise  # already names its file
    except (av.FFmpegError, OSError) as e:
        name = str(path or clip.key)
        text = " ".join(str(e).split()).removeprefix(f"{name}: ")  # one line, the path once
        raise MediaError(f"{name}: {type(e).__name__}: {text}".rstrip(": ")) from e


# ---------------------------------------------------------------------------------------------
# one media file (predict, explain)


def clip_inputs_from_file(
    video: str | Path,
    audio: str | Path | None,
    model_cfg: ModelConfig,
    data_cfg: DataConfig,
    *,
    views: int = 1,
    crops: int = 1,
) -> dict[str, Any]:
    """Model inputs for one media file, made as evaluation makes them (no augmentation).

    Args:
        video: The clip's file: a video; for an audio-only model a sound file works too.
        audio: A separate sound file (None: the video's own audio track, if it has one).
        model_cfg: The model's inputs (``modalities``, sizes), e.g. ``LoadedModel.model.cfg``.
        data_cfg: The run's preprocessing (sampling, normalisation, audio statistics).
        views: Temporal views (e.g. ``data_cfg.test_clips``; explain: 1).
        crops: Spatial crops per view, 1 or 3 (e.g. ``data_cfg.test_crops``).

    Returns:
        ``video``: float32 (V, T, 3, S, S), None if the model reads no video;
        ``audio``: float32 (V, T_a, F) normalised, None if the model reads no audio or the clip
        has no sound (run the model without its audio stream then);
        ``frames``: float32 (V, T, S, S, 3) in [0, 1], the cropped pictures, for drawing;
        ``fbank``: float32 (V, T_a, F) the un-normalised log-mel windows, for drawing;
        ``has_audio``: whether the clip has sound (``audio`` given, or a track in ``video``).
        V = ``views * crops``; the crops of one temporal view share its sound.

    Raises:
        MediaError: a file is missing, unreadable or corrupt (one line naming it); a sound
            file without sound is :class:`~mbt.data.audio.NoAudioError`. Only a video without
            any audio track means "no sound".
        NoAudioError: the model reads only audio and the clip has no sound.
    """
    clip = _file_clip(Path(video), Path(audio) if audio is not None else None, model_cfg)
    reader = MediaReader(resolve_short_side(model_cfg, data_cfg), model_cfg.mel_bins)
    inputs = load_views(reader, clip, model_cfg, data_cfg, train=False, views=views, crops=crops)
    pixels = inputs.get("video")  # uint8 (V, T, 3, S, S)
    x = None if pixels is None else normalize_video(pixels, data_cfg.normalization)
    a = inputs.get("audio") if clip.has_audio else None  # (V, T_a, F); zeros without sound
    return {
        "video": x,
        "audio": a,
        "frames": None if x is None else pixels.permute(0, 1, 3, 4, 2) / 255.0,
        "fbank": None if a is None else a * (2 * data_cfg.audio_std) + data_cfg.audio_mean,
        "has_audio": clip.has_audio,
    }


def _file_clip(video: Path, audio: Path | None, model_cfg: ModelConfig) -> Clip:
    """The :class:`Clip` of one file: an audio-only clip when ``video`` holds no picture and the
    model reads none; ``has_audio`` from ``audio`` or the file's own track."""
    container = open_media(video)
    try:
        has_video, has_track = bool(container.streams.video), bool(container.streams.audio)
    finally:
        container.close()
    has_audio = audio is not None or has_track
    if "video" not in model_cfg.modalities and not has_audio:
        raise NoAudioError(f"{video}: no audio track, and the model reads only audio")
    if not has_video and "video" not in model_cfg.modalities:
        return Clip(video=None, audio=audio or video, labels=(0,), key=video.stem)
    return Clip(video=video, audio=audio, labels=(0,), key=video.stem, has_audio=has_audio)
