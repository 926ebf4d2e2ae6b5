"""Display rotation (issue 15.2): a clip stored turned, with a display matrix that turns it
back (as phones write portrait clips), reads as the upright clip everywhere: the video reader,
the predict / evaluate front-end, and the cache ``mbt prepare`` writes.

The files are written lossless (``libx264rgb``, qp 0) with the stored pixels the upright clip
turned the opposite way; :func:`tests.data.media.set_display_matrix` then sets the mp4 track
header's matrix, as a phone's camera does.
"""

from __future__ import annotations

import json
import shutil

import av
import numpy as np
import pytest
import torch
from av.sidedata.sidedata import Type

from mbt.config import DataConfig
from mbt.data.cache import CachedDataset, prepare
from mbt.data.clip import clip_inputs_from_file
from mbt.data.orientation import UPRIGHT, Orientation, from_matrix
from mbt.data.shards import open_shards, write_shards
from mbt.data.video import probe_video, read_frames
from tests.data.media import set_display_matrix, sine, write_video

FPS = 25
H, W = 48, 64  # the upright clip is landscape; a quarter turn stores it as 64 x 48

# name: (matrix (a, b, c, d), the filter ffmpeg's autorotate inserts for it (fftools/
# ffmpeg_filter.c) as numpy, and the stored pixels that make it show the upright clip).
CASES = {
    "rot90": ((0, -1, 1, 0), "transpose=cclock", lambda x: np.rot90(x, -1)),
    "rot180": ((-1, 0, 0, -1), "hflip,vflip", lambda x: x[::-1, ::-1]),
    "rot270": ((0, 1, -1, 0), "transpose=clock", lambda x: np.rot90(x, 1)),  # a phone, portrait
    "hflip": ((-1, 0, 0, 1), "hflip", lambda x: x[:, ::-1]),  # a front camera, mirrored
    "vflip": ((1, 0, 0, -1), "vflip", lambda x: x[::-1]),
    "transpose": ((0, 1, 1, 0), "transpose=cclock_flip", lambda x: x.transpose(1, 0, 2)),
    "transverse": ((0, -1, -1, 0), "transpose=clock_flip", lambda x: np.rot90(x[::-1], 1)),
}  # fmt: skip
FFMPEG = {  # the filters, on (H, W, 3) arrays (vf_transpose.c, vf_hflip.c, vf_vflip.c)
    "transpose=cclock": lambda x: np.rot90(x, 1),
    "transpose=clock": lambda x: np.rot90(x, -1),
    "transpose=cclock_flip": lambda x: x.transpose(1, 0, 2),
    "transpose=clock_flip": lambda x: np.rot90(x, -1)[::-1],
    "hflip,vflip": lambda x: x[::-1, ::-1],
    "hflip": lambda x: x[:, ::-1],
    "vflip": lambda x: x[::-1],
}


def upright_clip(num_frames: int = 10) -> np.ndarray:
    """uint8 (T, H, W, 3), every pixel a function of (t, y, x, c): any turn or flip shows."""
    t, y, x, c = np.meshgrid(
        np.arange(num_frames), np.arange(H), np.arange(W), np.arange(3), indexing="ij"
    )
    return ((t * 37 + y * 3 + x * 5 + c * 80) % 256).astype(np.uint8)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict:
    """The upright clip, and one file per case: stored turned, shown upright by its matrix."""
    d = tmp_path_factory.mktemp("orientation")
    frames = upright_clip()
    sound = sine(440, len(frames) / FPS, 16000)
    upright = write_video(d / "upright.mp4", frames, FPS, codec="libx264rgb", audio=sound)
    out = {"frames": frames, "upright": upright}
    for name, (matrix, _, store) in CASES.items():
        stored = np.stack([np.ascontiguousarray(store(f)) for f in frames])
        path = write_video(d / f"{name}.mp4", stored, FPS, codec="libx264rgb", audio=sound)
        out[name] = set_display_matrix(path, *matrix)
    return out


