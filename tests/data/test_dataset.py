"""AVDataset items: shapes, dtypes, determinism, audio alignment and failure handling."""

from __future__ import annotations

import dataclasses
import re

import av
import pytest
import torch
from torch.utils.data import DataLoader

from mbt.config import DataConfig, replace
from mbt.data import clip as clip_mod
from mbt.data.clip import audio_window_start
from mbt.data.dataset import AVDataset, collate_skip_failed, item_generator
from mbt.data.layouts import Clip, scan
from mbt.data.transforms import normalize_video
from mbt.data.video import MediaError


@pytest.fixture(scope="module")
def index(demo_root, demo_data_cfg):
    return scan(demo_root, demo_data_cfg)


def test_train_item(index, tiny_model_cfg, demo_data_cfg):
    ds = AVDataset(index.train, index.classes, tiny_model_cfg, demo_data_cfg, train=True)
    item = ds[0]
    assert item["video"].shape == (4, 3, 32, 32) and item["video"].dtype == torch.uint8
    assert item["audio"].shape == (128, 64) and item["audio"].dtype == torch.float32
    assert item["label"].dtype == torch.int64 and item["label"].shape == ()
    assert item["has_audio"] is True and item["index"] == 0
    video = normalize_video(item["video"])  # on the device, in the training step
    assert -1.0 <= video.min() and video.max() <= 1.0  # inception scaling
    assert torch.isfinite(item["audio"]).all()


def test_eval_multi_view(index, tiny_model_cfg, demo_data_cfg):
    cfg = replace(demo_data_cfg, test_crops=3)
    ds = AVDataset(index.val, index.classes, tiny_model_cfg, cfg, train=False, views=2)
    item = ds[1]
    assert item["video"].shape == (6, 4, 3, 32, 32)  # V = views * crops
    assert item["audio"].shape == (6, 128, 64)
    assert torch.equal(item["audio"][0], item["audio"][2])  # one sound per temporal view
    assert not torch.equal(item["video"][0], item["video"][1])  # different crops
    single = AVDataset(index.val, index.classes, tiny_model_cfg, cfg, train=False)[1]
    assert single["video"].shape == (4, 3, 32, 32) and single["audio"].shape == (128, 64)


def test_deterministic_per_seed_and_epoch(index, tiny_model_cfg, demo_data_cfg):
    make = lambda seed: AVDataset(  # noqa: E731
        index.train, index.classes, tiny_model_cfg, demo_data_cfg, train=True, seed=seed
    )
    a, b, c = make(0), make(0), make(1)
    for k in ("video", "audio"):
        assert torch.equal(a[2][k], b[2][k])
        assert not torch.equal(a[2][k], c[2][k])
    b.set_epoch(1)
    assert not torch.equal(a[2]["video"], b[2]["video"])
    assert torch.equal(a[2]["label"], b[2]["label"])
    # Workers do not change what an item is.
    loader = lambda n: DataLoader(a, batch_size=4, num_workers=n)  # noqa: E731
    first = next(iter(loader(0)))
    second = next(iter(loader(2)))
    assert torch.equal(first["video"], second["video"])
    # (the FFT sums in another order with one thread per worker: equal up to rounding)
    assert torch.allclose(first["audio"], second["audio"], atol=1e-4)


def test_item_generator_is_order_free():
    x = torch.rand(3, generator=item_generator(1, 2, 3))
    torch.rand(5)  # global state does not matter
    assert torch.equal(x, torch.rand(3, generator=item_generator(1, 2, 3)))
    assert not torch.equal(x, torch.rand(3, generator=item_generator(1, 2, 4)))


def test_audio_window_alignment():
    # centred on the video window's centre (seconds -> 10 ms frames), clamped to the track
    assert audio_window_start(500, 100, centre=2.0, train=False) == 150
    assert audio_window_start(500, 100, centre=0.1, train=False) == 0
    assert audio_window_start(500, 100, centre=4.9, train=True) == 400
    assert audio_window_start(80, 100, centre=0.5, train=False) == 0  # shorter than the window
    # uniform sampling: centred, spread over views, random in training
    assert audio_window_start(500, 100, centre=None, train=False) == 200
    starts = [
        audio_window_start(500, 100, centre=None, train=False, view=v, num_views=3)
        for v in range(3)
    ]
    assert starts == [0, 200, 400]
    g = torch.Generator().manual_seed(0)
    assert all(
        0 <= audio_window_start(500, 100, centre=None, train=True, generator=g) <= 400
        for _ in range(20)
    )


def test_window_sampling_aligns_audio(index, tiny_model_cfg, demo_data_cfg, monkeypatch):
    """In window mode the audio window starts where the video window's centre says."""
    cfg = replace(demo_data_cfg, sampling="window", frame_stride=2)
    seen = {}
    real = clip_mod.audio_window_start

    def spy(length, target, *, centre, **kw):
        seen["centre"] = centre
        return real(length, target, centre=centre, **kw)

    monkeypatch.setattr(clip_mod, "audio_window_start", spy)
    ds = AVDataset(index.val, index.classes, tiny_model_cfg, cfg, train=False)
    ds[0]
    duration, fps = ds.reader.video_info(index.val[0])
    window = 4 * 2 / fps
    assert seen["centre"] == pytest.approx((duration - window) / 2 + window / 2)


