"""build_loader over media, a prepared cache and its shards: one interface (len, set_epoch,
the split's size and classes), every clip once over ranks, workers started safely."""

from __future__ import annotations

import dataclasses
import gc
import multiprocessing as mp

import pytest
import torch

from mbt.config import replace
from mbt.data.audio import load_audio
from mbt.data.cache import prepare
from mbt.data.loaders import (
    CacheSource,
    MediaSource,
    ShardSource,
    build_loader,
    open_source,
)
from mbt.data.shards import write_shards

PER_SHARD = 3  # 12 clips a split: 4 shards, 2 per rank


@pytest.fixture(scope="module")
def folders(demo_root, tmp_path_factory, tiny_model_cfg, demo_data_cfg):
    """The demo clips as media, as a prepared cache and as its shards."""
    cache = tmp_path_factory.mktemp("loaders") / "cache"
    prepare(demo_root, cache, demo_data_cfg, tiny_model_cfg, progress=False)
    write_shards(cache, cache.parent / "shards", clips_per_shard=PER_SHARD)
    return {"media": demo_root, "cache": cache, "shards": cache.parent / "shards"}


def _source(folders, kind, model_cfg, data_cfg, **changes):
    data_cfg = replace(data_cfg, **changes)
    if kind == "media":
        return open_source(replace(data_cfg, root=str(folders["media"])), model_cfg)
    return open_source(replace(data_cfg, cache=str(folders[kind])), model_cfg)


def _indices(loader) -> list[int]:
    return [int(i) for b in loader if b is not None for i in b["index"]]


KINDS = ["media", "cache", "shards"]


def test_the_config_chooses_the_source(folders, tiny_model_cfg, demo_data_cfg):
    kinds = {k: _source(folders, k, tiny_model_cfg, demo_data_cfg) for k in KINDS}
    assert isinstance(kinds["media"], MediaSource)
    assert isinstance(kinds["cache"], CacheSource)
    assert isinstance(kinds["shards"], ShardSource)
    assert "clips found" in kinds["media"].describe()
    assert kinds["cache"].describe() == f"data: prepared cache {folders['cache']}"
    assert "tar shards" in kinds["shards"].describe()


@pytest.mark.parametrize("kind", KINDS)
def test_training_loaders_split_ranks_and_reseed_per_epoch(
    folders, tiny_model_cfg, demo_data_cfg, kind
):
    """Two ranks (simulated): the same number of steps, no clip twice, all 12 read (12 divides
    by 2 and the 4 shards of 3 by 2); the order is a function of (seed, epoch)."""
    source = _source(folders, kind, tiny_model_cfg, demo_data_cfg)
    ranks = [
        build_loader(source, "train", train=True, batch_size=4, rank=r, world_size=2, seed=5)
        for r in range(2)
    ]
    orders = {}
    for epoch in (0, 1):
        for r, loader in enumerate(ranks):
            loader.set_epoch(epoch)
            orders[epoch, r] = _indices(loader)
            assert len(loader) == 2 and loader.clips_per_epoch == 6 and loader.split_size == 12
        assert sorted(orders[epoch, 0] + orders[epoch, 1]) == list(range(12))
    assert orders[0, 0] != orders[1, 0]  # reshuffled
    again = build_loader(source, "train", train=True, batch_size=4, rank=0, world_size=2, seed=5)
    again.set_epoch(1)
    first = next(iter(again))
    assert _indices(again) == orders[1, 0]  # the same epoch: the same order
    ranks[0].set_epoch(1)
    assert torch.equal(first["video"], next(iter(ranks[0]))["video"])  # and the same items
    assert ranks[0].classes == ranks[1].classes and len(ranks[0].classes) == 6
    assert ranks[0].multi_label is False


@pytest.mark.parametrize("kind", KINDS)
def test_evaluation_loaders_read_every_clip_once_in_order(
    folders, tiny_model_cfg, demo_data_cfg, kind
):
    source = _source(folders, kind, tiny_model_cfg, demo_data_cfg)
    seen = []
    for r in range(2):
        loader = build_loader(
            source, "val", train=False, batch_size=4, rank=r, world_size=2, views=2
        )
        got = _indices(loader)
        assert got == sorted(got) and len(got) == loader.clips_per_epoch  # in order, no pads
        loader.set_epoch(3)  # evaluation does not change with the epoch
        assert _indices(loader) == got
        seen += got
        assert next(iter(loader))["video"].shape[1] == 2  # (B, V, T, 3, S, S): 2 views
    assert sorted(seen) == list(range(12))


def test_a_forked_worker_never_frees_the_ffmpeg_objects_it_inherited(folders):
    """PyAV deadlocks in a forked process that frees an inherited FFmpeg object with threads
    (an audio resampler's filter graph the parent had not yet collected): DataLoader workers
    collected one while torch seeded them, before any worker_init_fn. Every fork freezes them."""
    wav = sorted((folders["media"] / "audio").rglob("*.wav"))[0]
    gc.disable()  # the resampler's graph stays uncollected garbage in this process
    try:
        load_audio(wav)  # 44.1 kHz -> 16 kHz through a resampler
        child = mp.get_context("fork").Process(target=gc.collect)
        child.start()
        child.join(timeout=30)
        hung = child.is_alive()
        if hung:
            child.kill()
    finally:
        gc.enable()
    assert not hung and child.exitcode == 0


def test_a_list_of_clips_without_labels(folders, tiny_model_cfg, demo_data_cfg):
    """A predictor's inputs: clips without labels, several views, every clip once over 2
    ranks, in order; items carry no label."""
    media = open_source(replace(demo_data_cfg, root=str(folders["media"])), tiny_model_cfg)
    inputs = [dataclasses.replace(c, labels=()) for c in media.splits["val"][:5]]
    source = MediaSource({"predict": inputs}, [], tiny_model_cfg, demo_data_cfg, labelled=False)
    seen = []
    for r in range(2):
        loader = build_loader(
            source, "predict", train=False, batch_size=2, rank=r, world_size=2, views=2
        )
        for batch in loader:
            assert "label" not in batch and batch["video"].shape[:2] == (len(batch["index"]), 2)
            seen += batch["index"].tolist()
        assert loader.split_size == 5
    assert sorted(seen) == list(range(5))
    assert [c.video for c in loader.dataset.clips] == [c.video for c in inputs]
    with pytest.raises(ValueError, match="split must be one of predict"):
        build_loader(source, "val", train=False, batch_size=2)
