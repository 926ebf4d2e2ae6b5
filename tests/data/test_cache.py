"""prepare() and CachedDataset: incremental, atomic, robust to hanging or crashing decoders."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import time

import pytest
import torch

from mbt.config import replace
from mbt.data.cache import CachedDataset, decode_clip, open_dataset, prepare, run_jobs
from mbt.data.dataset import AVDataset
from mbt.data.layouts import scan
from mbt.data.video import MediaError


@pytest.fixture(scope="module")
def data(demo_root, tmp_path_factory):
    """A private copy of the demo data (tests here modify files)."""
    root = tmp_path_factory.mktemp("cache") / "data"
    shutil.copytree(demo_root, root)
    return root


def test_prepare_is_incremental_and_atomic(data, tmp_path, tiny_model_cfg, demo_data_cfg):
    out = tmp_path / "cache"
    first = prepare(data, out, demo_data_cfg, tiny_model_cfg, progress=False, frame_format="npy")
    n = len(list((data / "video").rglob("*.mp4")))
    assert first.processed == first.clips == n and not first.failed
    second = prepare(data, out, demo_data_cfg, tiny_model_cfg, progress=False, frame_format="npy")
    assert second.processed == 0 and second.reused == n
    wav = sorted((data / "audio").rglob("*.wav"))[0]
    time.sleep(0.01)
    wav.write_bytes(wav.read_bytes())  # same content, new mtime: counts as changed
    os.utime(wav, ns=(time.time_ns(), time.time_ns() + 10**9))
    third = prepare(data, out, demo_data_cfg, tiny_model_cfg, progress=False, frame_format="npy")
    assert third.processed == 1 and third.reused == n - 1
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temporary files left


def _faulty_decode(job):
    if job.key.endswith("g01_c01") and "CheckHum" in job.key:
        time.sleep(60)  # hangs
    if job.key.endswith("g01_c01") and "HorizHum" in job.key:
        os._exit(3)  # crashes the worker (as a segfault in native code would)
    if job.key.endswith("g01_c01") and "VertHiss" in job.key:
        raise ValueError("unsupported codec")
    return decode_clip(job)


def test_hanging_and_crashing_files_are_skipped(data, tmp_path, tiny_model_cfg, demo_data_cfg):
    out = tmp_path / "cache"
    start = time.monotonic()
    report = prepare(
        data, out, demo_data_cfg, tiny_model_cfg, progress=False, timeout=3.0, workers=2,
        decode=_faulty_decode,
    )  # fmt: skip
    assert time.monotonic() - start < 30
    reasons = {path.split("/")[-1]: why for path, why in report.failed}
    assert "timed out" in reasons["v_CheckHum_g01_c01.mp4"]
    assert "crashed" in reasons["v_HorizHum_g01_c01.mp4"]
    assert "unsupported codec" in reasons["v_VertHiss_g01_c01.mp4"]
    n = len(list((data / "video").rglob("*.mp4")))
    assert report.clips == n - 3
    keys = {
        c.key
        for split in ("train", "val")
        for c in CachedDataset(out, split, tiny_model_cfg, demo_data_cfg, train=False).clips
    }
    assert len(keys) == n - 3 and "HorizHum/v_HorizHum_g01_c01" not in keys
    # Unchanged failures are not retried (a hang would cost the timeout again) ...
    again = prepare(data, out, demo_data_cfg, tiny_model_cfg, progress=False, decode=_faulty_decode)
    assert again.processed == 0 and len(again.failed) == 3
    # ... unless asked.
    fixed = prepare(data, out, demo_data_cfg, tiny_model_cfg, progress=False, retry_failed=True)
    assert fixed.processed == 3 and not fixed.failed


def test_run_jobs_keeps_going():
    results = {}
    run_jobs(
        [1, 2, 3, 4], lambda x: 10 // (x - 2), lambda j, s, v: results.update({j: (s, v)}),
        workers=2, timeout=5.0,
    )  # fmt: skip
    assert results[1] == ("ok", -10) and results[3] == ("ok", 10)
    assert results[2][0] == "error" and "ZeroDivisionError" in results[2][1]


@pytest.mark.parametrize("frame_format", ["npy", "jpeg"])
def test_cached_items_match_raw(data, tmp_path, tiny_model_cfg, demo_data_cfg, frame_format):
    out = tmp_path / "cache"
    index = scan(data, demo_data_cfg)
    prepare(
        data,
        out,
        demo_data_cfg,
        tiny_model_cfg,
        progress=False,
        frame_format=frame_format,
        index=index,
    )
    cfg = replace(demo_data_cfg, cache=str(out))
    cached = open_dataset(cfg, tiny_model_cfg, "val", train=False, views=2)
    raw = AVDataset(index.val, index.classes, tiny_model_cfg, demo_data_cfg, train=False, views=2)
    assert isinstance(cached, CachedDataset) and cached.classes == raw.classes
    assert [c.key for c in cached.clips] == [c.key for c in raw.clips]
    for i in range(len(raw)):
        a, b = raw[i], cached[i]
        assert a["label"] == b["label"] and a["has_audio"] == b["has_audio"]
        assert torch.allclose(a["audio"], b["audio"], atol=2e-3)  # float16 storage
        if frame_format == "npy":
            assert torch.equal(a["video"], b["video"])  # the very same frames
        else:
            assert (a["video"] - b["video"]).abs().mean() < 0.03  # JPEG q90, 4:4:4
    # Training items come from the same sampling code: same seed, same item.
    raw_t = AVDataset(index.val, index.classes, tiny_model_cfg, demo_data_cfg, train=True)
    cached_t = CachedDataset(out, "val", tiny_model_cfg, demo_data_cfg, train=True)
    if frame_format == "npy":
        assert torch.equal(raw_t[0]["video"], cached_t[0]["video"])


def test_cache_settings_must_match(data, tmp_path, tiny_model_cfg, demo_data_cfg, capsys):
    out = tmp_path / "cache"
    index = scan(data, demo_data_cfg)
    index.train, index.test = index.train[:2], []
    index.val = index.val[:1]
    prepare(data, out, demo_data_cfg, tiny_model_cfg, progress=True, index=index)
    printed = capsys.readouterr()  # stderr is no terminal here: a log gets no bar, only lines
    assert "\r" not in printed.err and "prepare:" not in printed.err
    assert "clips found" in printed.out and "3 clips (3 decoded" in printed.out
    with pytest.raises(ValueError, match="mel_bins=64, the config needs 128"):
        CachedDataset(out, "val", replace(tiny_model_cfg, mel_bins=128), demo_data_cfg, train=False)
    with pytest.raises(ValueError, match="no cache index"):
        CachedDataset(tmp_path / "nothing", "val", tiny_model_cfg, demo_data_cfg, train=False)


def test_reused_clips_take_labels_from_the_new_scan(data, tmp_path, tiny_model_cfg, demo_data_cfg):
    """A class added to the data set shifts the ids: unchanged clips must not keep old labels."""
    out = tmp_path / "cache"
    index = scan(data, demo_data_cfg)
    index.train, index.val, index.test = index.train[:3], index.val[:1], []
    prepare(data, out, demo_data_cfg, tiny_model_cfg, progress=False, index=index)
    shift = lambda clips: [dataclasses.replace(c, labels=(c.labels[0] + 1,)) for c in clips]  # noqa: E731
    index.classes = ["AAnew", *index.classes]
    index.train, index.val = shift(index.train), shift(index.val)
    again = prepare(data, out, demo_data_cfg, tiny_model_cfg, progress=False, index=index)
    assert again.processed == 0 and again.reused == 4
    cached = CachedDataset(out, "train", tiny_model_cfg, demo_data_cfg, train=False)
    assert cached.classes == index.classes
    assert [c.labels for c in cached.clips] == [c.labels for c in index.train]


def _small_cache(data, out, cfg, model_cfg, frame_format="npy"):
    index = scan(data, cfg)
    index.train, index.val, index.test = index.train[:2], index.val[:2], []
    prepare(data, out, cfg, model_cfg, progress=False, index=index, frame_format=frame_format)
    return index


@pytest.mark.parametrize("frame_format", ["npy", "jpeg"])
def test_truncated_cache_files_are_media_errors(
    data, tmp_path, tiny_model_cfg, demo_data_cfg, frame_format
):
    """A cut-off cache file (full disk, interrupted copy) is skipped like a broken video."""
    out = tmp_path / "cache"
    _small_cache(data, out, demo_data_cfg, tiny_model_cfg, frame_format)
    ds = CachedDataset(out, "val", tiny_model_cfg, demo_data_cfg, train=False)
    entries = [ds.reader.entries[c.key] for c in ds.clips]
    frames, fbank = out / "clips" / entries[0]["frames"], out / "clips" / entries[1]["fbank"]
    frames.write_bytes(frames.read_bytes()[: frames.stat().st_size // 2])
    fbank.write_bytes(b"")
    with pytest.raises(MediaError, match=re.escape(frames.name)):
        ds[0]
    with pytest.raises(MediaError, match=re.escape(fbank.name)):
        ds[1]
    skip = CachedDataset(out, "val", tiny_model_cfg, demo_data_cfg, train=False, on_error="skip")
    assert skip[0] is None and skip[1] is None


def test_a_cache_written_before_still_reads(data, tmp_path, tiny_model_cfg, demo_data_cfg):
    """Earlier caches also stored height, width and audio_frames per clip (never read): such a
    cache still reads, and the next prepare reuses it and drops those fields."""
    out = tmp_path / "cache"
    _small_cache(data, out, demo_data_cfg, tiny_model_cfg)
    fresh = CachedDataset(out, "train", tiny_model_cfg, demo_data_cfg, train=False)[0]
    index = json.loads((out / "index.json").read_text())
    for entry in index["clips"].values():
        entry.update(height=36, width=48, audio_frames=200)
    (out / "index.json").write_text(json.dumps(index))
    old = CachedDataset(out, "train", tiny_model_cfg, demo_data_cfg, train=False)[0]
    assert torch.equal(fresh["video"], old["video"]) and torch.equal(fresh["audio"], old["audio"])
    index = scan(data, demo_data_cfg)
    index.train, index.val, index.test = index.train[:2], index.val[:2], []
    again = prepare(data, out, demo_data_cfg, tiny_model_cfg, progress=False, index=index,
                    frame_format="npy")  # fmt: skip
    assert again.processed == 0 and again.reused == 4
    rewritten = json.loads((out / "index.json").read_text())["clips"]
    assert not any({"height", "width", "audio_frames"} & set(e) for e in rewritten.values())
    (out / "index.json").write_text(json.dumps({"clips": {}}))
    with pytest.raises(ValueError, match="not a cache index"):
        CachedDataset(out, "train", tiny_model_cfg, demo_data_cfg, train=False)
