"""Clips -> model inputs: sample frames, cut the aligned audio window, augment, label.

One item of :class:`AVDataset` is a dict::

    video     float32 (T, 3, S, S)        eval with views > 1: (V, T, 3, S, S)
    audio     float32 (T_a, F)            normalised log-mel;  eval with views > 1: (V, T_a, F)
    has_audio bool                        False: the clip has no sound, ``audio`` is zeros
    label     int64 ()                    multi-label: float32 (C,) multi-hot
    index     int                         position in the dataset (``dataset.clips[index]``)

``video`` / ``audio`` are present only if ``model_cfg.modalities`` names them. V is
``views * crops`` (temporal views outer, crops inner); items are multi-view whenever V > 1,
so ``crops=3`` with a single temporal view gives V = 3.

Where the pixels and the log-mel come from is a :class:`ClipReader`: :class:`MediaReader`
decodes the media files, ``mbt.data.cache.CacheReader`` reads a prepared cache. Sampling,
alignment and augmentation are the code below, shared by both.

Audio alignment: the audio window (``model_cfg.audio_frames`` x 10 ms) is cut from the clip's
whole log-mel. In ``window`` sampling it is centred on the centre of the sampled video window,
clamped to the sound's length; in ``uniform`` sampling the video window is the whole clip, so
the audio window is placed like a video window of its own: random in training, centred at test,
or evenly spread over the clip for the temporal views.

Randomness: each item draws from a ``torch.Generator`` seeded with (seed, epoch, index), so a
run is reproducible whatever the number of workers. Call :meth:`AVDataset.set_epoch` before each
epoch (with ``persistent_workers=False``, the default, workers get the new epoch).

Shape vocabulary: V views, T frames, S crop size, T_a audio frames, F mel bins, C classes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from mbt.config import DataConfig, ModelConfig
from mbt.data.audio import load_audio, log_mel, normalize_fbank
from mbt.data.layouts import Clip
from mbt.data.transforms import VideoTransform, spec_augment
from mbt.data.video import MediaError, probe_video, read_frames, sample_times, window_span

log = logging.getLogger(__name__)

FBANK_RATE = 100  # log-mel frames per second (10 ms hop)


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
        info = probe_video(_need(clip.video, clip))
        return info.duration, info.fps

    def frames(self, clip: Clip, times: Sequence[float]) -> torch.Tensor:
        return read_frames(_need(clip.video, clip), times, short_side=self.short_side)

    def fbank(self, clip: Clip) -> torch.Tensor:
        # The whole track, then a slice: the same features as the cache stores, and the
        # window can be clamped to the sound's true length (a wav may be shorter than the mp4).
        wav = load_audio(_need(clip.audio or clip.video, clip))  # (N,) 16 kHz mono
        return log_mel(wav, num_mel_bins=self.mel_bins)  # (N_a, F)


def _need(path: Any, clip: Clip) -> Any:
    if path is None:
        raise MediaError(f"{clip.key}: the clip has no video file")
    return path


def resolve_short_side(model_cfg: ModelConfig, data_cfg: DataConfig) -> int:
    """Short side frames are resized to before cropping: ``resize_short`` or S * 256 / 224."""
    return data_cfg.resize_short or model_cfg.image_size * 256 // 224


def item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator seeded from (seed, epoch, index) only: per-item randomness that does not
    depend on which worker loads the item or in what order."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class AVDataset(Dataset):
    """Audio-visual clips as model inputs (see the module docstring for the item contract).

    Args:
        clips: The clips (e.g. ``scan(...).train``).
        classes: Class names in id order (their number sets the multi-hot size).
        model_cfg: Input sizes: ``modalities``, ``image_size``, ``num_frames``,
            ``audio_frames``, ``mel_bins``.
        data_cfg: Sampling, normalisation and augmentation options.
        train: Random sampling and augmentation (True) or deterministic views (False).
        multi_label: Labels as float multi-hot (C,) instead of an int64 class id.
        views: Temporal views at evaluation (e.g. ``data_cfg.test_clips``). Must be 1 in
            training.
        crops: Spatial crops per temporal view at evaluation (1 or 3, e.g.
            ``data_cfg.test_crops``), independent of ``views``; each item stacks
            ``V = views * crops`` views when V > 1. None (default): ``data_cfg.test_crops``
            when ``views > 1``, else 1 (a cheap single-view validation). Must be 1 in training.
        seed: Base seed of the per-item generators.
        on_error: ``"raise"`` a :class:`MediaError` naming the file when a clip fails to
            decode, or ``"skip"``: return None (logged once per file) and let
            :func:`collate_skip_failed` drop it from the batch.
        reader: Source of frames and log-mels (default: decode the media files).
    """

    def __init__(
        self,
        clips: Sequence[Clip],
        classes: Sequence[str],
        model_cfg: ModelConfig,
        data_cfg: DataConfig,
        *,
        train: bool,
        multi_label: bool = False,
        views: int = 1,
        crops: int | None = None,
        seed: int = 0,
        on_error: Literal["raise", "skip"] = "raise",
        reader: ClipReader | None = None,
    ) -> None:
        if views < 1 or (train and views != 1):
            raise ValueError(f"views must be >= 1 (and 1 in training), got {views}")
        if crops is None:
            crops = data_cfg.test_crops if views > 1 and not train else 1
        if crops not in (1, 3) or (train and crops != 1):
            raise ValueError(f"crops must be 1 or 3 (and 1 in training), got {crops}")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.clips = list(clips)
        self.classes = list(classes)
        self.model_cfg = model_cfg
        self.data_cfg = data_cfg
        self.train = train
        self.multi_label = multi_label
        self.views = views
        self.crops = crops
        self.seed = seed
        self.epoch = 0
        self.on_error = on_error
        self.short_side = resolve_short_side(model_cfg, data_cfg)
        self.reader = reader or MediaReader(self.short_side, model_cfg.mel_bins)
        self.load_video = "video" in model_cfg.modalities
        self.load_audio = "audio" in model_cfg.modalities
        self.transform = VideoTransform(
            model_cfg.image_size,
            train=train,
            resize_short=self.short_side,
            crop_scale=data_cfg.crop_scale,
            hflip=data_cfg.hflip,
            normalization=data_cfg.normalization,
            crops=self.crops,
        )
        self._logged: set[str] = set()
        for c in self.clips:
            bad = [i for i in c.labels if not 0 <= i < len(self.classes)]
            if bad or not c.labels or (len(c.labels) > 1 and not multi_label):
                raise ValueError(
                    f"{c.key}: labels {c.labels} do not fit {len(self.classes)} classes"
                    + ("" if multi_label else " (single-label)")
                )

    def __len__(self) -> int:
        return len(self.clips)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation of ``epoch`` (items are reproducible per (seed, epoch))."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        clip = self.clips[index]
        try:
            return self._load(index, clip)
        except MediaError as e:
            if self.on_error == "raise":
                raise
            if clip.key not in self._logged:  # once per file (and per worker process)
                self._logged.add(clip.key)
                log.warning("skipping clip %s: %s", clip.key, e)
            return None

    # --- one item -------------------------------------------------------------------------

    def _load(self, index: int, clip: Clip) -> dict[str, Any]:
        g = item_generator(self.seed, self.epoch, index)
        mcfg, dcfg = self.model_cfg, self.data_cfg
        n_views = self.views
        multi_view = n_views * self.crops > 1  # items stack V = views * crops views
        if self.load_video and clip.video is None:
            raise MediaError(f"{clip.key}: clip has no video file but the model reads video")
        video_views, audio_views = [], []
        duration = fps = None
        if clip.video is not None and (self.load_video or dcfg.sampling == "window"):
            duration, fps = self._guard(clip, lambda: self.reader.video_info(clip), clip.video)
        fbank = None
        if self.load_audio and clip.has_audio:
            audio_file = clip.audio or clip.video
            fbank = self._guard(clip, lambda: self.reader.fbank(clip), audio_file)  # (N_a, F)
        for view in range(n_views):
            centre = None
            if duration is not None:
                span = window_span(
                    duration, mcfg.num_frames, mode=dcfg.sampling, fps=fps,
                    stride=dcfg.frame_stride, train=self.train, view=view, num_views=n_views,
                    generator=g,
                )  # fmt: skip
                if dcfg.sampling == "window":
                    centre = 0.5 * (span[0] + span[1])
                if self.load_video:
                    times = sample_times(
                        duration, mcfg.num_frames, mode=dcfg.sampling, fps=fps,
                        stride=dcfg.frame_stride, train=self.train, view=view,
                        num_views=n_views, generator=g, span=span,
                    )  # fmt: skip
                    read = lambda t=times: self.reader.frames(clip, t)  # noqa: E731
                    frames = self._guard(clip, read, clip.video)
                    video_views.append(self.transform(frames, generator=g))  # ([crops,] T, 3, S, S)
            if self.load_audio:
                audio_views.append(self._audio_view(fbank, centre, view, g))  # (T_a, F)
        item: dict[str, Any] = {}
        if self.load_video:
            if not multi_view:
                item["video"] = video_views[0]  # (T, 3, S, S)
            else:
                v = torch.stack(video_views)  # (views, [crops,] T, 3, S, S)
                item["video"] = v.reshape(-1, *v.shape[-4:])  # (V, T, 3, S, S)
        if self.load_audio:
            a = torch.stack(audio_views)  # (views, T_a, F)
            if multi_view:
                a = a.repeat_interleave(self.crops, dim=0)  # (V, T_a, F), same sound per crop
                item["audio"] = a
            else:
                item["audio"] = a[0]  # (T_a, F)
        item["has_audio"] = bool(clip.has_audio)
        item["label"] = self._label(clip)
        item["index"] = index
        return item

    def _audio_view(
        self, fbank: torch.Tensor | None, centre: float | None, view: int, g: torch.Generator
    ) -> torch.Tensor:
        """One normalised (T_a, F) window, aligned as the module docstring says."""
        target = self.model_cfg.audio_frames
        if fbank is None:  # no sound (missing_audio=silence): zeros, flagged by has_audio
            return torch.zeros(target, self.model_cfg.mel_bins)
        start = audio_window_start(
            len(fbank), target, centre=centre, train=self.train, view=view,
            num_views=self.views, generator=g,
        )  # fmt: skip
        x = fbank[start : start + target].float()  # (<= T_a, F)
        if len(x) < target:  # a short clip: pad with zeros before normalising, as AST does
            x = torch.nn.functional.pad(x, (0, 0, 0, target - len(x)))  # (T_a, F)
        x = normalize_fbank(x, self.data_cfg.audio_mean, self.data_cfg.audio_std)
        if self.train:
            d = self.data_cfg
            x = spec_augment(
                x, freq_masks=d.freq_masks, freq_width=d.freq_mask_width,
                time_masks=d.time_masks, time_width=d.time_mask_width, generator=g,
            )  # fmt: skip
        return x

    def _label(self, clip: Clip) -> torch.Tensor:
        if not self.multi_label:
            return torch.tensor(clip.labels[0], dtype=torch.int64)
        y = torch.zeros(len(self.classes), dtype=torch.float32)  # (C,)
        y[list(clip.labels)] = 1.0
        return y

    @staticmethod
    def _guard(clip: Clip, fn: Any, path: Any = None) -> Any:
        """Run a decode step; any failure becomes a one-line :class:`MediaError` naming the
        file being read (``path``; else the clip's video or audio file, else its key)."""
        try:
            return fn()
        except MediaError:
            raise  # already names its file
        except Exception as e:  # a decoder bug or an unexpected file: still name the file
            name = str(path or clip.video or clip.audio or clip.key)
            text = " ".join(str(e).split()).removeprefix(f"{name}: ")  # one line, path once
            raise MediaError(f"{name}: {type(e).__name__}: {text}".rstrip(": ")) from e


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


def collate_skip_failed(batch: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """``default_collate`` of the items that loaded; None if every item of the batch failed.

    Use with ``AVDataset(on_error="skip")``: failed clips are dropped from the batch (and
    logged by the dataset), never replaced by zeros with a made-up label.
    """
    items = [b for b in batch if b is not None]
    return default_collate(items) if items else None
