"""Stream lengths (issue 15.1): a sound that ends before its picture is no truncation.

The files mirror the ones a user reported: an ``.mkv`` (H.264, 4.00 s; FLAC whose own Matroska
``DURATION`` tag says 1.43 s) and a ``.webm`` (VP9, 3.00 s; Opus whose tag says 0.155 s), as
FFmpeg's Matroska muxer writes them (PyAV's is FFmpeg's: it writes a ``DURATION`` tag per
stream, which ``test_the_files_carry_what_real_ones_carry`` reads back), and an ``.mp4``
(H.264 + AAC ending early; mp4 gives every track its own duration). The same Matroska files
with their per-stream tags renamed (:func:`tests.data.media.drop_stream_durations`) mirror
files whose muxer writes only the container's length (browsers' recorders, libwebm): there a
stream is cut only when every stream falls short, as a cut download cuts them all. All go
through the real paths: the readers, the predict front-end, a data set, ``predict`` with a
tiny model, and ``prepare``.
"""

from __future__ import annotations

import shutil

import av
import numpy as np
import pytest

from mbt.config import DataConfig
from mbt.data.audio import fbank_rows, load_audio
from mbt.data.cache import prepare
from mbt.data.clip import clip_inputs_from_file
from mbt.data.dataset import AVDataset
from mbt.data.layouts import Clip
from mbt.data.lengths import cut_short, duration_tag, packet_ends, stream_length
from mbt.data.video import TruncatedMediaError, probe_video, read_frames
from mbt.model.mbt import MBT
from mbt.predict import predict
from tests.conftest import tiny_model_config
from tests.data.media import drop_stream_durations, sine, write_video