def test_modalities_and_multi_label(index, tiny_model_cfg, demo_data_cfg):
    video_only = dataclasses.replace(tiny_model_cfg, modalities=("video",))
    item = AVDataset(index.val, index.classes, video_only, demo_data_cfg, train=False)[0]
    assert "audio" not in item and item["video"].shape == (4, 3, 32, 32)
    audio_only = dataclasses.replace(tiny_model_cfg, modalities=("audio",))
    item = AVDataset(index.val, index.classes, audio_only, demo_data_cfg, train=False)[0]
    assert "video" not in item and item["audio"].shape == (128, 64)
    clip = dataclasses.replace(index.val[0], labels=(1, 4))
    ds = AVDataset(
        [clip], index.classes, tiny_model_cfg, demo_data_cfg, train=False, multi_label=True
    )
    assert ds[0]["label"].tolist() == [0.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="labels"):
        AVDataset([clip], index.classes, tiny_model_cfg, demo_data_cfg, train=False)


def test_silent_clip(index, tiny_model_cfg, demo_data_cfg):
    clip = dataclasses.replace(index.val[0], audio=None, has_audio=False)
    item = AVDataset([clip], index.classes, tiny_model_cfg, demo_data_cfg, train=False)[0]
    assert item["has_audio"] is False and not item["audio"].any()


def test_failed_clip_raises_or_is_skipped(index, tiny_model_cfg, demo_data_cfg, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 1000)
    bad = Clip(video=broken, audio=None, labels=(0,), key="broken")
    clips = [index.val[0], bad, index.val[1]]
    ds = AVDataset(clips, index.classes, tiny_model_cfg, DataConfig(), train=False)
    with pytest.raises(MediaError, match="broken.mp4"):
        ds[1]
    ds = AVDataset(clips, index.classes, tiny_model_cfg, DataConfig(), train=False, on_error="skip")
    assert ds[1] is None
    batch = next(iter(DataLoader(ds, batch_size=3, collate_fn=collate_skip_failed)))
    assert batch["index"].tolist() == [0, 2] and batch["video"].shape[0] == 2
    assert collate_skip_failed([None, None]) is None


def test_crops_apply_with_one_temporal_view(index, tiny_model_cfg, demo_data_cfg):
    """test_crops=3 with test_clips=1: V = 1 * 3, not silently one centre crop."""
    cfg = replace(demo_data_cfg, test_crops=3)
    ds = AVDataset(index.val, index.classes, tiny_model_cfg, cfg, train=False, views=1, crops=3)
    item = ds[0]
    assert item["video"].shape == (3, 4, 3, 32, 32)
    assert item["audio"].shape == (3, 128, 64)
    assert not torch.equal(item["video"][0], item["video"][1])
    with pytest.raises(ValueError, match="crops"):
        AVDataset(index.train, index.classes, tiny_model_cfg, cfg, train=True, crops=3)


class _Reader:
    """A reader whose sound raises ``error`` (frames and timing are fine)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def video_info(self, clip):
        return 2.0, 10.0

    def frames(self, clip, times):
        return torch.zeros(len(times), 40, 40, 3, dtype=torch.uint8)

    def audio_frames(self, clip):
        raise self.error

    def fbank(self, clip, start, count):
        raise self.error


def test_a_media_error_names_the_failing_audio_file_on_one_line(
    index, tiny_model_cfg, demo_data_cfg
):
    clip = index.val[0]
    assert clip.audio is not None and clip.video is not None
    reader = _Reader(OSError(f"{clip.audio}: bad header\nsecond line"))
    ds = AVDataset([clip], index.classes, tiny_model_cfg, demo_data_cfg, train=False,
                   reader=reader)  # fmt: skip
    with pytest.raises(MediaError) as err:
        ds[0]
    msg = str(err.value)
    assert "\n" not in msg
    assert msg == f"{clip.audio}: OSError: bad header second line"
    reader.error = av.error.InvalidDataError(1094995529, "Invalid data found", str(clip.audio))
    with pytest.raises(MediaError, match=f"^{re.escape(str(clip.audio))}: InvalidDataError: "):
        ds[0]
    skip = AVDataset([clip], index.classes, tiny_model_cfg, demo_data_cfg, train=False,
                     on_error="skip", reader=reader)  # fmt: skip
    assert skip[0] is None


@pytest.mark.parametrize("bug", [TypeError("unsupported operand"), IndexError("index 9")])
def test_a_bug_in_a_reader_is_not_skipped_as_a_media_error(
    index, tiny_model_cfg, demo_data_cfg, bug
):
    """Only media errors mean "skip this file": a bug must stop the run, not thin the data."""
    ds = AVDataset(index.val[:1], index.classes, tiny_model_cfg, demo_data_cfg, train=False,
                   on_error="skip", reader=_Reader(bug))  # fmt: skip
    with pytest.raises(type(bug), match=str(bug)):
        ds[0]


def test_audio_only_clip_in_a_video_model(index, tiny_model_cfg, demo_data_cfg):
    clip = dataclasses.replace(index.val[0], video=None)
    ds = AVDataset([clip], index.classes, tiny_model_cfg, demo_data_cfg, train=False)
    with pytest.raises(MediaError, match=f"{clip.key}: clip has no video file but the model"):
        ds[0]
    skip = AVDataset([clip], index.classes, tiny_model_cfg, demo_data_cfg, train=False,
                     on_error="skip")  # fmt: skip
    assert skip[0] is None
    audio_only = dataclasses.replace(tiny_model_cfg, modalities=("audio",))
    item = AVDataset([clip], index.classes, audio_only, demo_data_cfg, train=False)[0]
    assert item["audio"].shape == (128, 64)
