"""Two ``mbt prepare`` runs on one cache (issue 11 item 4).

The bug: two runs with different ``mel_bins`` on one cache interleaved their files; the index
of one run described files the other had written (30 of 240 at the other size), a re-run said
"240 unchanged", and training crashed in collate. Now one run holds the cache's lock: a second
refuses with a clear message (or waits, ``wait=True``), and what is left is consistent.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import shutil
import time
from pathlib import Path

import pytest
from torch.utils.data import DataLoader

from mbt.config import replace
from mbt.data.cache import CachedDataset, decode_clip, prepare
from mbt.data.layouts import scan

SLOW_S = 0.4  # per clip in the first run, so the second one starts while it writes


@pytest.fixture(scope="module")
def data(demo_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("concurrent") / "data"
    shutil.copytree(demo_root, root)
    return root


def _slow_decode(job):
    time.sleep(SLOW_S)
    return decode_clip(job)


def _subset(data, cfg):
    index = scan(data, cfg)
    index.train, index.val, index.test = index.train[:5], index.val[:3], []
    return index


def _run(data, out, cfg, model_cfg) -> None:
    """The first run (in a child process): slow, one decoder."""
    prepare(data, out, cfg, model_cfg, workers=1, progress=False, decode=_slow_decode,
            index=_subset(data, cfg))  # fmt: skip


def _start_slow(data, out, cfg, model_cfg):
    child = mp.get_context("fork").Process(target=_run, args=(data, out, cfg, model_cfg))
    child.start()
    deadline = time.monotonic() + 60
    while len(list((out / "clips").glob("*.npy"))) < 2:  # it has written its first clip
        assert child.is_alive() and time.monotonic() < deadline, "the first prepare did not start"
        time.sleep(0.05)
    return child


def _check_consistent(out, model_cfg, data_cfg) -> int:
    """Every clip of the cache reads at the index's settings and collates into one batch (the
    crash of the bug); returns the index's mel_bins."""
    mel = json.loads((out / "index.json").read_text())["settings"]["mel_bins"]
    cfg = replace(model_cfg, mel_bins=mel)
    for split in ("train", "val"):
        ds = CachedDataset(out, split, cfg, data_cfg, train=False)
        batch = next(iter(DataLoader(ds, batch_size=len(ds))))
        assert batch["audio"].shape == (len(ds), cfg.audio_frames, mel)
    return mel


def test_a_second_prepare_refuses_and_the_cache_stays_consistent(
    data, tmp_path, tiny_model_cfg, demo_data_cfg
):
    out = tmp_path / "cache"
    first = _start_slow(data, out, demo_data_cfg, tiny_model_cfg)  # mel_bins 64
    other = replace(tiny_model_cfg, mel_bins=128)
    refused = None
    try:
        prepare(data, out, demo_data_cfg, other, progress=False,
                index=_subset(data, demo_data_cfg))  # fmt: skip
    except ValueError as e:
        refused = str(e)
    finally:
        first.join(timeout=120)
    assert first.exitcode == 0
    # Before the lock: both ran, and the first run's index described files of the second
    # ("stack expects each tensor to be equal size ... [128, 128] ... [128, 64]").
    assert _check_consistent(out, tiny_model_cfg, demo_data_cfg) == 64
    assert refused is not None and "another `mbt prepare` (pid" in refused
    assert "is writing this cache; wait for it (prepare --wait) or use another --out" in refused
    again = prepare(data, out, demo_data_cfg, tiny_model_cfg, progress=False,
                    index=_subset(data, demo_data_cfg))  # fmt: skip
    assert again.reused == 8 and again.processed == 0


def test_a_waiting_prepare_redoes_what_the_other_wrote(
    data, tmp_path, tiny_model_cfg, demo_data_cfg, capsys
):
    out = tmp_path / "cache"
    first = _start_slow(data, out, demo_data_cfg, tiny_model_cfg)  # mel_bins 64
    other = replace(tiny_model_cfg, mel_bins=128)
    try:
        second = prepare(data, out, demo_data_cfg, other, progress=False, wait=True,
                         index=_subset(data, demo_data_cfg))  # fmt: skip
    finally:
        first.join(timeout=120)
    assert first.exitcode == 0
    assert "waiting for the `mbt prepare` writing it (pid" in capsys.readouterr().out
    assert second.processed == 8 and second.reused == 0  # nothing of the other settings kept
    assert _check_consistent(out, other, demo_data_cfg) == 128


def _holders(path: Path) -> list[str]:
    """Processes with ``path`` open (Linux /proc)."""
    found = []
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            if fd.resolve() == path:
                found.append(fd.parts[2])
        except OSError:  # the process or descriptor went away meanwhile
            pass
    return found


def test_the_lock_dies_with_its_process(data, tmp_path, tiny_model_cfg, demo_data_cfg):
    """A prepare killed with SIGKILL leaves no stale lock: the next run goes ahead at once,
    and its decoding processes do not live on."""
    out = tmp_path / "cache"
    first = _start_slow(data, out, demo_data_cfg, tiny_model_cfg)
    first.kill()
    first.join()
    lock = (out / "prepare.lock").resolve()
    assert lock.exists()
    if Path("/proc/self/fd").is_dir():  # its orphaned decoder (forked with the lock file open)
        deadline = time.monotonic() + 2 * SLOW_S + 10  # finishes its clip, then sees EOF
        while _holders(lock):
            assert time.monotonic() < deadline, f"orphaned decoders: {_holders(lock)}"
            time.sleep(0.1)
    report = prepare(data, out, demo_data_cfg, tiny_model_cfg, progress=False,
                     index=_subset(data, demo_data_cfg))  # fmt: skip
    assert report.clips == 8
    _check_consistent(out, tiny_model_cfg, demo_data_cfg)
