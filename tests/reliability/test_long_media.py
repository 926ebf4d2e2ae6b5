"""Long media (issue 11.5): predicting on a long file costs what a short file of the same kind
costs, because only the sampled frames and the used sound windows are decoded.

The files are long but tiny (16x16 pixels, 10 fps, 16 kHz mono): the decoding work is counted
(frames and audio samples out of the decoders), not timed, so the bound holds on a busy
machine. ``benchmarks/decode.py --long`` measures time and memory at 320x240.
"""

from __future__ import annotations

import wave
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest

from mbt.config import DataConfig
from mbt.model import MBT
from mbt.predict import predict
from tests.conftest import tiny_model_config

FPS = 10
GOP = 10  # a keyframe every second


def _write(folder: Path, seconds: int) -> tuple[Path, Path]:
    """A 16x16 H.264 video (GOP 1 s) and a 16 kHz wav of ``seconds``."""
    video, sound = folder / f"v{seconds}.mp4", folder / f"v{seconds}.wav"
    frames = np.random.default_rng(seconds).integers(0, 256, (seconds * FPS, 16, 16, 3), np.uint8)
    with av.open(str(video), "w") as c:
        s = c.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = 16, 16, "yuv420p"
        s.options = {"preset": "ultrafast", "x264-params": f"keyint={GOP}:scenecut=0"}
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            c.mux(s.encode(frame))
        c.mux(s.encode(None))
    t = np.arange(seconds * 16000) / 16000
    with wave.open(str(sound), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((3000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes())
    return video, sound


class _Counted:
    """An open container whose decode() counts the video frames and audio samples it yields."""

    def __init__(self, container, work: Counter) -> None:
        self._container, self._work = container, work

    def decode(self, *args, **kwargs):
        for frame in self._container.decode(*args, **kwargs):
            if isinstance(frame, av.VideoFrame):
                self._work["frames"] += 1
            else:
                self._work["samples"] += frame.samples
            yield frame

    def __getattr__(self, name):
        return getattr(self._container, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._container.close()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny untrained model that predicts with the official 4 test views."""
    folder = tmp_path_factory.mktemp("long") / "model"
    model = MBT(tiny_model_config(num_classes=3))
    model.save_pretrained(folder, class_names=["a", "b", "c"], data=DataConfig(test_clips=4))
    return folder


def test_predict_work_does_not_grow_with_duration(model_dir, tmp_path, monkeypatch):
    files = {n: _write(tmp_path, n) for n in (10, 300)}  # 10 s and 5 min
    real_open = av.open
    work: dict[int, Counter] = {}
    for seconds, (video, sound) in files.items():
        work[seconds] = Counter()
        counted = lambda *a, w=work[seconds], **k: _Counted(real_open(*a, **k), w)  # noqa: E731
        monkeypatch.setattr(av, "open", counted)
        result = predict(model_dir, video, sound, device="cpu")
        assert result["views"] == 4 and len(result["predictions"]) == 3
    short, long = work[10], work[300]
    assert short["frames"] > 0 and short["samples"] > 0  # the counting sees the decoding
    # 16 sampled frames: at most a GOP each, whatever the length (the 10-s file: ~all 100)
    assert long["frames"] <= 16 * (GOP + 1) and long["frames"] <= 2 * short["frames"]
    # 4 windows of 1.28 s (+ pre-roll) instead of the whole 5-minute track
    assert long["samples"] <= 2 * short["samples"]
    assert long["frames"] < 300 * FPS / 10 and long["samples"] < 300 * 16000 / 10
