"""Video probing, frame-time sampling and decoding, on clips generated at test time."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from mbt.data.sampling import sample_times, window_span
from mbt.data.video import MediaError, VideoFile, probe_video, read_frames
from tests.data.media import frame_index, indexed_clip, sine, write_audio, write_video

FPS = 25
NUM_FRAMES = 40  # 1.6 s at 25 fps


def exact_clip(num_frames: int = NUM_FRAMES, height: int = 48, width: int = 64) -> np.ndarray:
    """uint8 (T, H, W, 3) with every pixel a function of (t, y, x, c): any mix-up shows."""
    t, y, x, c = np.meshgrid(
        np.arange(num_frames), np.arange(height), np.arange(width), np.arange(3), indexing="ij"
    )
    return ((t * 37 + y * 3 + x * 5 + c * 80) % 256).astype(np.uint8)


@pytest.fixture(scope="module")
def lossless(tmp_path_factory) -> tuple[str, np.ndarray]:
    frames = exact_clip()
    path = tmp_path_factory.mktemp("video") / "lossless.mkv"
    write_video(path, frames, FPS, codec="ffv1", gop_size=10)
    return str(path), frames


# ---------------------------------------------------------------------------------------------
# decoding


@pytest.mark.parametrize("codec", ["ffv1", "libx264rgb"])
def test_lossless_frames_exact(tmp_path, codec):
    frames = exact_clip()
    path = write_video(tmp_path / f"clip_{codec}.mkv", frames, FPS, codec=codec, gop_size=10)
    # unsorted, repeated, first frame, last frame (1.56 s), and past the end
    times = [0.0, 0.52, 0.04, 1.56, 0.52, 1.6, 99.0, 0.019, 0.021]
    expected = [0, 13, 1, 39, 13, 39, 39, 0, 1]
    out = read_frames(path, times)
    assert out.dtype == torch.uint8 and out.shape == (len(times), 48, 64, 3)
    assert torch.equal(out, torch.from_numpy(frames[expected]))


def test_seek_lands_on_the_right_frames(lossless):
    path, frames = lossless
    # all times late in the clip: read_frames seeks to a key frame (every 10 frames) first
    times = [1.2, 0.95, 1.44]
    out = read_frames(path, times)
    assert torch.equal(out, torch.from_numpy(frames[[30, 24, 36]]))


def test_short_side_resize(lossless):
    path, frames = lossless
    out = read_frames(path, [0.0, 0.4], short_side=24)
    assert out.shape == (2, 24, 32, 3) and out.dtype == torch.uint8  # 48x64 -> 24x32
    # area averaging of the exact frame, not a wrapped-around uint8 mess
    ref = frames[10].astype(np.float32).reshape(24, 2, 32, 2, 3).mean(axis=(1, 3))
    assert np.abs(out[1].numpy().astype(np.float32) - ref).mean() < 8


def test_small_frames_are_never_enlarged(lossless):
    path, frames = lossless  # 48 x 64
    out = read_frames(path, [0.4], short_side=100)  # the crop transforms resize anyway
    assert torch.equal(out, torch.from_numpy(frames[[10]]))


@pytest.mark.parametrize(
    "name, codec",
    [
        ("clip.avi", "mpeg4"),
        ("clip.webm", "libvpx"),
        ("clip.webm", "libvpx-vp9"),
        ("clip.mov", "libx264"),
        ("clip.mp4", "libx264"),
    ],
)
def test_containers(tmp_path, name, codec):
    audio = sine(440, NUM_FRAMES / FPS, 16000)
    path = write_video(
        tmp_path / name, indexed_clip(NUM_FRAMES), FPS, codec=codec, audio=audio, gop_size=12
    )
    info = probe_video(path)
    assert info.width == 64 and info.height == 64 and info.has_audio
    assert info.fps == pytest.approx(FPS)
    assert info.duration == pytest.approx(NUM_FRAMES / FPS, abs=0.05)
    assert abs(info.num_frames - NUM_FRAMES) <= 1
    times = [0.0, 0.31, 0.79, 1.0, 1.56, 5.0]
    got = [frame_index(f) for f in read_frames(path, times).numpy()]
    assert got == [0, 8, 20, 25, 39, 39]


def test_variable_frame_rate(tmp_path):
    times = [0.0, 0.01, 0.1, 0.11, 0.5, 0.52, 0.9, 1.3, 1.35, 2.0]  # irregular gaps
    path = write_video(tmp_path / "vfr.mp4", indexed_clip(len(times)), FPS, times=times)
    info = probe_video(path)
    assert info.num_frames == len(times)
    want = [0.0, 0.02, 0.3, 0.79, 1.0, 1.2, 1.33, 1.9, 3.0]
    got = [frame_index(f) for f in read_frames(path, want).numpy()]
    assert got == [0, 1, 3, 6, 6, 7, 8, 9, 9]


def test_probe_without_audio(lossless):
    info = probe_video(lossless[0])
    assert not info.has_audio
    assert (info.width, info.height, info.fps) == (64, 48, 25.0)
    assert info.duration == pytest.approx(1.6, abs=0.05)


def test_media_errors_name_the_file(tmp_path, lossless):
    empty = tmp_path / "empty.mp4"
    empty.touch()
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    truncated = tmp_path / "truncated.mp4"
    write_video(truncated, indexed_clip(10), FPS)
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])  # the mp4 index is lost
    audio_only = write_audio(tmp_path / "audio_only.wav", sine(440, 0.5, 16000), 16000)
    missing = tmp_path / "missing.mp4"
    for path, problem in [
        (empty, "empty"),
        (corrupt, "not a readable"),
        (truncated, "not a readable"),
        (audio_only, "no video stream"),
        (missing, "no such file"),
    ]:
        for read in (probe_video, lambda p: read_frames(p, [0.0])):
            with pytest.raises(MediaError, match=problem) as err:
                read(path)
            assert str(path) in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# decoding only what is sampled: the same frames as a sequential decode, less work

LONG = 300  # frames: 12 s at 25 fps
B_FRAMES = {"bf": "3", "sc_threshold": "0"}  # decode order != display order, no extra keyframes


@pytest.fixture(scope="module")
def gop_files(tmp_path_factory) -> dict[str, str]:
    """12-s clips of distinct noise frames: H.264 with B-frames at GOP 12 and GOP 250, variable
    frame rate, MPEG-4 Part 2 in avi (UCF101's codec family)."""
    d = tmp_path_factory.mktemp("gop")
    frames = np.random.default_rng(0).integers(0, 256, (LONG, 32, 32, 3), dtype=np.uint8)
    gaps = np.random.default_rng(1).uniform(0.01, 0.07, LONG)  # 10-100 fps
    vfr = (np.cumsum(gaps) - gaps[0]).tolist()
    return {
        "gop12": str(write_video(d / "g12.mp4", frames, FPS, gop_size=12, options=B_FRAMES)),
        "gop250": str(write_video(d / "g250.mp4", frames, FPS, gop_size=250, options=B_FRAMES)),
        "vfr": str(
            write_video(d / "vfr.mp4", frames, FPS, times=vfr, gop_size=12, options=B_FRAMES)
        ),
        "avi": str(write_video(d / "g12.avi", frames, FPS, codec="mpeg4", gop_size=12)),
    }


def sequential_nearest(path: str, times: list[float]) -> np.ndarray:
    """The reference: decode every frame from the start, keep the nearest to each time (ties
    to the earlier frame, past the end the last frame), as read_frames always chose."""
    with av.open(path) as c:
        s = c.streams.video[0]
        decoded = [((f.pts - (s.start_time or 0)) * float(s.time_base), f) for f in c.decode(s)]
        stamps = np.array([t for t, _ in decoded])
        picked = []
        for want in times:
            j = int(np.searchsorted(stamps, want, side="right"))  # first frame after `want`
            if 0 < j < len(stamps) and want - stamps[j - 1] <= stamps[j] - want:
                j -= 1
            picked.append(decoded[min(j, len(stamps) - 1)][1].to_ndarray(format="rgb24"))
    return np.stack(picked)


@pytest.mark.parametrize("name", ["gop12", "gop250", "vfr", "avi"])
def test_frames_are_those_of_a_sequential_decode(gop_files, name):
    path = gop_files[name]
    duration = probe_video(path).duration
    rng = np.random.default_rng(2)
    g = torch.Generator().manual_seed(0)
    sets = [
        sample_times(duration, 8, train=True, generator=g),  # the paper's training sampling
        [t for v in range(4) for t in sample_times(duration, 8, view=v, num_views=4)],  # test
        sample_times(duration, 32, mode="window", fps=FPS, stride=2, train=True, generator=g),
        sorted(rng.uniform(0, duration, 3).tolist()) + [duration + 1.0],  # sparse, past the end
        [0.5, 4.02, 4.06, 0.5, 11.0],  # exact ties between two frames (CFR), repeats
    ]
    for times in sets:
        want = torch.from_numpy(sequential_nearest(path, times))
        for threads in ("NONE", "AUTO"):
            with VideoFile(path, threads=threads) as video:
                assert torch.equal(video.frames(times), want), (name, threads, times)


def test_seeks_where_keyframes_allow_decodes_on_where_not(gop_files):
    times = sample_times(LONG / FPS, 8)  # one frame every 1.5 s
    with VideoFile(gop_files["gop12"]) as video:
        video.frames(times)
    # GOP 12 (0.48 s): a seek per frame, then at most a GOP (+1 to see the next frame) each
    assert video.count.seeks >= 8 and video.count.frames <= 8 * 13
    with VideoFile(gop_files["gop250"]) as video:
        video.frames(times)
    # GOP 250 (10 s): decoding on is the only way; one seek to the keyframe at 10 s
    assert video.count.seeks <= 1 and video.count.frames <= LONG


# ---------------------------------------------------------------------------------------------
# sampling


def test_uniform_test_centres_and_views():
    assert sample_times(8.0, 8) == pytest.approx([0.5 + i for i in range(8)])
    views = [sample_times(8.0, 4, view=v, num_views=4) for v in range(4)]
    # each view shifted by a quarter of a segment (2 s); all distinct, all inside the clip
    assert views[0] == pytest.approx([0.25, 2.25, 4.25, 6.25])
    assert views[3] == pytest.approx([1.75, 3.75, 5.75, 7.75])


def test_uniform_train_jitters_within_segments():
    g = torch.Generator().manual_seed(0)
    a = sample_times(8.0, 8, train=True, generator=g)
    assert all(i <= t < i + 1 for i, t in enumerate(a))
    b = sample_times(8.0, 8, train=True, generator=torch.Generator().manual_seed(0))
    assert a == b
    assert a != sample_times(8.0, 8, train=True, generator=g)


def test_window_sampling():
    # 4 frames, stride 2 at 25 fps: 0.08 s apart, a 0.32 s window, in a 2 s clip
    mid = sample_times(2.0, 4, mode="window", fps=25, stride=2)
    assert mid == pytest.approx([0.84 + 0.08 * i for i in range(4)])  # centred: (2 - 0.32) / 2
    first = sample_times(2.0, 4, mode="window", fps=25, stride=2, view=0, num_views=3)
    last = sample_times(2.0, 4, mode="window", fps=25, stride=2, view=2, num_views=3)
    assert first[0] == pytest.approx(0.0) and last[0] == pytest.approx(1.68)
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        t = sample_times(2.0, 4, mode="window", fps=25, stride=2, train=True, generator=g)
        assert 0.0 <= t[0] <= 1.68 + 1e-9
        assert np.diff(t) == pytest.approx([0.08] * 3)


def test_window_span_matches_sample_times():
    g = torch.Generator().manual_seed(3)
    span = window_span(10.0, 32, mode="window", fps=25, stride=2, train=True, generator=g)
    assert span[1] - span[0] == pytest.approx(2.56)  # official MBT: 32 frames, stride 2
    times = sample_times(10.0, 32, mode="window", fps=25, stride=2, span=span)
    assert times[0] == pytest.approx(span[0]) and times[-1] < span[1]
    assert window_span(10.0, 8) == (0.0, 10.0)  # uniform: the whole clip


def test_clip_shorter_than_window_repeats_last_frame(lossless):
    path, frames = lossless  # 40 frames, 1.6 s
    times = sample_times(1.6, 32, mode="window", fps=25, stride=2)  # wants 2.56 s
    assert times[0] == 0.0 and max(times) == pytest.approx(1.56)
    out = read_frames(path, times)
    expected = [min(2 * i, 39) for i in range(32)]
    assert torch.equal(out, torch.from_numpy(frames[expected]))


def test_sampling_argument_errors():
    with pytest.raises(ValueError, match="num_frames"):
        sample_times(1.0, 0)
    with pytest.raises(ValueError, match="view"):
        sample_times(1.0, 4, view=2, num_views=2)
    with pytest.raises(ValueError, match="mode"):
        sample_times(1.0, 4, mode="random")  # type: ignore[arg-type]
