"""A prepared cache as WebDataset-style tar shards, streamed and split over ranks and workers.

``mbt prepare DATA --out CACHE --shards`` packs the clip cache into ``CACHE/shards``
(:func:`write_shards`)::

    shards.json               settings, classes, per split: its clips in order and its shards
    train-000000.tar ...      ``clips_per_shard`` clips each (the last of a split may hold fewer)
    val-000000.tar ...

A shard is a plain POSIX tar whose members follow the WebDataset naming: the members of a clip
are consecutive and share a key (``<split>-<position in the split>``), the extension says what
each holds::

    train-0000042.json        the clip's cache entry, its key and its position ("index")
    train-0000042.jpgs        its frames blob (mbt.data.cache format; .frames.npy for raw)
    train-0000042.fbank.npy   its float16 log-mel

so ``webdataset``, DALI or ``tar tf`` read them as well. The shards are written and read with
the standard library's ``tarfile``, not the ``webdataset`` package: reading costs the same
(a memcpy-bound ~3 ms per clip either way), and what the package would add is either not
wanted here (its default decoders unpickle ``.pyd`` / ``.pickle`` members; its rank split does
not give ranks equal sample counts) or a few lines (splitting a list of shards).

Training reads a split as a stream (:class:`ShardStream`, an ``IterableDataset``):

* **Epoch order** (:class:`ShardPlan`): the shards in an order drawn from (seed, epoch), the
  same on every rank; rank ``r`` of ``W`` reads every ``W``-th of them from position ``r``,
  DataLoader worker ``w`` of ``K`` every ``K``-th of those: no clip is read twice.
* **Equal work per rank**: DDP needs every rank to take the same number of steps. ``n % W``
  shards are left out of each epoch (a different ``n % W`` every epoch, rotating through the
  shards, so nothing is left out for good), and every rank takes the same number of clips:
  the sum of the ``n // W`` smallest shard sizes (when the split has a short last shard, the
  ranks without it leave out that many clips more). Workers collate chunks of their own
  clips; :class:`ShardLoader` cuts and joins the chunks into batches in the training process,
  so the step count does not depend on how clips fell to workers.
* **Mixing**: each worker passes its clips through a shuffle buffer seeded by (seed, epoch,
  rank, worker); clips stay as raw bytes until they leave it.
* **Items**: the augmentation draws from ``item_generator(seed, epoch, clip position)``, so an
  item is the item :class:`mbt.data.cache.CachedDataset` gives for that clip and epoch,
  whatever the rank, worker or order.
* **Resume** happens at epoch boundaries in this project: the order is a function of
  (seed, epoch), so nothing needs to be stored.

Evaluation streams (``train=False``) read every shard once, rank ``r`` shards ``r, r + W, ...``
(no clip left out; the evaluation gathers and orders the logits by clip position).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import tarfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import torch
import torch.distributed as tdist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mbt.config import DataConfig, ModelConfig
from mbt.data.cache import (
    CacheReader,
    cache_lock,
    check_settings,
    entry_clip,
    read_index,
)
from mbt.data.dataset import AVDataset, collate_skip_failed
from mbt.data.video import MediaError
from mbt.files import atomic_path, write_atomic

log = logging.getLogger(__name__)

CLIPS_PER_SHARD = 64  # ~170 MB of UCF101-sized clips: a unit of work, not a whole epoch
SHUFFLE_BUFFER = 32  # clips per worker held for mixing (~90 MB of UCF101-sized clips)
FORMAT = "mbt-shards"
SPLITS = ("train", "val", "test")
# Member extensions: the cache entry's file suffix -> the member's extension.
MEMBERS = {".jpgs": "jpgs", ".fbank.npy": "fbank.npy", ".npy": "frames.npy"}


def is_shard_folder(path: str | Path) -> bool:
    """Whether ``path`` holds shards written by :func:`write_shards`."""
    return (Path(path) / "shards.json").is_file()


# ---------------------------------------------------------------------------------------------
# writing


@dataclass
class ShardReport:
    """What :func:`write_shards` did."""

    out: str
    shards: int = 0  # shards in the folder after this run
    written: int = 0  # (re)written by this run
    clips: int = 0
    bytes: int = 0
    seconds: float = 0.0

    def format(self) -> str:
        return (
            f"shards {self.out}: {self.shards} shards ({self.written} written, "
            f"{self.shards - self.written} unchanged), {self.clips} clips, "
            f"{self.bytes / 2**20:.1f} MiB, {self.seconds:.1f} s"
        )


def write_shards(
    cache: str | Path,
    out: str | Path | None = None,
    *,
    clips_per_shard: int = CLIPS_PER_SHARD,
    wait: bool = False,
) -> ShardReport:
    """Pack a prepared cache into tar shards (module docstring), per split.

    A shard whose clips did not change since the last run is kept as it is; shards no longer
    listed are deleted. Each shard is written to a temporary name and renamed, and
    ``shards.json`` last, so an interrupted run leaves the previous shards readable.

    Args:
        cache: A cache folder written by :func:`mbt.data.cache.prepare`.
        out: Where the shards go (default ``cache/shards``).
        clips_per_shard: Clips per shard (the last shard of a split may hold fewer).
        wait: Wait for a prepare run writing ``cache`` instead of refusing.

    Raises:
        CacheBusyError: a prepare run is writing ``cache`` (and not ``wait``).
    """
    if clips_per_shard < 1:
        raise ValueError(f"clips_per_shard must be >= 1, got {clips_per_shard}")
    start, cache = time.monotonic(), Path(cache)
    out = Path(out) if out is not None else cache / "shards"
    report = ShardReport(out=str(out))
    with cache_lock(cache, wait):  # the clip files must not change while they are packed
        index = read_index(cache)
        out.mkdir(parents=True, exist_ok=True)
        old = _old_shards(out)
        splits = {
            s: _write_split(cache, out, index, s, clips_per_shard, old, report) for s in SPLITS
        }
        listed = {sh["name"] for s in splits.values() for sh in s["shards"]}
        data = {
            "format": FORMAT, "root": index["root"], "settings": index["settings"],
            "classes": index["classes"], "multi_label": index["multi_label"],
            "clips_per_shard": clips_per_shard, "splits": splits,
            "clips": {k: index["clips"][k] for s in splits.values() for k in s["keys"]},
        }  # fmt: skip
        write_atomic(out / "shards.json", json.dumps(data, indent=1), "the shards are unchanged")
        for p in out.glob("*.tar"):
            if p.name not in listed:
                p.unlink()
    report.shards, report.seconds = len(listed), time.monotonic() - start
    return report


def _old_shards(out: Path) -> dict[str, dict[str, Any]]:
    """The shards an earlier run listed, by name ({} when there is no readable list)."""
    try:
        data = json.loads((out / "shards.json").read_text())
        return {sh["name"]: sh for s in data["splits"].values() for sh in s["shards"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _write_split(
    cache: Path,
    out: Path,
    index: dict[str, Any],
    split: str,
    per_shard: int,
    old: dict[str, dict[str, Any]],
    report: ShardReport,
) -> dict[str, Any]:
    """Write one split's shards; its part of ``shards.json``."""
    keys = index["splits"][split]
    shards = []
    for first in range(0, len(keys), per_shard):
        name = f"{split}-{first // per_shard:06d}.tar"
        clips = [
            (first + i, k, index["clips"][k]) for i, k in enumerate(keys[first : first + per_shard])
        ]
        members = [(f"{split}-{i:07d}", k, e) for i, k, e in clips]
        fingerprint = hashlib.sha1(json.dumps(members, sort_keys=True).encode()).hexdigest()
        prev = old.get(name)
        same = prev is not None and prev.get("fingerprint") == fingerprint
        if not (same and (out / name).is_file() and (out / name).stat().st_size == prev["bytes"]):
            _write_tar(cache, out / name, members, split)
            report.written += 1
        size = (out / name).stat().st_size
        shards.append(
            {"name": name, "clips": len(clips), "bytes": size, "fingerprint": fingerprint}
        )
        report.clips += len(clips)
        report.bytes += size
    return {"keys": keys, "shards": shards}


