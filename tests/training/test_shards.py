"""Training from tar shards (``mbt prepare --shards``): 2 gloo processes x 2 loader workers
read disjoint clips, the same number each, the ones the epoch plan says; epochs resume."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mbt.data.shards import ShardPlan, write_shards
from mbt.model.folder import WEIGHTS
from mbt.training import engine, loop
from mbt.training.checkpoint import read_state
from mbt.training.evaluate import evaluate_run

from .conftest import tiny_config

PER_SHARD = 4  # 12 training clips: 3 shards, so 2 processes leave one out per epoch


@pytest.fixture(scope="module")
def shards(demo_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "shards"
    write_shards(demo_cache, out, clips_per_shard=PER_SHARD)
    return out


def _recorder(seen: list, real):
    """``train_step`` that records the clip positions of every batch: (epoch, [index, ...])."""

    def step(eng, batch, generator, epoch, group_size, sync):
        seen.append((epoch, batch["index"].tolist()))
        return real(eng, batch, generator, epoch, group_size, sync)

    return step


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, overrides: list[str], out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
        LOCAL_RANK=str(rank),
    )  # fmt: skip
    # Loader workers forked, as under torchrun (a spawned process would spawn them: seconds
    # of imports per worker and epoch).
    torch.multiprocessing.set_start_method("fork", force=True)
    seen: list = []
    engine.train_step = _recorder(seen, engine.train_step)
    loop.train(tiny_config(*overrides), None, Path(out))
    Path(out, f"seen{rank}.json").write_text(json.dumps(seen))


def test_two_processes_read_disjoint_equal_shares(shards, tmp_path):
    epochs = 3
    overrides = [
        f"data.cache={shards}", f"train.epochs={epochs}", "data.num_workers=2",
        "train.batch_size=4", "model.drop_path_rate=0.0",
    ]  # fmt: skip
    run = tmp_path / "ddp"
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), overrides, str(run)), nprocs=2)
    seen = [json.loads((run / f"seen{r}.json").read_text()) for r in range(2)]
    assert [len(s) for s in seen] == [epochs, epochs]  # one step per epoch on each process
    times = [0] * 12
    for epoch in range(epochs):
        per_rank = [sorted(i for e, b in s if e == epoch for i in b) for s in seen]
        assert len(per_rank[0]) == len(per_rank[1]) == PER_SHARD
        assert not set(per_rank[0]) & set(per_rank[1])
        for rank, got in enumerate(per_rank):  # exactly the clips of the shards planned
            plan = ShardPlan([PER_SHARD] * 3, train=True, seed=0, rank=rank, world_size=2)
            plan.set_epoch(epoch)
            want = [s * PER_SHARD + k for s in plan.shards() for k in range(PER_SHARD)]
            assert got == sorted(want), (epoch, rank)
            for i in got:
                times[i] += 1
    assert times == [2] * 12  # the shard left out rotates: every clip twice in 3 epochs
    assert read_state(run / "checkpoints" / "last")["epoch"] == epochs


def test_resumed_epochs_read_what_an_uninterrupted_run_reads(shards, tmp_path, monkeypatch):
    """The shard order and the items are functions of (seed, epoch): resuming at an epoch
    boundary gives the same batches and the same weights as running on."""
    common = [f"data.cache={shards}", "train.batch_size=4"]
    straight, resumed, real = [], [], engine.train_step
    monkeypatch.setattr(engine, "train_step", _recorder(straight, real))
    loop.train(tiny_config(*common, "train.epochs=2"), None, tmp_path / "a")
    monkeypatch.setattr(engine, "train_step", _recorder(resumed, real))
    loop.train(tiny_config(*common, "train.epochs=1"), None, tmp_path / "b")
    loop.train(tiny_config(*common, "train.epochs=2"), None, tmp_path / "b", resume=True)
    assert straight == resumed and [e for e, _ in straight] == [0, 0, 0, 1, 1, 1]
    assert sorted(i for _, b in straight[:3] for i in b) == list(range(12))  # all, once
    assert [i for _, b in straight[:3] for i in b] != list(range(12))  # shuffled
    a, b = (load_file(tmp_path / r / "checkpoints" / "last" / WEIGHTS) for r in "ab")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert read_state(tmp_path / "b" / "checkpoints" / "last")["epoch"] == 2
    # Evaluation streams the shards too: every val clip once, its 2 test views.
    report = evaluate_run(tmp_path / "a", split="val", write=False)
    assert report["num_clips"] == 12 and report["views"]["clips"] == 2
