"""Tar shards of a prepared cache: the WebDataset layout, items equal to the cache's, the epoch
plan (no duplicates, equal work per rank, rotation) and the streaming loader."""

from __future__ import annotations

import json
import tarfile
from collections import Counter

import pytest
import torch

from mbt import cli
from mbt.data.cache import CachedDataset, cache_lock, prepare
from mbt.data.shards import ShardLoader, ShardPlan, ShardStream, is_shard_folder, write_shards


@pytest.fixture(scope="module")
def cache(demo_root, tmp_path_factory, tiny_model_cfg, demo_data_cfg):
    out = tmp_path_factory.mktemp("shards") / "cache"
    prepare(demo_root, out, demo_data_cfg, tiny_model_cfg, progress=False)
    return out


def _stream(folder, split, model_cfg, data_cfg, **kw):
    return ShardStream(folder, split, model_cfg, data_cfg, **kw)


def test_shards_follow_the_webdataset_layout(cache, tmp_path):
    out = tmp_path / "shards"
    report = write_shards(cache, out, clips_per_shard=5)
    index = json.loads((cache / "index.json").read_text())
    n_train, n_val = len(index["splits"]["train"]), len(index["splits"]["val"])
    assert (n_train, n_val) == (12, 12)
    names = sorted(p.name for p in out.glob("*.tar"))
    assert names == [f"{s}-{i:06d}.tar" for s in ("train", "val") for i in range(3)]
    assert report.shards == 6 and report.written == 6 and report.clips == 24
    with tarfile.open(out / "train-000002.tar") as tar:
        members = tar.getnames()
        meta = json.loads(tar.extractfile("train-0000010.json").read())
    assert members == [f"train-{i:07d}.{ext}" for i in (10, 11)
                       for ext in ("json", "jpgs", "fbank.npy")]  # fmt: skip
    assert meta["key"] == index["splits"]["train"][10] and meta["index"] == 10
    data = json.loads((out / "shards.json").read_text())
    assert [s["clips"] for s in data["splits"]["train"]["shards"]] == [5, 5, 2]
    assert is_shard_folder(out) and not is_shard_folder(cache)
    # Unchanged clips: nothing rewritten; another shard size: rewritten, old shards removed.
    assert write_shards(cache, out, clips_per_shard=5).written == 0
    assert write_shards(cache, out, clips_per_shard=12).shards == 2
    assert sorted(p.name for p in out.glob("*.tar")) == ["train-000000.tar", "val-000000.tar"]


@pytest.mark.parametrize("train", [False, True])
def test_streamed_items_are_the_cache_items(cache, tmp_path, tiny_model_cfg, demo_data_cfg, train):
    """Item randomness is keyed on (seed, epoch, clip position): a streamed item is the item the
    clip cache gives, whatever the shard, worker or order."""
    out = tmp_path / "shards"
    write_shards(cache, out, clips_per_shard=5)
    views = 1 if train else 2
    stream = _stream(out, "val", tiny_model_cfg, demo_data_cfg, train=train, views=views, seed=3)
    cached = CachedDataset(cache, "val", tiny_model_cfg, demo_data_cfg, train=train, views=views,
                           seed=3)  # fmt: skip
    stream.set_epoch(1)
    cached.set_epoch(1)
    seen = []
    for item in stream:
        i = item["index"]
        seen.append(i)
        ref = cached[i]
        assert torch.equal(item["video"], ref["video"]) and torch.equal(item["label"], ref["label"])
        assert torch.equal(item["audio"], ref["audio"])
    if train:  # 3 shards, one process: all kept, in a shuffled order
        assert sorted(seen) == list(range(12)) and seen != sorted(seen)
    else:
        assert seen == list(range(12))


def test_shard_plan_splits_ranks_and_rotates_what_it_leaves_out():
    sizes = [4, 4, 4, 4, 3]  # 5 shards, 2 ranks: one shard left out per epoch
    plans = [ShardPlan(sizes, train=True, seed=7, rank=r, world_size=2) for r in range(2)]
    left_out = []
    for epoch in range(5):
        for p in plans:
            p.set_epoch(epoch)
        a, b = plans[0].shards(), plans[1].shards()
        out = plans[0].left_out()
        assert len(a) == len(b) == 2 and not set(a) & set(b) and len(out) == 1
        assert sorted(a + b + out) == list(range(5))  # every shard once: read or left out
        assert len(plans[0]) == len(plans[1]) == 7  # the two smallest: 3 + 4, every epoch
        left_out += out
    assert sorted(left_out) == list(range(5))  # each shard left out once in 5 epochs
    again = ShardPlan(sizes, train=True, seed=7, rank=0, world_size=2)
    again.set_epoch(4)
    assert again.shards() == plans[0].shards()  # a function of (seed, epoch): resumable
    again.set_epoch(3)
    assert again.shards() != plans[0].shards()
    evaluation = [ShardPlan(sizes, train=False, seed=7, rank=r, world_size=2) for r in range(2)]
    assert [p.shards() for p in evaluation] == [[0, 2, 4], [1, 3]]
    assert [len(p) for p in evaluation] == [11, 8]  # every clip, once
    with pytest.raises(ValueError, match="3 training shards for 4 processes"):
        ShardPlan([1, 1, 1], train=True, seed=0, rank=0, world_size=4)