FPS = 25
SR = 16000
# name: (file, video codec, frames, audio codec, sound seconds, its rate)
FILES = {
    "mkv": ("short.mkv", "libx264", 100, "flac", 1.43, 44100),
    "webm": ("short.webm", "libvpx-vp9", 75, "libopus", 0.147, 48000),
    "mp4": ("short.mp4", "libx264", 100, "aac", 1.43, 44100),
}
SHORT = ["mkv", "webm", "mp4", "mkv_untagged", "webm_untagged"]


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("lengths")
    pictures = np.random.default_rng(0).integers(0, 256, (100, 48, 64, 3), dtype=np.uint8)
    out = {}
    for name, (file, codec, n, acodec, seconds, rate) in FILES.items():
        sound = sine(440, seconds, rate)
        out[name] = write_video(
            d / file, pictures[:n], FPS, codec=codec, gop_size=10, audio=sound,
            audio_rate=rate, audio_codec=acodec,
        )  # fmt: skip
    for name in ("mkv", "webm"):
        untagged = d / f"untagged.{name}"
        shutil.copy(out[name], untagged)
        out[f"{name}_untagged"] = drop_stream_durations(untagged)
    data = out["mkv_untagged"].read_bytes()
    out["cut_untagged"] = d / "cut_untagged.mkv"  # a cut download of a file without tags
    out["cut_untagged"].write_bytes(data[: len(data) // 2])
    return out


def _lengths(path) -> dict:
    with av.open(str(path)) as c:
        streams = {s.type: stream_length(c, s) for s in c.streams}
        tags = {s.type: s.metadata.get("DURATION") for s in c.streams}
        return streams, tags, c.duration / 1e6


def test_the_files_carry_what_real_ones_carry(media, capsys):
    """The per-stream lengths as PyAV writes and reads them (printed: ``pytest -s``)."""
    found = {name: _lengths(media[name]) for name in [*FILES, "mkv_untagged", "cut_untagged"]}
    with capsys.disabled():
        for name, (_, tags, container) in found.items():
            print(f"\n{name}: container {container:.3f} s, DURATION tags {tags}", end="")
    lengths, tags, container = found["mkv"]
    assert tags == {"video": "00:00:04.000000000", "audio": "00:00:01.430000000"}
    assert lengths["audio"].own and lengths["audio"].seconds == pytest.approx(1.43)
    assert container == pytest.approx(4.0)
    lengths, tags, container = found["webm"]
    assert tags["video"] == "00:00:03.000000000" and container == pytest.approx(3.0)
    assert lengths["audio"].own and lengths["audio"].seconds == pytest.approx(0.15, abs=0.01)
    lengths, tags, _ = found["mp4"]  # mp4: each track's own duration, no tags
    assert tags == {"video": None, "audio": None}
    assert lengths["audio"].own and lengths["audio"].seconds == pytest.approx(1.43, abs=0.03)
    lengths, tags, container = found["mkv_untagged"]  # only the container's length is left
    assert tags == {"video": None, "audio": None} and container == pytest.approx(4.0)
    assert not lengths["audio"].own and not lengths["video"].own
    _, _, container = found["cut_untagged"]
    assert container == pytest.approx(4.0)  # the header (at the start) survives the cut


@pytest.mark.parametrize("name", SHORT)
def test_a_sound_ending_before_its_picture_is_read(media, name, tiny_model_cfg):
    path = media[name]
    seconds = FILES[name.split("_")[0]][4]
    sound = load_audio(path)  # the whole track: as long as it is, no error
    assert len(sound) == pytest.approx(seconds * SR, abs=0.03 * SR)
    assert len(load_audio(path, start=2.0, duration=1.0)) == SR  # past its end: silence
    info = probe_video(path)
    assert read_frames(path, [0.1, info.duration - 0.05]).shape == (2, 48, 64, 3)
    cfg = DataConfig()  # on_short=skip: for one file a truncation would be an error
    got = clip_inputs_from_file(path, None, tiny_model_cfg, cfg, views=2)
    assert got["has_audio"] and got["video"].shape == (2, 4, 3, 32, 32)
    # The first view's window starts at the sound's start: its rows hold sound, as many as
    # the track has; after them the window is zero-padded, as AST pads a short sound.
    heard = got["fbank"][0].abs().amax(dim=-1) > 1e-4  # (T_a,)
    rows = min(fbank_rows(len(sound)), tiny_model_cfg.audio_frames)
    assert heard[:rows].all() and not heard[rows:].any()


def test_a_data_set_and_predict_read_them(media, tiny_model_cfg, tmp_path):
    clips = [Clip(video=media[n], audio=None, labels=(0,), key=n) for n in SHORT]
    cfg = DataConfig(on_short="error")  # a truncation would stop the run
    for train in (True, False):
        ds = AVDataset(clips, ["a", "b"], tiny_model_cfg, cfg, train=train)
        assert all(ds[i]["video"] is not None for i in range(len(ds)))
    model = MBT(tiny_model_config(num_classes=3))
    model.save_pretrained(tmp_path / "model", class_names=["a", "b", "c"], data=DataConfig())
    for name in SHORT:
        result = predict(tmp_path / "model", media[name], device="cpu")
        assert result["modalities"] == ["video", "audio"] and len(result["predictions"]) == 3


def test_prepare_caches_them(media, tiny_model_cfg, tmp_path):
    root = tmp_path / "data"
    for cls, names in (("A", ["mkv", "webm", "mkv_untagged"]), ("B", ["mp4", "webm_untagged"])):
        (root / "video" / cls).mkdir(parents=True)
        for name in names:
            shutil.copy(media[name], root / "video" / cls / f"{name}{media[name].suffix}")
    cfg = DataConfig(val_fraction=0.4)
    report = prepare(root, tmp_path / "cache", cfg, tiny_model_cfg, progress=False)
    assert report.failed == [] and report.clips == 5


def test_a_cut_download_without_stream_lengths_is_still_reported(media):
    """Every stream of the cut file ends near 2 s of the 4 s its container promises."""
    path = media["cut_untagged"]
    with pytest.raises(TruncatedMediaError, match="the header says 4.00 s of video, frames"):
        read_frames(path, [0.2, 3.6])
    with pytest.raises(TruncatedMediaError, match="the header says 4.00 s of sound, it decodes"):
        load_audio(path)
    ends = packet_ends(path)
    assert len(ends) == 2 and all(1.0 < end < 2.5 for end in ends.values())


def test_the_rule(media):
    """Own length: short is cut. The container's only: cut when every stream's packets end
    short of it, or when the stream's own packets run on past where its decoding stopped."""
    own, container = stream_length_of(media["mkv"]), stream_length_of(media["mkv_untagged"])
    assert own.own and not container.own
    assert cut_short(media["mkv"], 1, own, 0.8)  # 0.8 of its own 1.43 s
    assert not cut_short(media["mkv"], 1, own, 1.0)  # within the slack (0.5 s)
    assert not cut_short(media["mkv_untagged"], 1, container, 1.43)  # the video runs on
    assert cut_short(media["mkv_untagged"], 1, container, 0.6)  # its packets run on to 1.43
    assert cut_short(media["cut_untagged"], 1, container, packet_ends(media["cut_untagged"])[1])


def stream_length_of(path):
    with av.open(str(path)) as c:
        return stream_length(c, c.streams.audio[0])


def test_duration_tags():
    assert duration_tag({"DURATION": "00:00:01.430000000"}) == pytest.approx(1.43)
    assert duration_tag({"duration": "01:02:03.5"}) == pytest.approx(3723.5)
    assert duration_tag({"DURATION": "n/a"}) is None and duration_tag({}) is None
