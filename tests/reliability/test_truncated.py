"""Truncated media (issue 11.6): a file whose header promises more than decodes is reported,
never read as a frozen last frame or silence unless ``data.on_short=pad`` says so; a file that
is merely short (its header agrees) is padded as AST pads."""

from __future__ import annotations

import logging
import shutil

import av
import numpy as np
import pytest
import torch

from mbt.config import DataConfig
from mbt.data.audio import load_audio
from mbt.data.cache import prepare
from mbt.data.clip import clip_inputs_from_file
from mbt.data.dataset import AVDataset
from mbt.data.layouts import Clip
from mbt.data.video import TruncatedMediaError, read_frames
from tests.data.media import drop_stream_durations, sine, write_audio, write_video

FPS = 25


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("truncated")
    frames = np.random.default_rng(0).integers(0, 256, (100, 48, 64, 3), dtype=np.uint8)  # 4 s
    whole = write_video(
        d / "whole.mp4", frames, FPS, gop_size=10, audio=sine(440, 4.0, 44100), audio_rate=44100,
        container_options={"movflags": "+faststart"},  # the index (moov) before the data
    )  # fmt: skip
    data = whole.read_bytes()
    half = d / "half.mp4"
    half.write_bytes(data[: len(data) // 2])  # the header intact, half the data gone
    with av.open(str(whole)) as c:  # a cut exactly between two packets: a clean end of file
        entry = c.streams.video[0].index_entries[50]
    at_packet = d / "at_packet.mp4"
    at_packet.write_bytes(data[: entry.pos])
    mkv = write_video(d / "whole.mkv", frames, FPS, gop_size=10, audio=sine(440, 4.0, 16000))
    (d / "half.mkv").write_bytes(mkv.read_bytes()[: mkv.stat().st_size // 2])  # length kept
    wav = write_audio(d / "sound.wav", sine(440, 7.0, 44100), 44100)
    cut = d / "cut.wav"
    cut.write_bytes(wav.read_bytes()[: len(wav.read_bytes()) // 10])  # header says 7 s
    return {
        "whole": whole, "half": half, "at_packet": at_packet, "half_mkv": d / "half.mkv",
        "wav": wav, "cut": cut,
        "short": write_audio(d / "short.wav", sine(440, 0.7, 44100), 44100),  # header agrees
        "picture": write_video(d / "picture.mp4", frames, FPS),  # no sound of its own
    }  # fmt: skip


@pytest.mark.parametrize("name", ["half", "at_packet", "half_mkv"])
def test_a_cut_video_raises_instead_of_repeating_its_last_frame(media, name):
    times = [0.2, 0.6, 3.2, 3.8]  # the cut lies near 2 s
    with pytest.raises(TruncatedMediaError) as err:
        read_frames(media[name], times)
    msg = str(err.value)
    assert msg.startswith(f"{media[name]}: truncated: the header says 4.0")
    assert "2 of 4 sampled frame times lie past" in msg and "\n" not in msg
    # Asked for, the decodable part is used: the same frames, the last one for later times.
    padded = read_frames(media[name], times, pad_truncated=True)
    assert torch.equal(padded[:2], read_frames(media["whole"], times[:2]))
    assert torch.equal(padded[2], padded[3])
    assert read_frames(media[name], times[:2]).shape == (2, 48, 64, 3)  # before the cut: fine


@pytest.mark.parametrize("tags", [True, False])
def test_sound_outlasting_the_picture_is_no_truncation(tmp_path, tags):
    """A clip whose sound runs 1.2 s past its picture (common in cut web videos) is whole,
    measured by the picture's own ``DURATION`` tag (4 s) or, without tags, by the container's
    length (5.2 s) which the sound reaches; its last frame serves the last times, as always."""
    frames = np.random.default_rng(1).integers(0, 256, (100, 48, 64, 3), dtype=np.uint8)
    path = write_video(tmp_path / "long_sound.mkv", frames, FPS, audio=sine(440, 5.2, 16000))
    if not tags:
        drop_stream_durations(path)
    out = read_frames(path, [0.2, 4.9])  # past the picture's end
    assert torch.equal(out[1], read_frames(path, [3.96])[0])


def test_a_cut_wav_raises_instead_of_reading_as_silence(media):
    with pytest.raises(TruncatedMediaError, match="the header says 7.00 s of sound, it decodes"):
        load_audio(media["cut"])
    assert len(load_audio(media["cut"], pad_truncated=True)) == pytest.approx(0.7 * 16000, rel=0.01)
    assert len(load_audio(media["wav"], start=6.5, duration=1.0)) == 16000  # whole: padded


def test_predict_and_explain_inputs_name_the_truncated_file(media, tiny_model_cfg):
    cfg = DataConfig()  # on_short=skip: for one file that is an error
    with pytest.raises(TruncatedMediaError, match=f"^{media['half']}: truncated"):
        clip_inputs_from_file(media["half"], None, tiny_model_cfg, cfg, views=2)
    with pytest.raises(TruncatedMediaError, match=f"^{media['cut']}: truncated"):
        clip_inputs_from_file(media["picture"], media["cut"], tiny_model_cfg, cfg)


def test_a_short_clip_is_padded_as_ast_pads(media, tiny_model_cfg):
    """0.7 s of sound, and its header says so: a short clip, not a broken one."""
    got = clip_inputs_from_file(media["picture"], media["short"], tiny_model_cfg, DataConfig())
    fbank = got["fbank"][0]  # (128, 64) un-normalised: 68 rows of sound, then zero padding
    assert fbank[:68].abs().amin(dim=-1).gt(0).all()
    assert fbank[68:].abs().max() < 1e-4


def test_on_short_pad_reads_what_decodes_and_says_so(media, tiny_model_cfg, caplog):
    cfg = DataConfig(on_short="pad")
    with caplog.at_level(logging.WARNING, logger="mbt.data.clip"):
        got = clip_inputs_from_file(media["half"], None, tiny_model_cfg, cfg, views=2)
        clip_inputs_from_file(media["picture"], media["cut"], tiny_model_cfg, cfg)
    assert got["video"].shape == (2, 4, 3, 32, 32) and got["has_audio"]
    said = caplog.text
    assert f"{media['half']}: truncated" in said and "frame time(s) past its decodable end" in said
    assert f"{media['cut']}: truncated: its sound decodes to 0.70 s of 7.00 s" in said
    assert "data.on_short=pad" in said


@pytest.mark.parametrize("on_short", ["skip", "error", "pad"])
def test_a_data_set_skips_stops_or_pads(media, tiny_model_cfg, on_short, caplog):
    clips = [
        Clip(video=media["half"], audio=None, labels=(0,), key="half"),
        Clip(video=media["picture"], audio=media["wav"], labels=(1,), key="fine"),
    ]
    cfg = DataConfig(on_short=on_short)
    ds = AVDataset(clips, ["a", "b"], tiny_model_cfg, cfg, train=False, on_error="skip")
    assert ds[1] is not None
    if on_short == "skip":  # left out like any unreadable clip, and logged with the numbers
        with caplog.at_level(logging.WARNING):
            assert ds[0] is None
        assert f"skipping clip half: {media['half']}: truncated: the header says 4.00 s" in (
            caplog.text
        )
    elif on_short == "error":  # stops the run even where unreadable clips are skipped
        with pytest.raises(TruncatedMediaError, match="half.mp4: truncated"):
            ds[0]
    else:
        assert ds[0]["video"].shape == (4, 3, 32, 32)


def test_prepare_does_not_cache_a_truncated_file(demo_root, tmp_path, tiny_model_cfg):
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    wav = sorted((root / "audio").rglob("*.wav"))[0]
    wav.write_bytes(wav.read_bytes()[: wav.stat().st_size // 10])
    cfg = DataConfig(val_fraction=0.4)
    report = prepare(root, tmp_path / "cache", cfg, tiny_model_cfg, progress=False)
    reasons = [why for _, why in report.failed]
    assert len(reasons) == 1 and f"{wav}: truncated" in reasons[0]


def test_on_short_is_checked():
    with pytest.raises(ValueError, match="data.on_short"):
        DataConfig(on_short="zeros")  # type: ignore[arg-type]