def _write_tar(
    cache: Path, path: Path, members: list[tuple[str, str, dict[str, Any]]], split: str
) -> None:
    """One shard: per clip its json, frames and log-mel members, in that order."""
    with (
        atomic_path(path, "the previous shard is intact") as tmp,
        tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar,
    ):
        for name, key, entry in members:
            meta = {"key": key, "split": split, "index": int(name.rsplit("-", 1)[1]), **entry}
            _add(tar, f"{name}.json", json.dumps(meta).encode())
            for field in ("frames", "fbank"):
                if field in entry:
                    data = (cache / "clips" / entry[field]).read_bytes()
                    _add(tar, f"{name}.{_member_ext(entry[field])}", data)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)  # mtime 0, uid 0: the same clips give the same bytes
    info.size, info.mode = len(data), 0o444
    tar.addfile(info, io.BytesIO(data))


def _member_ext(file_name: str) -> str:
    """The member extension of a cache file (``x-1.fbank.npy`` -> ``fbank.npy``)."""
    for suffix, ext in MEMBERS.items():
        if file_name.endswith(suffix):
            return ext
    raise ValueError(f"{file_name}: not a cache file")


# ---------------------------------------------------------------------------------------------
# which shards a rank reads


class ShardPlan:
    """Which shards one rank reads in an epoch, and how many clips it takes (its "sampler").

    Training: the epoch's shard order is a permutation drawn from (seed, epoch); ``n % W``
    shards are left out (a rotating window over a fixed permutation of the shards, so each
    shard is left out once every ``ceil(n / (n % W))`` epochs); rank ``r`` reads every
    ``W``-th kept shard from position ``r`` and takes ``len(plan)`` clips: the same on every
    rank and every epoch. Evaluation: rank ``r`` reads shards ``r, r + W, ...``, all clips.

    Args:
        sizes: Clips in each shard of the split.
        train: The training plan (shuffled, equal per rank) or the evaluation plan.
        seed: Seed of the shard orders.
        rank, world_size: This process and the number of processes.
    """

    def __init__(
        self, sizes: list[int], *, train: bool, seed: int, rank: int, world_size: int
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world size {world_size}")
        if train and len(sizes) < world_size:
            raise ValueError(
                f"{len(sizes)} training shards for {world_size} processes: every process needs "
                "at least one (write smaller shards: prepare --clips-per-shard)"
            )
        self.sizes, self.train, self.seed = list(sizes), train, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def left_out(self) -> list[int]:
        """The training shards no rank reads this epoch."""
        n, drop = len(self.sizes), len(self.sizes) % self.world_size
        base = np.random.default_rng([self.seed, 0x5EED]).permutation(n)  # fixed for the run
        return sorted(int(base[(self.epoch * drop + j) % n]) for j in range(drop))

    def shards(self) -> list[int]:
        """This rank's shards this epoch, in reading order."""
        n, w = len(self.sizes), self.world_size
        if not self.train:
            return list(range(self.rank, n, w))
        out = set(self.left_out())
        order = np.random.default_rng([self.seed, self.epoch]).permutation(n)
        return [int(s) for s in order if s not in out][self.rank :: w]

    def __len__(self) -> int:
        """Clips this rank takes per epoch."""
        if not self.train:
            return sum(self.sizes[self.rank :: self.world_size])
        per_rank = len(self.sizes) // self.world_size
        return sum(sorted(self.sizes)[:per_rank])  # what the rank with the smallest gets


# ---------------------------------------------------------------------------------------------
# reading


class _MemberReader(CacheReader):
    """:class:`CacheReader` over one clip's members, read from ``shard`` (held in memory)."""

    def __init__(
        self,
        entries: dict[str, dict[str, Any]],
        mel_bins: int,
        shard: str,
        members: dict[str, bytes],
    ) -> None:
        super().__init__(Path(), entries, mel_bins)
        self.shard, self.members = shard, members

    def open(self, key: str, name: str) -> tuple[BinaryIO, str]:
        ext = _member_ext(name)
        if ext not in self.members:
            raise MediaError(f"{self.shard}: clip {key} has no {ext} member")
        return io.BytesIO(self.members[ext]), f"{self.shard}:{key}.{ext}"


class ShardStream(IterableDataset):
    """The items of one split of a shard folder, streamed (see the module docstring).

    Iterating yields this rank's clips of the epoch (``len(self)`` of them in training, fewer
    only if a shard cannot be read and ``on_error="skip"``), items as
    :class:`mbt.data.dataset.AVDataset`'s (failed clips as None with ``on_error="skip"``).

    Args:
        folder: The shard folder.
        split: ``"train"``, ``"val"`` or ``"test"``.
        model_cfg, data_cfg, train, views, crops, seed, on_error: as for
            :class:`~mbt.data.dataset.AVDataset`.
        rank, world_size: This process and the number of processes (default: the
            ``torch.distributed`` process group, if one is initialised).
        shuffle_buffer: Clips each worker holds for mixing (training).
    """

    def __init__(
        self,
        folder: str | Path,
        split: str,
        model_cfg: ModelConfig,
        data_cfg: DataConfig,
        *,
        train: bool,
        views: int = 1,
        crops: int | None = None,
        seed: int = 0,
        on_error: Literal["raise", "skip"] = "raise",
        rank: int | None = None,
        world_size: int | None = None,
        shuffle_buffer: int = SHUFFLE_BUFFER,
    ) -> None:
        self.folder = Path(folder)
        data = open_shards(self.folder, model_cfg, data_cfg)
        if split not in data["splits"]:
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        part, self.entries = data["splits"][split], data["clips"]
        self.mel_bins = model_cfg.mel_bins
        clips = [entry_clip(k, self.entries[k], data["root"]) for k in part["keys"]]
        # Items are read through a reader of their own members (_item); this one has none.
        no_members = _MemberReader(self.entries, self.mel_bins, str(self.folder), {})
        self.items = AVDataset(
            clips, data["classes"], model_cfg, data_cfg, train=train,
            multi_label=data["multi_label"], views=views, crops=crops, seed=seed,
            on_error=on_error, reader=no_members,
        )  # fmt: skip
        self.clips, self.classes, self.multi_label = clips, data["classes"], data["multi_label"]
        self.paths = [self.folder / sh["name"] for sh in part["shards"]]
        rank, world_size = _process(rank, world_size)
        sizes = [sh["clips"] for sh in part["shards"]]
        self.order = ShardPlan(sizes, train=train, seed=seed, rank=rank, world_size=world_size)
        self.train, self.seed, self.on_error = train, seed, on_error
        self.shuffle_buffer = shuffle_buffer

    def __len__(self) -> int:
        return len(self.order)

    @property
    def split_size(self) -> int:
        """Clips in the split (all ranks)."""
        return len(self.clips)

    def set_epoch(self, epoch: int) -> None:
        """Select the shard order and the augmentation of ``epoch``."""
        self.order.set_epoch(epoch)
        self.items.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict[str, Any] | None]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        samples = self._samples([self.paths[s] for s in self.order.shards()[worker::workers]])
        if self.train:
            state = [self.seed, self.order.epoch, self.order.rank, worker]
            samples = _shuffled(samples, self.shuffle_buffer, np.random.default_rng(state))
        for shard, index, members in samples:
            yield self._item(shard, index, members)

    def _item(self, shard: str, index: int, members: dict[str, bytes]) -> dict[str, Any] | None:
        return self.items.read(index, _MemberReader(self.entries, self.mel_bins, shard, members))

    def _samples(self, paths: Iterable[Path]) -> Iterator[tuple[str, int, dict[str, bytes]]]:
        """(shard, clip position, {extension: bytes}) of every clip in the shards, in order."""
        for path in paths:
            try:
                with open(path, "rb") as f:
                    yield from self._read_tar(f, str(path))
            except (OSError, tarfile.TarError, EOFError, MediaError) as e:
                err = e if isinstance(e, MediaError) else MediaError(f"{path}: unreadable ({e})")
                if self.on_error == "raise":
                    raise err from e
                log.warning("skipping the rest of shard %s: %s", path, err)

    def _read_tar(self, f: BinaryIO, shard: str) -> Iterator[tuple[str, int, dict[str, bytes]]]:
        """The clips of one tar stream (members grouped by key, WebDataset style)."""
        key, group = None, {}
        with tarfile.open(fileobj=f, mode="r|") as tar:  # a stream: no seeking back
            for m in tar:
                if not m.isfile():
                    continue
                k, ext = m.name.split("/")[-1].split(".", 1)
                if k != key and group:
                    yield self._sample(shard, key, group)
                    group = {}
                key = k
                group[ext] = tar.extractfile(m).read()
        if group:
            yield self._sample(shard, key, group)

    def _sample(
        self, shard: str, key: str | None, group: dict[str, bytes]
    ) -> tuple[str, int, dict[str, bytes]]:
        """One clip's members, checked against ``shards.json``."""
        try:
            meta = json.loads(group["json"])
            index = int(meta["index"])
            ok = 0 <= index < len(self.clips) and self.clips[index].key == meta["key"]
        except (KeyError, ValueError, TypeError):
            ok = False
        if not ok:
            raise MediaError(
                f"{shard}: member {key} is not the clip shards.json lists there (shards of "
                "another prepare run?); run `mbt prepare --shards` again"
            )
        return shard, index, group


