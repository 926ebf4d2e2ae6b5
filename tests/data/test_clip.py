"""The clip front-end: V-view shapes, one media file as evaluation sees it, narrow errors."""

from __future__ import annotations

import dataclasses

import av
import pytest
import torch

from mbt.config import DataConfig, replace
from mbt.data import clip as clip_mod
from mbt.data.audio import NoAudioError, load_audio, log_mel
from mbt.data.clip import MediaReader, clip_inputs_from_file, load_views, resolve_short_side
from mbt.data.dataset import AVDataset
from mbt.data.layouts import scan
from mbt.data.transforms import normalize_video
from mbt.data.video import MediaError, probe_video


@pytest.fixture(scope="module")
def index(demo_root, demo_data_cfg):
    return scan(demo_root, demo_data_cfg)


def _with_wav(index):
    return next(c for c in index.val if c.audio is not None)


def _with_track(index):
    return next(c for c in index.train + index.val if c.audio is None)


@pytest.mark.parametrize(("views", "crops"), [(1, 1), (1, 3), (2, 1), (2, 3)])
def test_views_stack_temporal_views_outer_crops_inner(
    index, tiny_model_cfg, demo_data_cfg, views, crops
):
    reader = MediaReader(resolve_short_side(tiny_model_cfg, demo_data_cfg), 64)
    out = load_views(
        reader, index.val[0], tiny_model_cfg, demo_data_cfg, train=False, views=views, crops=crops
    )
    v = views * crops
    assert out["video"].shape == (v, 4, 3, 32, 32) and out["audio"].shape == (v, 128, 64)
    for k in range(views):  # the crops of one temporal view share its sound
        block = out["audio"][k * crops : (k + 1) * crops]
        assert all(torch.equal(block[0], a) for a in block)
    with pytest.raises(ValueError, match="training"):
        load_views(reader, index.val[0], tiny_model_cfg, demo_data_cfg, train=True, views=2)


def test_one_file_gets_what_evaluation_gets(index, tiny_model_cfg, demo_data_cfg):
    """predict / explain and evaluation share one front-end: the same tensors."""
    cfg = replace(demo_data_cfg, test_crops=3)
    for clip in (_with_wav(index), _with_track(index)):
        got = clip_inputs_from_file(clip.video, clip.audio, tiny_model_cfg, cfg, views=2, crops=3)
        ds = AVDataset([clip], index.classes, tiny_model_cfg, cfg, train=False, views=2, crops=3)
        item = ds[0]
        assert got["has_audio"] is True
        assert torch.equal(got["video"], normalize_video(item["video"]))  # items carry uint8
        assert torch.equal(got["audio"], item["audio"])


def test_pictures_and_spectrogram_for_drawing(index, tiny_model_cfg, demo_data_cfg):
    clip = _with_wav(index)
    got = clip_inputs_from_file(clip.video, clip.audio, tiny_model_cfg, demo_data_cfg)
    frames, fbank = got["frames"], got["fbank"]
    assert frames.shape == (1, 4, 32, 32, 3) and 0 <= frames.min() and frames.max() <= 1
    assert torch.allclose(frames * 2 - 1, got["video"].permute(0, 1, 3, 4, 2), atol=1e-6)
    whole = log_mel(load_audio(clip.audio), num_mel_bins=64)  # (N_a, 64), un-normalised
    start = (len(whole) - 128) // 2  # uniform sampling at test: the centred window
    assert fbank.shape == (1, 128, 64)
    assert torch.allclose(fbank[0], whole[start : start + 128], atol=1e-4)


def test_a_video_without_sound(index, tiny_model_cfg, demo_data_cfg):
    """Only a file with no audio track means "no sound"; an audio-only model cannot use it."""
    clip = _with_wav(index)  # its mp4 has no track: the sound is in the wav
    got = clip_inputs_from_file(clip.video, None, tiny_model_cfg, demo_data_cfg)
    assert got["has_audio"] is False and got["audio"] is None and got["fbank"] is None
    assert got["video"].shape == (1, 4, 3, 32, 32)
    audio_only = dataclasses.replace(tiny_model_cfg, modalities=("audio",))
    with pytest.raises(NoAudioError, match="reads only audio"):
        clip_inputs_from_file(clip.video, None, audio_only, demo_data_cfg)


def test_audio_only_model_reads_a_sound_file(index, tiny_model_cfg, demo_data_cfg):
    clip = _with_wav(index)
    audio_only = dataclasses.replace(tiny_model_cfg, modalities=("audio",))
    got = clip_inputs_from_file(clip.audio, None, audio_only, demo_data_cfg)
    assert got["video"] is None and got["frames"] is None
    assert got["audio"].shape == (1, 128, 64) and got["has_audio"] is True


def test_broken_sound_raises_instead_of_going_silent(
    index, tiny_model_cfg, demo_data_cfg, tmp_path
):
    clip = _with_wav(index)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF0000garbage" * 10)
    with pytest.raises(MediaError, match="corrupt.wav"):
        clip_inputs_from_file(clip.video, corrupt, tiny_model_cfg, demo_data_cfg)
    with pytest.raises(NoAudioError, match="no audio stream"):  # a "sound" file without sound
        clip_inputs_from_file(clip.video, clip.video, tiny_model_cfg, demo_data_cfg)
    with pytest.raises(MediaError, match="missing.mp4: no such file"):
        clip_inputs_from_file(tmp_path / "missing.mp4", None, tiny_model_cfg, demo_data_cfg)


def test_short_side_must_fit_the_crop(tiny_model_cfg):
    assert resolve_short_side(tiny_model_cfg, DataConfig()) == 36  # 32 * 256 // 224
    with pytest.raises(ValueError, match="resize_short=30 is smaller than model.image_size=32"):
        resolve_short_side(tiny_model_cfg, DataConfig(resize_short=30))


@pytest.mark.parametrize("which", ["wav beside", "own track"])
def test_an_item_opens_each_file_once_and_decodes_every_view_in_one_pass(
    index, tiny_model_cfg, demo_data_cfg, monkeypatch, which
):
    clip = _with_wav(index) if which == "wav beside" else _with_track(index)
    opened = []
    real_open = av.open
    monkeypatch.setattr(
        av, "open", lambda f, *a, **k: opened.append(str(f)) or real_open(f, *a, **k)
    )
    reader = MediaReader(resolve_short_side(tiny_model_cfg, demo_data_cfg), 64)
    out = load_views(reader, clip, tiny_model_cfg, demo_data_cfg, train=False, views=4)
    assert out["video"].shape == (4, 4, 3, 32, 32)
    assert sorted(opened) == sorted(str(p) for p in (clip.video, clip.audio) if p is not None)
    # 4 views x 4 frames from one pass: no frame of the clip decoded twice
    assert 0 < reader.count.frames <= probe_video(clip.video).num_frames + 1
    assert reader.count.samples > 0 and reader._item is None  # and the files are closed


def test_decoder_threads_are_off_unless_asked(index, tiny_model_cfg, demo_data_cfg, monkeypatch):
    """Off by default: a frame-threaded decoder freed by a forked loader worker deadlocks it."""
    threads = []
    real = clip_mod.VideoFile
    monkeypatch.setattr(
        clip_mod, "VideoFile", lambda *a, **k: threads.append(k["threads"]) or real(*a, **k)
    )
    short = resolve_short_side(tiny_model_cfg, demo_data_cfg)
    for reader in (MediaReader(short, 64), MediaReader(short, 64, threads="AUTO")):
        load_views(reader, index.val[0], tiny_model_cfg, demo_data_cfg, train=False)
    assert threads == ["NONE", "AUTO"]
