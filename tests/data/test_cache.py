"""prepare() and CachedDataset: incremental, atomic, robust to hanging or crashing decoders."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import time

import av
import numpy as np
import pytest
import torch

from mbt.config import replace
from mbt.data.audio import load_audio
from mbt.data.cache import CachedDataset, decode_clip, prepare, run_jobs
from mbt.data.clip import MediaReader
from mbt.data.dataset import AVDataset
from mbt.data.layouts import scan
from mbt.data.loaders import open_source
from mbt.data.transforms import normalize_video
from mbt.data.video import MediaError, read_frames


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


def test_workers_decode_after_the_parent_did(data):
    """A forked worker decodes although the parent used PyAV's shared (threaded) colour
    converter and left a resampler's filter graph for the garbage collector: with PyAV 18 the
    worker deadlocked in FFmpeg, inheriting them without their threads."""
    clip = sorted((data / "video").rglob("*.mp4"))[0]
    with av.open(str(clip)) as container:  # what any caller may do: PyAV's own converter
        [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    load_audio(sorted((data / "audio").rglob("*.wav"))[0])  # 44.1 kHz: resampled

    def job(path):
        return read_frames(path, [0.0, 0.5], short_side=24).shape, len(load_audio(path))

    results = {}
    run_jobs([clip, clip], job, lambda j, s, v: results.update({len(results): (s, v)}),
             workers=2, timeout=30.0)  # fmt: skip
    assert [s for s, _ in results.values()] == ["ok", "ok"], results


@pytest.mark.parametrize("frame_format", ["npy", "jpeg"])
def test_cached_items_match_raw(data, tmp_path, tiny_model_cfg, demo_data_cfg, frame_format):
    """Every source frame stored (fps >= the source's 25): the very items of the media."""
    out = tmp_path / "cache"
    index = scan(data, demo_data_cfg)
    prepare(
        data, out, demo_data_cfg, tiny_model_cfg, progress=False, frame_format=frame_format,
        index=index, fps=25,
    )  # fmt: skip
    cfg = replace(demo_data_cfg, cache=str(out))
    cached = open_source(cfg, tiny_model_cfg).dataset("val", train=False, views=2)
    raw = AVDataset(index.val, index.classes, tiny_model_cfg, demo_data_cfg, train=False, views=2)
    assert isinstance(cached, CachedDataset) and cached.classes == raw.classes
    assert [c.key for c in cached.clips] == [c.key for c in raw.clips]
    for i in range(len(raw)):
        a, b = raw[i], cached[i]
        assert a["label"] == b["label"] and a["has_audio"] == b["has_audio"]
        assert torch.allclose(a["audio"], b["audio"], atol=2e-3)  # float16 storage
        if frame_format == "npy":
            assert torch.equal(a["video"], b["video"])  # the very same frames
        else:  # JPEG q80 4:2:0 of 64x48 noisy frames: measured <= 0.046 (was 0.03 at q90 4:4:4)
            diff = normalize_video(a["video"]) - normalize_video(b["video"])
            assert diff.abs().mean() < 0.06
    # Training items come from the same sampling code: same seed, same item.
    raw_t = AVDataset(index.val, index.classes, tiny_model_cfg, demo_data_cfg, train=True)
    cached_t = CachedDataset(out, "val", tiny_model_cfg, demo_data_cfg, train=True)
    if frame_format == "npy":
        assert torch.equal(raw_t[0]["video"], cached_t[0]["video"])


class _GridReader(MediaReader):
    """Decodes the media, with each time moved to the nearest frame a lean cache stores."""

    def __init__(self, step: int, *args) -> None:
        super().__init__(*args)
        self.step = step

    def frames(self, clip, times):
        _, fps = self.video_info(clip)
        store = fps / self.step
        return super().frames(clip, [math.ceil(t * store - 0.5) / store for t in times])


@pytest.mark.parametrize(
    "sampling, stride, step", [("uniform", 2, 2), ("window", 2, 2), ("window", 3, 3)]
)
def test_lean_cache_is_the_media_on_its_frame_grid(
    data, tmp_path, tiny_model_cfg, demo_data_cfg, sampling, stride, step
):
    """The default cache stores every step-th frame (uniform: <= 12.5 fps; window: the stride):
    its items are the media's items with the frame times moved to that grid, nothing else."""
    cfg = replace(demo_data_cfg, sampling=sampling, frame_stride=stride)
    index = scan(data, cfg)
    index.train, index.val, index.test = index.train[:3], index.val[:3], []
    out = tmp_path / "cache"
    prepare(data, out, cfg, tiny_model_cfg, progress=False, frame_format="npy", index=index)
    entries = json.loads((out / "index.json").read_text())["clips"]
    for e in entries.values():
        assert e["step"] == step and e["fps"] == 25 / step
        assert e["num_frames"] == math.ceil(e["duration"] * 25 / step - 1e-6)  # not every frame
    short = tiny_model_cfg.image_size * 256 // 224
    grid = _GridReader(step, short, tiny_model_cfg.mel_bins)
    for train, views in ((False, 2), (True, 1)):
        cached = CachedDataset(out, "val", tiny_model_cfg, cfg, train=train, views=views)
        raw = AVDataset(index.val, index.classes, tiny_model_cfg, cfg, train=train, views=views,
                        reader=grid)  # fmt: skip
        for i in range(len(raw)):
            assert torch.equal(raw[i]["video"], cached[i]["video"]), (train, i)
            assert torch.allclose(raw[i]["audio"], cached[i]["audio"], atol=2e-3)
    if step == 3:  # frames 2 apart cannot come from every 3rd frame
        with pytest.raises(ValueError, match="one frame in 3.*frame_stride=2"):
            CachedDataset(out, "val", tiny_model_cfg, replace(cfg, frame_stride=2), train=False)
    else:  # a grid of every 2nd frame serves stride-2 windows too
        CachedDataset(out, "val", tiny_model_cfg, replace(cfg, sampling="window"), train=False)


def test_frames_are_never_upscaled(data, tmp_path, tiny_model_cfg, demo_data_cfg):
    """A 48-line source stays 48 lines when the transforms want 72 (they resize anyway)."""
    cfg = replace(demo_data_cfg, resize_short=72)
    out = tmp_path / "cache"
    _small_cache(data, out, cfg, tiny_model_cfg, frame_format="jpeg")
    e = next(iter(json.loads((out / "index.json").read_text())["clips"].values()))
    assert (e["height"], e["width"]) == (48, 64)
    item = CachedDataset(out, "train", tiny_model_cfg, cfg, train=False)[0]
    assert item["video"].shape == (4, 3, 32, 32)
    # The default: 36 = 32 * 256 / 224 is below the source's 48: resized down.
    _small_cache(data, tmp_path / "small", demo_data_cfg, tiny_model_cfg, frame_format="jpeg")
    e = next(iter(json.loads((tmp_path / "small" / "index.json").read_text())["clips"].values()))
    assert (e["height"], e["width"]) == (36, 48)


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
    # The splits are the cache's: another val_fraction would be silently ignored
    other = replace(demo_data_cfg, val_fraction=demo_data_cfg.val_fraction / 2)
    with pytest.raises(ValueError, match=r"prepared with data.val_fraction=.*prepare it again"):
        CachedDataset(out, "val", tiny_model_cfg, other, train=False)


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


def _small_cache(data, out, cfg, model_cfg, frame_format="npy", report=False):
    index = scan(data, cfg)
    index.train, index.val, index.test = index.train[:2], index.val[:2], []
    r = prepare(data, out, cfg, model_cfg, progress=False, index=index, frame_format=frame_format)
    return r if report else index


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


def test_a_cache_written_before_is_refused_then_rebuilt(
    data, tmp_path, tiny_model_cfg, demo_data_cfg
):
    """A cache of an older mbt (format 1: every frame, no per-entry settings) gets a one-line
    "re-run mbt prepare"; prepare then decodes every clip again (nothing of it is reused)."""
    out = tmp_path / "cache"
    _small_cache(data, out, demo_data_cfg, tiny_model_cfg)
    fresh = CachedDataset(out, "train", tiny_model_cfg, demo_data_cfg, train=False)[0]
    index = json.loads((out / "index.json").read_text())
    index["settings"]["version"] = 1
    del index["root"]
    for entry in index["clips"].values():
        entry.update(audio_frames=200)  # a field format 1 wrote
        del entry["settings"]
    (out / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"older mbt \(cache format 1\).*re-run `mbt prepare`"):
        CachedDataset(out, "train", tiny_model_cfg, demo_data_cfg, train=False)
    again = _small_cache(data, out, demo_data_cfg, tiny_model_cfg, report=True)
    assert again.processed == 4 and again.reused == 0
    rewritten = json.loads((out / "index.json").read_text())["clips"]
    assert not any("audio_frames" in e for e in rewritten.values())
    old = CachedDataset(out, "train", tiny_model_cfg, demo_data_cfg, train=False)[0]
    assert torch.equal(fresh["video"], old["video"]) and torch.equal(fresh["audio"], old["audio"])
    (out / "index.json").write_text(json.dumps({"clips": {}}))
    with pytest.raises(ValueError, match="not a cache index"):
        CachedDataset(out, "train", tiny_model_cfg, demo_data_cfg, train=False)


def test_files_that_differ_from_the_index_are_one_line_errors(
    data, tmp_path, tiny_model_cfg, demo_data_cfg
):
    """What a second prepare with other settings used to leave behind: files of another shape
    than the index says. Each one is named in a one-line error (and skipped in training)."""
    out = tmp_path / "cache"
    _small_cache(data, out, demo_data_cfg, tiny_model_cfg, frame_format="jpeg")
    ds = CachedDataset(out, "val", tiny_model_cfg, demo_data_cfg, train=False)
    e0, e1 = (ds.reader.entries[c.key] for c in ds.clips)
    fbank = out / "clips" / e0["fbank"]
    np.save(fbank, np.zeros((e0["fbank_rows"], 128), np.float16))  # 128 mel bins, not 64
    with pytest.raises(MediaError, match=re.escape(fbank.name) + r".*\(\d+, 128\), the index says"):
        ds[0]
    frames = out / "clips" / e1["frames"]
    other = out / "clips" / e0["frames"]
    if e0["num_frames"] != e1["num_frames"]:
        frames.write_bytes(other.read_bytes())
        with pytest.raises(MediaError, match=re.escape(frames.name) + ".* frames, the index says"):
            ds[1]
    e0["height"] += 1  # as if the index were of another short side
    with pytest.raises(MediaError, match="frame of 48x36, the index says 48x37"):
        ds.reader.frames(ds.clips[0], [0.0])
    skip = CachedDataset(out, "val", tiny_model_cfg, demo_data_cfg, train=False, on_error="skip")
    assert skip[0] is None


def test_entries_of_other_settings_are_redone(data, tmp_path, tiny_model_cfg, demo_data_cfg):
    """Every entry records the settings it was made with: other settings are never reused (the
    bug: a re-run said "unchanged" for entries of another mel_bins)."""
    out = tmp_path / "cache"
    _small_cache(data, out, demo_data_cfg, tiny_model_cfg)
    index = json.loads((out / "index.json").read_text())
    key = next(iter(index["clips"]))
    index["clips"][key]["settings"] = "0123456789"  # as if another prepare had written it
    (out / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"1 entries \(e.g. .*\) were written with other settings"):
        CachedDataset(out, "train", tiny_model_cfg, demo_data_cfg, train=False)
    again = _small_cache(data, out, demo_data_cfg, tiny_model_cfg, report=True)
    assert again.processed == 1 and again.reused == 3
    CachedDataset(out, "train", tiny_model_cfg, demo_data_cfg, train=False)
    # Another mel_bins: every clip is decoded again, and its files get new names.
    model128 = replace(tiny_model_cfg, mel_bins=128)
    before = {p.name for p in (out / "clips").iterdir()}
    redone = _small_cache(data, out, demo_data_cfg, model128, report=True)
    assert redone.processed == 4 and redone.reused == 0
    assert not before & {p.name for p in (out / "clips").iterdir()}  # old files removed
    item = CachedDataset(out, "train", model128, demo_data_cfg, train=False)[0]
    assert item["audio"].shape[-1] == 128


def test_index_paths_are_relative_to_the_data_root(
    data, tmp_path, tiny_model_cfg, demo_data_cfg, monkeypatch
):
    out = tmp_path / "cache"
    monkeypatch.chdir(data.parent)
    _small_cache(data.name, out, demo_data_cfg, tiny_model_cfg)  # a relative root
    index = json.loads((out / "index.json").read_text())
    assert index["root"] == str(data.resolve())
    videos = [e["video"] for e in index["clips"].values()]
    assert all(v.startswith("video/") for v in videos), videos
    monkeypatch.chdir(tmp_path)  # another working directory, the absolute root
    again = _small_cache(data, out, demo_data_cfg, tiny_model_cfg, report=True)
    assert again.reused == 4 and again.processed == 0
    ds = CachedDataset(out, "train", tiny_model_cfg, demo_data_cfg, train=False)
    assert all(c.video.is_file() for c in ds.clips)