@pytest.mark.parametrize("per_shard, per_rank", [(3, 6), (5, 2)])
def test_loader_gives_every_rank_the_same_steps_without_duplicates(
    cache, tmp_path, tiny_model_cfg, demo_data_cfg, per_shard, per_rank
):
    """Two ranks (simulated) x 2 DataLoader workers. 4 shards of 3: every clip once, 6 per rank.
    Shards of 5, 5, 2: one left out, each rank takes the 2 clips the smaller shard has."""
    out = tmp_path / "shards"
    write_shards(cache, out, clips_per_shard=per_shard)
    seen, steps = Counter(), []
    for rank in range(2):
        stream = _stream(out, "train", tiny_model_cfg, demo_data_cfg, train=True, rank=rank,
                         world_size=2, seed=1)  # fmt: skip
        stream.set_epoch(2)
        loader = ShardLoader(stream, batch_size=4, num_workers=2)
        batches = list(loader)
        assert len(batches) == len(loader) and len(loader.sampler) == per_rank
        indices = [int(i) for b in batches for i in b["index"]]
        assert len(indices) == per_rank and batches[0]["video"].dtype == torch.uint8
        seen.update(indices)
        steps.append(len(batches))
    assert steps[0] == steps[1] and max(seen.values()) == 1  # no clip twice
    if per_shard == 3:
        assert sorted(seen) == list(range(12))


def test_shards_of_other_settings_are_refused(cache, tmp_path, tiny_model_cfg, demo_data_cfg):
    out = tmp_path / "shards"
    write_shards(cache, out, clips_per_shard=5)
    other = tiny_model_cfg.__class__(**{**tiny_model_cfg.__dict__, "mel_bins": 128})
    with pytest.raises(ValueError, match="mel_bins=64, the config needs 128"):
        _stream(out, "train", other, demo_data_cfg, train=True)
    with pytest.raises(ValueError, match="no cache index"):  # read as a clip cache
        CachedDataset(out, "train", tiny_model_cfg, demo_data_cfg, train=False)


def test_a_damaged_shard_is_a_media_error_or_skipped(
    cache, tmp_path, tiny_model_cfg, demo_data_cfg
):
    out = tmp_path / "shards"
    write_shards(cache, out, clips_per_shard=5)
    shard = out / "train-000001.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # cut in a clip
    stream = _stream(out, "train", tiny_model_cfg, demo_data_cfg, train=False)
    with pytest.raises(ValueError, match="train-000001.tar"):
        list(stream)
    skip = _stream(out, "train", tiny_model_cfg, demo_data_cfg, train=True, on_error="skip")
    loader = ShardLoader(skip, batch_size=4, num_workers=0)
    batches = list(loader)
    assert len(batches) == len(loader) == 3  # the same steps: the missing clips count as failed
    assert sum(len(b["index"]) for b in batches if b is not None) < 12


def test_prepare_cli_writes_shards_and_busy_is_one_line(demo_root, tmp_path, capsys):
    out = tmp_path / "cache"
    args = ["prepare", str(demo_root), "--out", str(out), "--config", "demo", "--shards",
            "--clips-per-shard", "8", "--jpeg-quality", "75", "--workers", "1"]  # fmt: skip
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert (
        "24 clips (24 decoded" in printed
        and "shards " in printed
        and "4 shards (4 written" in printed
    )
    assert json.loads((out / "index.json").read_text())["settings"]["jpeg_quality"] == 75
    assert len(list((out / "shards").glob("*.tar"))) == 4  # 12 + 12 clips, 8 per shard
    with cache_lock(out):  # as if another prepare (here: this process) were writing it
        assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mbt: error: ") and "is already writing this cache" in err
    assert "\n" not in err
