"""Clips -> batches for training, evaluation and prediction, whatever the clips are stored in.

Two calls, the same for every consumer::

    source = open_source(data_cfg, model_cfg)     # where the clips come from (chosen here only)
    loader = build_loader(source, "train", train=True, batch_size=8, rank=r, world_size=w)
    for epoch in ...:
        loader.set_epoch(epoch)                   # this epoch's order and augmentation
        for batch in loader: ...                  # len(loader) batches, None if all clips failed

The sources (:func:`open_source` picks one from the config; a list of clips is a
:class:`MediaSource` built by hand, e.g. a predictor's inputs without labels):

==============  ==========================================  ==================================
source          when                                        items
==============  ==========================================  ==================================
MediaSource     ``data.root`` (scanned: ``layouts.scan``)   decoded from the media files
CacheSource     ``data.cache`` holds ``index.json``         read from ``mbt prepare``'s cache
ShardSource     ``data.cache`` holds ``shards.json``        streamed from ``--shards`` tars
==============  ==========================================  ==================================

Every source gives the same items (:class:`~mbt.data.dataset.AVDataset`'s contract, the one
front-end :func:`mbt.data.clip.load_views`, randomness seeded per (seed, epoch, clip)). What
:func:`build_loader` guarantees, whatever the source:

* **Training** (``train=True``): a different order every epoch, a function of (seed, epoch);
  every rank takes the same number of steps (DDP needs it). Media and cache:
  ``DistributedSampler`` (shuffled, seeded; it pads a split that does not divide by the world
  size with repeats, torch's rule). Shards: the epoch's :class:`~mbt.data.shards.ShardPlan`
  and :class:`~mbt.data.shards.ShardLoader` (no repeats; a rotating shard left out per epoch).
* **Evaluation and prediction** (``train=False``): every clip exactly once over all ranks and
  loader workers, no shuffling, no padding (rank ``r`` reads clips ``r, r + W, ...``, or shards
  ``r, r + W, ...``); gather results by the items' ``index`` (their position in the split).
* **Failures**: with ``on_error="skip"`` a clip that fails to load is logged and dropped from
  its batch (a batch whose every clip failed is None), never replaced by a made-up item.
* **Workers**: ``data.num_workers`` forked loader processes (:mod:`mbt.data.video` keeps
  them from freeing the FFmpeg objects they inherit, which deadlocks with PyAV 18).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from mbt.config import DataConfig, ModelConfig
from mbt.data.cache import CachedDataset
from mbt.data.dataset import AVDataset, collate_skip_failed
from mbt.data.layouts import Clip, ScanReport, scan
from mbt.data.shards import ShardLoader, ShardStream, is_shard_folder

__all__ = [
    "CacheSource",
    "EvalSampler",
    "Loader",
    "MediaSource",
    "ShardSource",
    "Source",
    "build_loader",
    "open_source",
]


# ---------------------------------------------------------------------------------------------
# sources


class Source(Protocol):
    """Where the clips of a data set come from, and the settings its items are made with."""

    model_cfg: ModelConfig
    data_cfg: DataConfig

    def describe(self) -> str:
        """What was found, for the user (a scan report, or which cache)."""
        ...

    def dataset(self, split: str, *, rank: int = 0, world_size: int = 1, **items: Any) -> Dataset:
        """The items of ``split``: ``items`` are :class:`~mbt.data.dataset.AVDataset`'s
        ``train``, ``views``, ``crops``, ``seed`` and ``on_error``; a streamed source gives only
        the share of process ``rank`` of ``world_size`` (an ``IterableDataset``), the others
        every item (the loader's sampler splits them)."""
        ...


@dataclass(frozen=True)
class MediaSource:
    """Clips decoded from their media files: a scanned data set's splits, or any list of clips.

    Args:
        splits: The clips of each split by name (a predictor: one split of its inputs).
        classes: Class names in id order.
        multi_label: Labels as multi-hot vectors.
        labelled: False: the clips carry no labels (items without ``label``).
        report: The scan report (None for a list made by hand).
    """

    splits: Mapping[str, Sequence[Clip]]
    classes: Sequence[str]
    model_cfg: ModelConfig
    data_cfg: DataConfig
    multi_label: bool = False
    labelled: bool = True
    report: ScanReport | None = None

    def describe(self) -> str:
        if self.report is not None:
            return self.report.format()
        return f"data: {sum(len(c) for c in self.splits.values())} media clips"

    def dataset(self, split: str, *, rank: int = 0, world_size: int = 1, **items: Any) -> AVDataset:
        if split not in self.splits:
            raise ValueError(f"split must be one of {', '.join(self.splits)}, got {split!r}")
        return AVDataset(
            self.splits[split], self.classes, self.model_cfg, self.data_cfg,
            multi_label=self.multi_label, labelled=self.labelled, **items,
        )  # fmt: skip


@dataclass(frozen=True)
class CacheSource:
    """A clip cache written by ``mbt prepare`` (:mod:`mbt.data.cache`)."""

    folder: Path
    model_cfg: ModelConfig
    data_cfg: DataConfig

    def describe(self) -> str:
        return f"data: prepared cache {self.folder}"

    def dataset(self, split: str, *, rank: int = 0, world_size: int = 1, **items: Any) -> AVDataset:
        return CachedDataset(self.folder, split, self.model_cfg, self.data_cfg, **items)


@dataclass(frozen=True)
class ShardSource:
    """Tar shards written by ``mbt prepare --shards`` (:mod:`mbt.data.shards`), streamed."""

    folder: Path
    model_cfg: ModelConfig
    data_cfg: DataConfig

    def describe(self) -> str:
        return f"data: prepared cache {self.folder} (tar shards)"

    def dataset(
        self, split: str, *, rank: int = 0, world_size: int = 1, **items: Any
    ) -> ShardStream:
        return ShardStream(
            self.folder, split, self.model_cfg, self.data_cfg, rank=rank, world_size=world_size,
            **items,
        )  # fmt: skip


def open_source(data_cfg: DataConfig, model_cfg: ModelConfig) -> Source:
    """The source the config names: ``data.cache`` (shards or a clip cache) when set, else the
    media under ``data.root``, scanned once here (clips with a video if the model reads video,
    with sound if it reads audio).

    Raises:
        ValueError: no data set at ``data.root`` (the scan's one-line errors); a cache that is
            not one is refused when a split is opened.
    """
    if data_cfg.cache:
        folder = Path(data_cfg.cache)
        kind = ShardSource if is_shard_folder(folder) else CacheSource
        return kind(folder, model_cfg, data_cfg)
    modalities = model_cfg.modalities
    index = scan(
        data_cfg.root, data_cfg,
        require_video="video" in modalities, need_audio="audio" in modalities,
    )  # fmt: skip
    splits = {name: index.split(name) for name in ("train", "val", "test")}
    return MediaSource(
        splits, index.classes, model_cfg, data_cfg, multi_label=index.multi_label,
        report=index.report,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# loaders


class EvalSampler(Sampler[int]):
    """Every ``world_size``-th index from ``rank``, in order, without padding: the ranks read
    each clip exactly once (``DistributedSampler`` repeats clips to even the ranks out)."""

    def __init__(self, n: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, n, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class Loader:
    """One split's batches for this process (see the module docstring for the guarantees).

    Attributes:
        dataset: The items (``dataset.clips``: the split's clips, by the items' ``index``).
        split_size: Clips in the split, all ranks together.
        clips_per_epoch: Clips this process reads per epoch (failed ones included).
    """

    def __init__(
        self,
        dataset: Dataset,
        batches: Iterable[dict[str, Any] | None],
        *,
        split_size: int,
        clips_per_epoch: int,
        reseed: tuple[Any, ...] = (),
    ) -> None:
        self.dataset, self.split_size, self.clips_per_epoch = dataset, split_size, clips_per_epoch
        self._batches, self._reseed = batches, reseed

    @property
    def classes(self) -> list[str]:
        return list(self.dataset.classes)

    @property
    def multi_label(self) -> bool:
        return bool(self.dataset.multi_label)

    def set_epoch(self, epoch: int) -> None:
        """Select the order and augmentation of ``epoch`` (0-based); call before each training
        epoch. Evaluation loaders read the same clips in the same order every epoch."""
        for part in self._reseed:
            part.set_epoch(epoch)

    def __len__(self) -> int:
        """Batches per epoch (a streamed evaluation split: ``ceil(clips / batch_size)``, one
        more per extra loader worker at most, as each worker's last batch may be short)."""
        return len(self._batches)

    def __iter__(self) -> Iterator[dict[str, Any] | None]:
        return iter(self._batches)


def build_loader(
    source: Source,
    split: str,
    *,
    train: bool,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    views: int = 1,
    crops: int | None = None,
    seed: int = 0,
    on_error: Literal["raise", "skip"] = "skip",
    pin_memory: bool = False,
) -> Loader:
    """The batches of ``split`` that process ``rank`` of ``world_size`` reads.

    Args:
        source: From :func:`open_source`, or a :class:`MediaSource` of any clips.
        split: ``"train"``, ``"val"``, ``"test"`` (a :class:`MediaSource`: its split names).
        train: Training order and augmentation (shuffled per epoch, equal steps per rank), or
            evaluation (every clip once over the ranks, in order, deterministic views).
        batch_size: Clips per batch on this process.
        rank, world_size: This process and the number of processes (DDP).
        views, crops: Temporal views x spatial crops per item at evaluation (as for
            :class:`~mbt.data.dataset.AVDataset`; 1 in training).
        seed: Seed of the order and of every item's randomness.
        on_error: ``"skip"`` clips that fail to load (logged, dropped from their batch) or
            ``"raise"`` their one-line ``MediaError``.
        pin_memory: Pin the batches (when they go to a CUDA device).
    """
    ds = source.dataset(
        split, train=train, views=views, crops=crops, seed=seed, on_error=on_error, rank=rank,
        world_size=world_size,
    )  # fmt: skip
    workers = source.data_cfg.num_workers
    if isinstance(ds, IterableDataset):  # a stream splits ranks and workers itself
        return _stream_loader(ds, train, batch_size, workers, pin_memory)
    if train:
        order: Sampler[int] = DistributedSampler(
            ds, num_replicas=world_size, rank=rank, shuffle=True, seed=seed
        )
        reseed: tuple[Any, ...] = (order, ds)
    else:
        order, reseed = EvalSampler(len(ds), rank, world_size), ()
    batches = _dataloader(ds, batch_size, order, workers, pin_memory)
    return Loader(ds, batches, split_size=len(ds), clips_per_epoch=len(order), reseed=reseed)


def _stream_loader(
    stream: ShardStream, train: bool, batch_size: int, workers: int, pin_memory: bool
) -> Loader:
    """Training: :class:`ShardLoader` (exactly ``batch_size`` clips a batch, the same steps on
    every rank); evaluation: the workers' batches as they come."""
    if train:
        batches: Iterable = ShardLoader(stream, batch_size, workers, pin_memory=pin_memory)
    else:
        batches = _dataloader(stream, batch_size, None, workers, pin_memory)
    return Loader(
        stream, batches, split_size=stream.split_size, clips_per_epoch=len(stream),
        reseed=(stream,) if train else (),
    )  # fmt: skip


def _dataloader(
    ds: Dataset, batch_size: int, sampler: Sampler[int] | None, workers: int, pin_memory: bool
) -> DataLoader:
    """A loader whose batches drop the clips that failed to load (None: all of them)."""
    return DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_skip_failed,
        pin_memory=pin_memory,
        drop_last=False,
    )
