"""Clips -> training and evaluation items: the front-end's views, a label, per-item seeds.

One item of :class:`AVDataset` is a dict::

    video     uint8 (T, 3, S, S)          cropped pixels; eval with views > 1: (V, T, 3, S, S)
    audio     float32 (T_a, F)            normalised log-mel;  eval with views > 1: (V, T_a, F)
    has_audio bool                        False: the clip has no sound, ``audio`` is zeros
    label     int64 ()                    multi-label: float32 (C,) multi-hot; absent when
                                          the clips carry no labels (``labelled=False``)
    index     int                         position in the dataset (``dataset.clips[index]``)

``video`` is uint8 (a quarter of the bytes of float32 to collate and copy to the device): the
training step and evaluation normalise it on the device with
:func:`mbt.data.transforms.normalize_video` (``data.normalization``).
``video`` / ``audio`` are present only if ``model_cfg.modalities`` names them. V is
``views * crops`` (temporal views outer, crops inner); items are multi-view whenever V > 1,
so ``crops=3`` with a single temporal view gives V = 3.

Sampling, decoding, cropping, audio alignment and augmentation are the one clip front-end,
:func:`mbt.data.clip.load_views`; where the pixels and the log-mel come from is a
:class:`~mbt.data.clip.ClipReader` (the media files, or ``mbt.data.cache.CacheReader``).

Randomness: each item draws from a ``torch.Generator`` seeded with (seed, epoch, index), so a
run is reproducible whatever the number of workers. Call :meth:`AVDataset.set_epoch` before each
epoch (with ``persistent_workers=False``, the default, workers get the new epoch).

Failures: a clip whose file cannot be read raises a one-line :class:`MediaError`, or with
``on_error="skip"`` is logged and left out of its batch (:func:`collate_skip_failed`). Only
media errors are skipped; any other exception is a bug and propagates. A truncated file (its
header promises more than decodes) follows ``data.on_short``: ``skip`` (default) is such a
media error, ``error`` raises even with ``on_error="skip"``, ``pad`` reads it padded (logged).

Shape vocabulary: V views, T frames, S crop size, T_a audio frames, F mel bins, C classes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from mbt.config import DataConfig, ModelConfig
from mbt.data.clip import (
    ClipReader,
    MediaReader,
    load_views,
    resolve_short_side,
)
from mbt.data.layouts import Clip
from mbt.data.video import MediaError, TruncatedMediaError

log = logging.getLogger(__name__)


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
        labelled: False for clips without labels (a predictor's inputs): items carry no
            ``label`` and the clips' labels are not checked against ``classes``.
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
        labelled: bool = True,
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
        self.labelled = labelled
        self.views = views
        self.crops = crops
        self.seed = seed
        self.epoch = 0
        self.on_error = on_error
        short_side = resolve_short_side(model_cfg, data_cfg)  # checks it fits the crop
        self.reader = reader or MediaReader(
            short_side, model_cfg.mel_bins, on_short=data_cfg.on_short
        )
        self._logged: set[str] = set()
        for c in self.clips if labelled else ():
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
        return self.read(index, self.reader)

    def read(self, index: int, reader: ClipReader) -> dict[str, Any] | None:
        """Item ``index`` with its pixels and log-mel from ``reader``: ``dataset[index]`` passes
        the data set's own; a shard stream passes one over the clip's members from its tar."""
        clip = self.clips[index]
        try:
            return self._load(index, clip, reader)
        except MediaError as e:
            # data.on_short=error: a truncated file stops the run even where others are skipped
            stop = isinstance(e, TruncatedMediaError) and self.data_cfg.on_short == "error"
            if self.on_error == "raise" or stop:
                raise
            if clip.key not in self._logged:  # once per file (and per worker process)
                self._logged.add(clip.key)
                log.warning("skipping clip %s: %s", clip.key, e)
            return None

    def _load(self, index: int, clip: Clip, reader: ClipReader) -> dict[str, Any]:
        views = load_views(
            reader, clip, self.model_cfg, self.data_cfg, train=self.train, views=self.views,
            crops=self.crops, generator=item_generator(self.seed, self.epoch, index),
        )  # fmt: skip
        multi_view = self.views * self.crops > 1
        item: dict[str, Any] = {k: v if multi_view else v[0] for k, v in views.items()}
        item["has_audio"] = bool(clip.has_audio)
        if self.labelled:
            item["label"] = self._label(clip)
        item["index"] = index
        return item

    def _label(self, clip: Clip) -> torch.Tensor:
        if not self.multi_label:
            return torch.tensor(clip.labels[0], dtype=torch.int64)
        y = torch.zeros(len(self.classes), dtype=torch.float32)  # (C,)
        y[list(clip.labels)] = 1.0
        return y


def collate_skip_failed(batch: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """``default_collate`` of the items that loaded; None if every item of the batch failed.

    Use with ``AVDataset(on_error="skip")``: failed clips are dropped from the batch (and
    logged by the dataset), never replaced by zeros with a made-up label.
    """
    items = [b for b in batch if b is not None]
    return default_collate(items) if items else None