def test_the_cases_are_what_ffmpeg_shows():
    """Each case's stored pixels, through the filter ffmpeg inserts for its matrix, are the
    upright picture: the cases encode ffmpeg's behaviour, not this package's."""
    frame = upright_clip(1)[0]
    for name, (_, filters, store) in CASES.items():
        assert np.array_equal(FFMPEG[filters](store(frame)), frame), name


@pytest.mark.parametrize("name", CASES)
def test_a_turned_file_reads_as_the_upright_clip(clips, name):
    times = [0.0, 0.12, 0.2, 0.36]
    frames = clips["frames"][[0, 3, 5, 9]]
    out = read_frames(clips[name], times)
    assert out.shape == (4, H, W, 3) and torch.equal(out, torch.from_numpy(frames))
    info = probe_video(clips[name])
    assert (info.width, info.height, info.orientation.name) == (W, H, name)
    # Shrunk as shown: the same size and (up to the scaler's rounding) pixels as the upright's.
    small = read_frames(clips[name], times, short_side=24)
    want = read_frames(clips["upright"], times, short_side=24)
    assert small.shape == want.shape == (4, 24, 32, 3)
    assert (small.int() - want.int()).abs().max() <= 2


def test_a_clip_without_rotation_is_unchanged(clips):
    info = probe_video(clips["upright"])
    assert info.orientation == UPRIGHT and (info.width, info.height) == (W, H)
    out = read_frames(clips["upright"], [0.0, 0.36])
    assert torch.equal(out, torch.from_numpy(clips["frames"][[0, 9]]))