def _process(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world size): given, or the initialised process group's, or (0, 1)."""
    if rank is not None and world_size is not None:
        return rank, world_size
    if tdist.is_available() and tdist.is_initialized():
        return tdist.get_rank(), tdist.get_world_size()
    return 0, 1


def _shuffled(items: Iterable[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """``items`` mixed through a buffer of ``size`` (a random one leaves when it is full)."""
    buf: list[Any] = []
    for x in items:
        buf.append(x)
        if len(buf) >= max(1, size):
            i = int(rng.integers(len(buf)))
            buf[i], buf[-1] = buf[-1], buf[i]
            yield buf.pop()
    rng.shuffle(buf)
    yield from buf


def open_shards(folder: Path, model_cfg: ModelConfig, data_cfg: DataConfig) -> dict[str, Any]:
    """``shards.json``, refused (ValueError, one line) if it is not one or was built for other
    inputs."""
    path = folder / "shards.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{folder}: no shards.json (run `mbt prepare --shards`)") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path}: not a shard index")
    check_settings(data, model_cfg, data_cfg, folder)
    return data


# ---------------------------------------------------------------------------------------------
# batches


class ShardLoader:
    """Training batches of a :class:`ShardStream`, the same number on every rank.

    DataLoader workers collate chunks of up to ``batch_size`` clips of their own shards (one
    transfer per chunk); this process cuts and joins the chunks into batches of exactly
    ``batch_size`` clips and stops after ``len(stream)`` clips, so every rank takes
    ``ceil(len(stream) / batch_size)`` steps however the clips fell to workers (a worker's last
    chunk is usually short). Clips that failed to load count as clips of their batch (dropped
    by collate, as with map-style data); clips of shards that could not be read (skipped)
    count as failed clips too, never as fewer steps.

    ``sampler`` is the stream's :class:`ShardPlan` (``set_epoch``, ``len``: clips per epoch),
    what the training loop reseeds every epoch.
    """

    def __init__(
        self, stream: ShardStream, batch_size: int, num_workers: int, pin_memory: bool = False
    ) -> None:
        self.stream, self.batch_size, self.pin_memory = stream, batch_size, pin_memory
        self.sampler = stream.order
        self.loader = DataLoader(
            stream, batch_size=batch_size, num_workers=num_workers, collate_fn=_chunk
        )

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Any] | None]:
        total, taken = len(self.sampler), 0
        batch: list[_Chunk] = []
        size = 0  # clips in `batch`, loaded or not
        for chunk in self._chunks():
            while chunk[1] and taken < total:
                want = min(self.batch_size, total - taken)
                head, chunk = _split(chunk, want - size)
                batch.append(head)
                size += len(head[1])
                if size == want:
                    yield self._collate(batch)
                    taken, batch, size = taken + size, [], 0
            if taken == total:
                return

    def _chunks(self) -> Iterator[_Chunk]:
        """The workers' chunks; then, if they ended early (shards skipped), failed clips."""
        yield from self.loader
        log.warning("the shards of this epoch held fewer clips than planned (some skipped)")
        while True:
            yield None, [False] * self.batch_size

    def _collate(self, parts: list[_Chunk]) -> dict[str, Any] | None:
        loaded = [p for p, _ in parts if p is not None]
        if not loaded:
            return None
        out = (
            loaded[0]
            if len(loaded) == 1
            else {k: torch.cat([p[k] for p in loaded]) for k in loaded[0]}
        )
        if self.pin_memory:
            out = {k: v.pin_memory() for k, v in out.items()}
        return out


_Chunk = tuple[dict[str, torch.Tensor] | None, list[bool]]  # (loaded clips collated, loaded?)


def _chunk(items: list[dict[str, Any] | None]) -> _Chunk:
    """A worker's collate: the clips that loaded as one batch, and which of the items did."""
    return collate_skip_failed(items), [x is not None for x in items]


def _split(chunk: _Chunk, k: int) -> tuple[_Chunk, _Chunk]:
    """The first ``k`` items of a chunk and the rest."""
    part, ok = chunk
    r = sum(ok[:k])  # loaded clips among the first k: the first r rows of `part`
    if part is None:
        return (None, ok[:k]), (None, ok[k:])
    head = {key: v[:r] for key, v in part.items()} if r else None
    tail = {key: v[r:] for key, v in part.items()} if r < len(part["index"]) else None
    return (head, ok[:k]), (tail, ok[k:])
