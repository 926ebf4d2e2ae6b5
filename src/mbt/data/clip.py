"""One clip -> model inputs: the one front-end of training, evaluation, predict and explain.

:func:`load_views` samples frame times, reads the frames and the log-mel through a
:class:`ClipReader` (:class:`MediaReader` decodes the media files,
``mbt.data.cache.CacheReader`` reads a prepared cache), crops, cuts the audio window and
normalises, for V = ``views * crops`` views (temporal views outer, crops inner).
:class:`mbt.data.dataset.AVDataset` calls it for every item; :func:`clip_inputs_from_file`
calls it for one media file (predict, explain).

What is read: the frames of every view in one pass, and per view only its audio window: rows
``[start, start + audio_frames)`` of the whole track's log-mel, placed from the track's length
(``reader.audio_frames``) and read alone (``reader.fbank``).

Audio alignment: the audio window (``model_cfg.audio_frames`` x 10 ms) is a slice of the clip's
whole log-mel. In ``window`` sampling it is centred on the centre of the sampled video window,
clamped to the sound's length; in ``uniform`` sampling the video window is the whole clip, so
the audio window is placed like a video window of its own: random in training, centred at test,
or evenly spread over the clip for the temporal views. A window past the end of the sound is
zero-padded before normalising, as AST does (:func:`mbt.data.audio.pad_or_cut`).

Errors: a reader's media errors (:class:`MediaError`, FFmpeg errors, ``OSError``) come out as
one-line :class:`MediaError` naming the file; anything else (a bug) propagates unchanged. A
truncated file (its header promises more than decodes) follows ``data.on_short``
(:class:`MediaReader`).

Shape vocabulary: V views, T frames, S crop size, T_a audio frames, F mel bins.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import av
import torch

from mbt.config import DataConfig, ModelConfig
from mbt.data.audio import (
    FBANK_RATE,
    SAMPLE_RATE,
    AudioTrack,
    NoAudioError,
    fbank_rows,
    fbank_span,
    log_mel,
    normalize_fbank,
    pad_or_cut,
)
from mbt.data.layouts import Clip
from mbt.data.sampling import sample_times, window_span
from mbt.data.transforms import VideoTransform, normalize_video, spec_augment
from mbt.data.video import DecodeCount, MediaError, VideoFile, open_media

log = logging.getLogger(__name__)
R = TypeVar("R")
WHOLE_TRACK_S = 20.0  # s: tracks up to this long are decoded whole once per item (MediaReader)


class ClipReader(Protocol):
    """Where decoded pixels and log-mels come from (media files or a cache).

    :func:`load_views` asks, per item: ``video_info`` and ``audio_frames`` once, ``frames``
    once with the times of every view, ``fbank`` once per view; then ``close()`` if the reader
    has one (a reader may keep the item's files open until then).
    """

    def video_info(self, clip: Clip) -> tuple[float, float]:
        """(duration in seconds, frame rate) of the clip's video."""
        ...

    def frames(self, clip: Clip, times: Sequence[float]) -> torch.Tensor:
        """uint8 (T, H, W, 3) frames nearest to ``times`` (all views of an item in one call),
        short side at most the reader's ``short_side``."""
        ...

    def audio_frames(self, clip: Clip) -> int:
        """N_a: rows of the whole sound track's log-mel (0: no sound), without decoding it
        where the reader can tell."""
        ...

    def fbank(self, clip: Clip, start: int, count: int) -> torch.Tensor:
        """float32 (<= count, F): rows ``[start, start + count)`` of the whole track's
        un-normalised log-mel (fewer where the track ends)."""
        ...


class MediaReader:
    """:class:`ClipReader` that decodes media files (PyAV), only what an item samples.

    Per item, each file is opened once (an mp4's own sound track shares its open file) and
    closed by :meth:`close`, which :func:`load_views` calls when the item is read (so no
    decoder lives on into a forked data loader worker). The frames of all views come from one
    keyframe-aware pass (:class:`~mbt.data.video.VideoFile`); the sound's length comes from its
    header. Sound tracks up to :data:`WHOLE_TRACK_S` (UCF101,
    VGGSound and AudioSet clips) are decoded whole once per item and every window is a slice,
    as the cache stores them; longer tracks decode only their windows
    (:class:`~mbt.data.audio.AudioTrack`), so a 10-minute file costs about what a 10-second one
    does. Decoder threads are off by default: in data loader workers every core already runs
    one (frame threads only add CPU), and a frame-threaded decoder that a forked process (a
    loader worker, a ``prepare`` worker) frees during garbage collection deadlocks it, since
    its threads do not exist there. ``threads="AUTO"`` suits a process that never forks.

    A file whose header promises more than decodes (a cut download) and whose decodable end an
    item reaches follows ``on_short``: ``"pad"`` gives its last frame / silence and logs it
    once per file (what was padded is in :attr:`padded`); ``"skip"`` and ``"error"`` raise
    :class:`~mbt.data.video.TruncatedMediaError` (the data set skips or stops on it). A sound
    file merely shorter than the audio window is no error: its window is zero-padded, as AST
    pads.

    Args:
        short_side: frames whose short side is longer are shrunk to this; smaller ones are
            kept (the crop transforms resize anyway).
        mel_bins: F.
        on_short: ``"pad"``, ``"skip"`` or ``"error"`` (``data.on_short``).
        threads: FFmpeg decoder threads, ``"NONE"`` or ``"AUTO"`` (see above).
    """

    def __init__(
        self,
        short_side: int,
        mel_bins: int,
        *,
        on_short: Literal["pad", "skip", "error"] = "skip",
        threads: Literal["AUTO", "NONE"] = "NONE",
    ) -> None:
        self.short_side = short_side
        self.mel_bins = mel_bins
        self.on_short = on_short
        self.threads = threads
        self.padded: dict[tuple[str, str], str] = {}  # (file, stream) -> what was padded
        self._done = DecodeCount()  # work of the items closed so far
        self._item: _ItemFiles | None = None

    @property
    def count(self) -> DecodeCount:
        """Frames, seeks and audio samples decoded so far (tests and benchmarks read it)."""
        return self._done + (self._item.count() if self._item is not None else DecodeCount())

    def close(self) -> None:
        """Close the files of the last item (the next item opens its own)."""
        if self._item is not None:
            self._done = self._done + self._item.count()
            self._item.close()
            self._item = None

    def video_info(self, clip: Clip) -> tuple[float, float]:
        info = self._files(clip).video().info
        return info.duration, info.fps

    def frames(self, clip: Clip, times: Sequence[float]) -> torch.Tensor:
        video = self._files(clip).video()
        before = video.past_end
        x = video.frames(times, short_side=self.short_side, pad_truncated=self.on_short == "pad")
        if video.past_end > before:
            self._padded(
                video.path,
                "video",
                f"{video.past_end - before} frame time(s) past its decodable end "
                f"({video.end:.2f} s of {video.info.duration:.2f} s) got its last frame",
            )
        return x

    def audio_frames(self, clip: Clip) -> int:
        files = self._files(clip)
        track = files.audio()
        if track.samples is not None and track.samples > WHOLE_TRACK_S * SAMPLE_RATE:
            return fbank_rows(track.samples)  # from the header; windows decode alone
        wav = track.read()  # (N,) short: the whole track once, every window a slice
        self._check_end(track, len(wav), track.samples or 0, whole=True)
        files.whole = log_mel(torch.from_numpy(wav), num_mel_bins=self.mel_bins)  # (N_a, F)
        return len(files.whole)

    def fbank(self, clip: Clip, start: int, count: int) -> torch.Tensor:
        files = self._files(clip)
        if files.whole is not None:
            return files.whole[start : start + count]  # (<= count, F)
        track = files.audio()
        first, n = fbank_span(start, count)
        wav = track.read(first, n)  # (<= n,)
        self._check_end(track, first + len(wav), first + n, whole=False)
        return log_mel(torch.from_numpy(wav), num_mel_bins=self.mel_bins)  # (<= count, F)

    def _check_end(self, track: AudioTrack, got: int, wanted: int, whole: bool) -> None:
        """Apply ``on_short`` when samples up to ``wanted`` were asked for and decoding ended
        at ``got``: raise for a truncated track (unless padding), record what was padded."""
        track.check_end(wanted, pad=self.on_short == "pad")
        if got < wanted and track.truncated:
            sr, promised = track.sample_rate, track.samples or 0
            what = f"its sound decodes to {got / sr:.2f} s of {promised / sr:.2f} s; " + (
                "windows are cut from what decodes"
                if whole
                else f"{(wanted - got) / sr:.2f} s of a window read as silence"
            )
            self._padded(track.path, "sound", what)

    def _padded(self, path: str | Path, stream: str, what: str) -> None:
        """Record (and log once per file, stream and process) a truncated file read padded."""
        if (str(path), stream) not in self.padded:
            log.warning("%s: truncated: %s (data.on_short=pad)", path, what)
        self.padded[str(path), stream] = what

    def _files(self, clip: Clip) -> _ItemFiles:
        """The open files of ``clip``, opened on first use (:meth:`close` ends the item)."""
        if self._item is None or self._item.clip != clip:
            self.close()
            self._item = _ItemFiles(clip, self.threads)
        return self._item


class _ItemFiles:
    """The open files of one clip: each opened once, the video's container shared with its own
    sound track, and the whole track's log-mel when it was decoded whole."""

    def __init__(self, clip: Clip, threads: Literal["AUTO", "NONE"]) -> None:
        self.clip = clip
        self.threads = threads
        self.whole: torch.Tensor | None = None  # (N_a, F) whole-track log-mel
        self._container: av.container.InputContainer | None = None  # the video file's
        self._video: VideoFile | None = None
        self._audio: AudioTrack | None = None

    def _video_container(self) -> av.container.InputContainer:
        if self._container is None:
            self._container = open_media(_video_file(self.clip))
        return self._container

    def video(self) -> VideoFile:
        if self._video is None:
            path = _video_file(self.clip)
            self._video = VideoFile(path, container=self._video_container(), threads=self.threads)
        return self._video

    def audio(self) -> AudioTrack:
        if self._audio is None:
            sound = self.clip.audio or self.clip.video
            if sound is None:
                raise MediaError(f"{self.clip.key}: the clip has no media file")
            if self.clip.audio is None:  # the video's own track: its open file
                container = self._video_container()
                self._audio = AudioTrack(sound, container=container, threads=self.threads)
            else:
                self._audio = AudioTrack(sound, threads=self.threads)
        return self._audio

    def count(self) -> DecodeCount:
        v = self._video.count if self._video is not None else DecodeCount()
        a = self._audio.count if self._audio is not None else DecodeCount()
        return DecodeCount(v.frames, v.seeks + a.seeks, a.samples)

    def close(self) -> None:
        for part in (self._audio, self._video):
            if part is not None:
                part.close()
        if self._container is not None:
            self._container.close()


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
    try:
        return _load_views(reader, clip, model_cfg, data_cfg, train, views, crops, generator)
    finally:  # a reader that keeps an item's files open closes them now
        close = getattr(reader, "close", None)
        if close is not None:
            close()


def _load_views(
    reader: ClipReader,
    clip: Clip,
    model_cfg: ModelConfig,
    data_cfg: DataConfig,
    train: bool,
    views: int,
    crops: int,
    generator: torch.Generator | None,
) -> dict[str, torch.Tensor]:
    """:func:`load_views` once its arguments are checked."""
    timing, sound = _read_clip(reader, clip, model_cfg, data_cfg)
    read_video = "video" in model_cfg.modalities
    transform = _video_transform(model_cfg, data_cfg, train, crops) if read_video else None
    # Random draws in this order: each view's window and frame times; then per view its crop
    # and its audio window (training has one view, so: window, times, crop, audio).
    samples = [
        _sample(timing, model_cfg, data_cfg, train, view, views, generator) if timing else None
        for view in range(views)
    ]
    frames = None
    if transform is not None:  # every view's frames in one decoding pass
        times = [t for _, view_times in samples for t in view_times]  # type: ignore[misc]
        frames = _read(clip, clip.video, lambda: reader.frames(clip, times))  # (V * T, H, W, 3)

    def rows(start: int, count: int) -> torch.Tensor:  # (<= count, F) of the sound track
        return _read(clip, clip.audio or clip.video, lambda: reader.fbank(clip, start, count))

    video, audio = [], []
    for view, sample in enumerate(samples):
        if transform is not None and frames is not None:
            t = model_cfg.num_frames
            x = transform(frames[view * t : (view + 1) * t], generator=generator)
            video.append(x.reshape(-1, *x.shape[-4:]))  # (crops, T, 3, S, S)
        if "audio" in model_cfg.modalities:
            span = sample[0] if sample is not None else None
            a = _audio_view(rows, sound, span, model_cfg, data_cfg, train, view, views, generator)
            audio.append(a)  # (T_a, F)
    out = {}
    if video:
        out["video"] = torch.cat(video)  # (V, T, 3, S, S)
    if audio:
        out["audio"] = torch.stack(audio).repeat_interleave(crops, dim=0)  # (V, T_a, F)
    return out


def _read_clip(
    reader: ClipReader, clip: Clip, model_cfg: ModelConfig, data_cfg: DataConfig
) -> tuple[tuple[float, float] | None, int | None]:
    """What every view needs: the video's (duration, fps), None if no window is cut from a
    video; the sound track's length N_a in log-mel rows, None if the model reads no audio or
    there is none."""
    read_video = "video" in model_cfg.modalities
    if read_video and clip.video is None:
        raise MediaError(f"{clip.key}: clip has no video file but the model reads video")
    timing = None
    if clip.video is not None and (read_video or data_cfg.sampling == "window"):
        timing = _read(clip, clip.video, lambda: reader.video_info(clip))
    sound = None
    if "audio" in model_cfg.modalities and clip.has_audio:
        sound = _read(clip, clip.audio or clip.video, lambda: reader.audio_frames(clip))
    return timing, sound


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
    rows: Callable[[int, int], torch.Tensor],
    length: int | None,
    span: tuple[float, float] | None,
    model_cfg: ModelConfig,
    data_cfg: DataConfig,
    train: bool,
    view: int,
    views: int,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """One normalised (T_a, F) window of a track of ``length`` log-mel rows, aligned with the
    view's video window ``span`` as the module docstring says; ``rows(start, count)`` reads
    only that window."""
    target = model_cfg.audio_frames
    if length is None:  # no sound (missing_audio=silence): zeros, flagged by has_audio
        return torch.zeros(target, model_cfg.mel_bins)
    centre = None
    if data_cfg.sampling == "window" and span is not None:
        centre = 0.5 * (span[0] + span[1])  # seconds
    start = audio_window_start(
        length, target, centre=centre, train=train, view=view, num_views=views,
        generator=generator,
    )  # fmt: skip
    x = pad_or_cut(rows(start, target), target).float()  # (T_a, F)
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
    reader = MediaReader(
        resolve_short_side(model_cfg, data_cfg), model_cfg.mel_bins, on_short=data_cfg.on_short
    )
    try:
        inputs = load_views(
            reader, clip, model_cfg, data_cfg, train=False, views=views, crops=crops
        )
    finally:
        reader.close()
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