def test_pyav_reports_the_angle_and_the_matrix_the_mirror(clips):
    """What PyAV 18 gives: ``frame.rotation`` is the angle only (a mirror reads as a turn, or
    as nothing), the DISPLAYMATRIX side data the whole matrix, which the reader uses."""
    rotation = {}
    for name in CASES:
        with av.open(str(clips[name])) as c:
            frame = next(c.decode(video=0))
            matrix = np.frombuffer(bytes(frame.side_data[Type.DISPLAYMATRIX]), np.int32)
        rotation[name] = frame.rotation
        assert tuple(matrix[[0, 1, 3, 4]] // (1 << 16)) == CASES[name][0]
        assert from_matrix(matrix).name == name
        mirrored = np.linalg.det(matrix[[0, 1, 3, 4]].reshape(2, 2).astype(float)) < 0
        assert mirrored == (name in ("hflip", "vflip", "transpose", "transverse"))
    assert rotation == {
        "rot90": 90, "rot180": -180, "rot270": -90,  # counter-clockwise, in [-180, 180]
        "hflip": -180, "vflip": 0, "transpose": -90, "transverse": 90,  # the mirror is lost
    }  # fmt: skip


def test_the_helper_writes_the_matrix_ffmpeg_muxes(tmp_path, clips):
    """PyAV's own display rotation (FFmpeg's mov muxer) writes the same 2x2 part for a turn."""
    frames = clips["frames"][:2]
    for name, angle in (("rot90", 90), ("rot180", 180), ("rot270", 270)):
        path = tmp_path / f"{name}.mp4"
        with av.open(str(path), "w") as c:
            s = c.add_stream("libx264rgb", rate=FPS)
            s.width, s.height, s.pix_fmt = W, H, "rgb24"
            if not hasattr(s, "set_display_rotation"):
                pytest.skip("PyAV < 17.1 writes no display matrix")
            s.set_display_rotation(angle)
            for i, f in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(f, format="rgb24")
                frame.pts = i
                c.mux(s.encode(frame))
            c.mux(s.encode(None))
        assert probe_video(path).orientation == probe_video(clips[name]).orientation


def test_orientations_are_the_eight_quarter_turns_and_mirrors():
    names = {Orientation(t, r, c).name for t in (0, 1) for r in (0, 1) for c in (0, 1)}
    assert len(names) == 8
    tilted = (round(np.cos(0.3) * 65536), round(np.sin(0.3) * 65536), 0)  # 17 degrees
    m = np.array([tilted[0], -tilted[1], 0, tilted[1], tilted[0], 0, 0, 0, 1 << 30])
    assert from_matrix(m) == UPRIGHT  # not a quarter turn: kept as stored


@pytest.mark.parametrize("name", ["rot90", "rot270", "hflip"])
def test_predict_sees_the_upright_clip(clips, name, tiny_model_cfg):
    """The predict / evaluate front-end (MediaReader, resize, crops) on a turned file gives the
    upright file's inputs."""
    cfg = DataConfig()
    got = clip_inputs_from_file(clips[name], None, tiny_model_cfg, cfg, views=2, crops=3)
    want = clip_inputs_from_file(clips["upright"], None, tiny_model_cfg, cfg, views=2, crops=3)
    assert got["video"].shape == want["video"].shape
    assert (got["frames"] - want["frames"]).abs().max() <= 2 / 255 + 1e-6
    assert torch.equal(got["audio"], want["audio"])


def _dataset(clips, root):
    """A pjzuf data set: the upright clip and two turned ones in two classes."""
    for cls, names in (("A", ["upright", "rot90"]), ("B", ["rot270", "hflip"])):
        (root / "video" / cls).mkdir(parents=True)
        for name in names:
            shutil.copy(clips[name], root / "video" / cls / f"{name}.mp4")
    return root


def test_prepare_stores_the_clip_as_shown_and_records_it(clips, tmp_path, tiny_model_cfg):
    root, out = _dataset(clips, tmp_path / "data"), tmp_path / "cache"
    cfg = DataConfig(val_fraction=0.5, resize_short=H)  # kept at 48 x 64: exact
    report = prepare(root, out, cfg, tiny_model_cfg, progress=False, fps=FPS, frame_format="npy")
    assert report.processed == 4 and not report.failed
    entries = json.loads((out / "index.json").read_text())["clips"]
    assert {k.rsplit("/", 1)[-1]: e["orientation"] for k, e in entries.items()} == {
        "upright": "upright", "rot90": "rot90", "rot270": "rot270", "hflip": "hflip",
    }  # fmt: skip
    first = {}
    for key, e in entries.items():
        assert (e["height"], e["width"]) == (H, W)
        first[key.rsplit("/", 1)[-1]] = np.load(out / "clips" / e["frames"])[0]
    for name in ("rot90", "rot270", "hflip"):
        assert np.array_equal(first[name], first["upright"]), name


def test_a_cache_written_before_rotation_is_refused_then_mended(clips, tmp_path, tiny_model_cfg):
    """An entry written before mbt read the display matrix may hold a turned clip: the readers
    refuse the cache (one line naming `mbt prepare`), and prepare decodes again only the turned
    clips, keeping the upright one (its source is checked by one decoded frame)."""
    root, out = _dataset(clips, tmp_path / "data"), tmp_path / "cache"
    cfg = DataConfig(val_fraction=0.5, resize_short=H)  # kept at 48 x 64: exact
    prepare(root, out, cfg, tiny_model_cfg, progress=False, fps=FPS, frame_format="npy")
    index = json.loads((out / "index.json").read_text())
    for e in index["clips"].values():
        del e["orientation"]  # as the previous version wrote it
    (out / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError) as err:
        CachedDataset(out, "train", tiny_model_cfg, cfg, train=True)
    msg = str(err.value)
    assert msg.startswith(f"{out}: 4 entries") and "re-run `mbt prepare`" in msg
    assert "\n" not in msg
    write_shards(out)  # shards of the old cache carry its entries: refused the same way
    with pytest.raises(ValueError, match=r"4 entries .* re-run `mbt prepare`"):
        open_shards(out / "shards", tiny_model_cfg, cfg)
    again = prepare(root, out, cfg, tiny_model_cfg, progress=False, fps=FPS, frame_format="npy")
    assert (again.processed, again.reused, again.failed) == (3, 1, [])
    entries = json.loads((out / "index.json").read_text())["clips"]
    turns = sorted(e["orientation"] for e in entries.values())
    assert turns == ["hflip", "rot270", "rot90", "upright"]
    ds = CachedDataset(out, "train", tiny_model_cfg, cfg, train=False)
    assert ds[0]["video"].shape[-2:] == (32, 32)
