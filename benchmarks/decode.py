"""Raw decoding per training item: mbt's reader vs bare PyAV vs a naive port (issue 12.2).

Generates UCF101-sized clips (``benchmarks/media.py``: 320x240, 25 fps, ~7 s, H.264 + AAC in
mp4, a 44.1 kHz stereo wav beside), at GOP 12 and GOP 250, and measures at the paper preset
(training: 8 frames spread over the clip, RandomResizedCrop 224 from the short side, 800 x 128
log-mel window, SpecAugment), in one process with one torch thread and decoder threads off (as in a data
loader worker):

- video, the same 8 frames: mbt's reader (keyframe-aware :class:`mbt.data.video.VideoFile`)
  vs bare PyAV, the better of decoding sequentially to the last frame and seeking to each
  frame (no bookkeeping, no resize) - the floor for these frames;
- sound: mbt's window (header length, one decode of the 8-s window) vs the naive whole track;
- the whole item (``AVDataset[i]``: decode + transforms) with mbt's reader vs a naive port
  (every frame of the video decoded, the whole track decoded and log-mel'd per item).

Times are process CPU time per item (steadier than wall time on a shared machine), the
median of ``--repeats`` passes over the clips. With ``--long``: ``mbt predict`` (paper
preset, random weights, 4 test views) in a subprocess on a 10-s and a 10-min 320x240 file,
wall time and peak RSS each (issue 11.5); ``--src`` runs that predict on another checkout.

    python benchmarks/decode.py [--clips 3] [--repeats 3] [--long] [--out DIR]

``main(argv)`` returns the numbers as a dict (benchmarks/run_all.py uses it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/media.py, machine.py
import machine as host  # noqa: E402
import media  # noqa: E402

from mbt.config import load_config  # noqa: E402
from mbt.data.audio import SAMPLE_RATE, log_mel  # noqa: E402
from mbt.data.clip import MediaReader, audio_window_start, load_views  # noqa: E402
from mbt.data.dataset import AVDataset, item_generator  # noqa: E402
from mbt.data.layouts import Clip  # noqa: E402
from mbt.data.sampling import sample_times  # noqa: E402
from mbt.data.video import VideoFile, probe_video  # noqa: E402

GOPS = (12, 250)

# ---------------------------------------------------------------------------------------------
# clips


def write_clip(
    folder: Path, name: str, seconds: float, gop: int, seed: int, loop: float = 0.0
) -> Clip:
    """``name``.mp4 (H.264 crf 23 + AAC) and ``name``.wav beside, from ``benchmarks/media.py``;
    frames after ``loop`` seconds replay the first ``loop`` seconds (long files render fast)."""
    video, wav = folder / f"{name}.mp4", folder / f"{name}.wav"
    media.write_clip(video, wav, seconds, gop=gop, seed=seed, loop=loop)
    return Clip(video=video, audio=wav, labels=(0,), key=name)


# ---------------------------------------------------------------------------------------------
# bare PyAV and the naive port


def bare_sequential(path: Path, times: Sequence[float]) -> list[np.ndarray]:
    """Decode from the start; each wanted frame = the first frame at or after t - half a frame."""
    want, out = sorted(times), []
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_type = "NONE"
        tb, half = float(s.time_base), 0.5 / float(s.average_rate)
        for f in c.decode(s):
            while want and f.pts * tb >= want[0] - half:
                out.append(f.to_ndarray(format="rgb24"))
                want.pop(0)
            if not want:
                break
    return out


def bare_seek_each(path: Path, times: Sequence[float]) -> list[np.ndarray]:
    """Seek (backward, to a keyframe) before each wanted frame and decode up to it."""
    out = []
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_type = "NONE"
        tb, half = float(s.time_base), 0.5 / float(s.average_rate)
        for t in sorted(times):
            c.seek(max(0, int((t - half) / tb)), stream=s, backward=True)
            for f in c.decode(s):
                if f.pts * tb >= t - half:
                    out.append(f.to_ndarray(format="rgb24"))
                    break
    return out


class NaiveReader:
    """A straightforward port: every frame of the video decoded per item, the whole track
    decoded (default FFmpeg probe) and log-mel'd per item, windows sliced from it."""

    def __init__(self) -> None:
        self._sound: tuple[str, torch.Tensor] | None = None

    def video_info(self, clip: Clip) -> tuple[float, float]:
        info = probe_video(clip.video)
        return info.duration, info.fps

    def frames(self, clip: Clip, times: Sequence[float]) -> torch.Tensor:
        with av.open(str(clip.video)) as c:
            s = c.streams.video[0]
            s.thread_type = "NONE"
            tb = float(s.time_base)
            decoded = [(f.pts * tb, f.to_ndarray(format="rgb24")) for f in c.decode(s)]
        stamps = np.array([t for t, _ in decoded])
        picked = [decoded[int(np.abs(stamps - t).argmin())][1] for t in times]
        return torch.from_numpy(np.stack(picked))

    def audio_frames(self, clip: Clip) -> int:
        with av.open(str(clip.audio)) as c:  # FFmpeg's default probe, as most code opens files
            s = c.streams.audio[0]
            resampler = av.AudioResampler(format="fltp", layout="mono", rate=SAMPLE_RATE)
            parts = [o.to_ndarray()[0] for f in c.decode(s) for o in resampler.resample(f)]
            parts += [o.to_ndarray()[0] for o in resampler.resample(None)]
        self._sound = (str(clip.audio), log_mel(torch.from_numpy(np.concatenate(parts))))
        return len(self._sound[1])

    def fbank(self, clip: Clip, start: int, count: int) -> torch.Tensor:
        assert self._sound is not None and self._sound[0] == str(clip.audio)
        return self._sound[1][start : start + count]


# ---------------------------------------------------------------------------------------------
# timing


def cpu_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median process CPU milliseconds of ``fn()`` over ``repeats`` calls (after one warm-up)."""
    fn()
    runs = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        runs.append(time.process_time() - t0)
    return 1e3 * statistics.median(runs)


def _our_frames(path: Path, times: list[float], short_side: int) -> None:
    with VideoFile(path, threads="NONE") as video:
        video.frames(times, short_side=short_side)


def _our_sound(kind: type, clip: Clip, seed: int) -> None:
    """One training item's sound through a reader: its length, then the 8-s window. (mbt's
    reader decodes a track of <= 20 s whole once: the window nearly covers it anyway.)"""
    reader = MediaReader(256, 128, threads="NONE") if kind is MediaReader else NaiveReader()
    length = reader.audio_frames(clip)
    g = item_generator(0, 0, seed)
    start = audio_window_start(length, 800, centre=None, train=True, generator=g)
    reader.fbank(clip, start, 800)
    if kind is MediaReader:
        reader.close()


def measure_set(clips: list[Clip], repeats: int) -> dict[str, float]:
    """Mean over clips of the median CPU ms of each method, paper preset, training items."""
    cfg = load_config("mbt_b16_paper")
    short = cfg.data.resize_short or cfg.model.image_size * 256 // 224
    rows: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        rows.setdefault(key, []).append(value)

    reader = MediaReader(short, cfg.model.mel_bins, threads="NONE")  # as in a loader worker
    ours = AVDataset(clips, ["x"], cfg.model, cfg.data, train=True, reader=reader)
    naive = AVDataset(clips, ["x"], cfg.model, cfg.data, train=True, reader=NaiveReader())
    for i, clip in enumerate(clips):
        duration = probe_video(clip.video).duration
        times = sample_times(duration, 8, train=True, generator=item_generator(0, 0, i))
        add("video_ours", cpu_ms(partial(_our_frames, clip.video, times, short), repeats))
        seq = cpu_ms(partial(bare_sequential, clip.video, times), repeats)
        seek = cpu_ms(partial(bare_seek_each, clip.video, times), repeats)
        add("video_bare", min(seq, seek))
        add("video_bare_sequential", seq)
        add("video_bare_seek_each", seek)
        add("video_naive", cpu_ms(partial(NaiveReader().frames, clip, times), repeats))
        add("sound_ours", cpu_ms(partial(_our_sound, MediaReader, clip, i), repeats))
        add("sound_naive", cpu_ms(partial(_our_sound, NaiveReader, clip, i), repeats))
        add("item_ours", cpu_ms(partial(ours.__getitem__, i), repeats))
        add("item_naive", cpu_ms(partial(naive.__getitem__, i), repeats))
    out = {k: statistics.fmean(v) for k, v in rows.items()}
    out["video_ours_vs_bare"] = out["video_ours"] / out["video_bare"]
    out["item_naive_vs_ours"] = out["item_naive"] / out["item_ours"]
    return out


# ---------------------------------------------------------------------------------------------
# long media: mbt predict in a subprocess

# Peak RSS from VmHWM: getrusage's ru_maxrss survives exec on Linux, so a child forked from a
# big parent would report the parent's size.
_PREDICT = """
import json, re, sys, time
t0, c0 = time.perf_counter(), time.process_time()
from mbt.cli import main
status = main(["predict", *sys.argv[1:], "--json", "--device", "cpu"])
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
status_text = open("/proc/self/status").read()
peak = int(re.search(r"VmHWM:\\s+(\\d+) kB", status_text).group(1)) / 1024
print(json.dumps({"status": status, "wall_s": wall, "cpu_s": cpu, "peak_rss_mb": peak}))
"""


def predict_run(model: Path, clip: Clip, src: str | None) -> dict[str, float]:
    """Wall time, CPU time and peak RSS of one ``mbt predict`` process (import included)."""
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src
    cmd = [sys.executable, "-c", _PREDICT, str(model), str(clip.video), "--audio", str(clip.audio)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["status"] != 0:
        raise RuntimeError(f"mbt predict failed: {done.stderr.strip()[-500:]}")
    return result


_SAVE_MODEL = """
import sys
from mbt.config import load_config, replace
from mbt.model import MBT
cfg = load_config("mbt_b16_paper")
net = MBT(replace(cfg.model, init="", num_classes=10))  # random weights: the cost is the same
net.save_pretrained(sys.argv[1], class_names=[str(i) for i in range(10)], data=cfg.data)
"""


def paper_model(folder: Path, src: str | None) -> Path:
    """The paper preset's MBT (random weights) saved by the checkout that will predict."""
    model = folder / ("model" if src is None else "model_" + Path(src).parent.name)
    if not (model / "model.safetensors").exists():
        env = dict(os.environ, **({"PYTHONPATH": src} if src else {}))
        subprocess.run([sys.executable, "-c", _SAVE_MODEL, str(model)], env=env, check=True)
    return model


def measure_long(folder: Path, src: str | None, repeats: int) -> dict[str, Any]:
    """predict on 10-s and 10-min files (GOP 250 and GOP 50): medians of ``repeats`` runs of
    the whole command in a subprocess, and the front-end alone in this process (4 views)."""
    cfg = load_config("mbt_b16_paper")
    model = paper_model(folder, src)
    out: dict[str, Any] = {}
    for gop in (250, 50):
        for seconds in (10, 600):
            name = f"long_{seconds}s_gop{gop}"
            if (folder / f"{name}.wav").exists():
                clip = Clip(folder / f"{name}.mp4", folder / f"{name}.wav", (0,), name)
            else:
                clip = write_clip(folder, name, seconds, gop, seed=seconds, loop=20.0)
            runs = [predict_run(model, clip, src) for _ in range(repeats)]
            row = {k: statistics.median(r[k] for r in runs) for k in runs[0] if k != "status"}
            if src:  # another checkout's predict: its front-end is not this one
                out[name] = row
                continue
            reader = MediaReader(256, cfg.model.mel_bins)  # as predict runs it
            row["inputs_cpu_s"] = cpu_ms(partial(_front_end, reader, clip, cfg), repeats) / 1e3
            work = reader.count  # (warm-up + repeats) passes
            row["frames_decoded"] = work.frames // (repeats + 1)
            row["audio_samples_decoded"] = work.samples // (repeats + 1)
            out[name] = row
    return out


def _front_end(reader: MediaReader, clip: Clip, cfg: Any) -> None:
    """What predict does before the model: 4 test views of the clip's inputs."""
    load_views(reader, clip, cfg.model, cfg.data, train=False, views=cfg.data.test_clips)


# ---------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """The CPU and software the numbers come from (``benchmarks/machine.py``, and PyAV)."""
    return host.describe() | {"pyav": av.__version__, "ffmpeg": av.ffmpeg_version_info}


def _print_table(result: dict[str, Any]) -> None:
    m = result["machine"]
    print(f"machine: {host.line(m)}, PyAV {m['pyav']} (FFmpeg {m['ffmpeg']})")
    print("CPU ms per training item (paper preset, 8 frames + 8 s window), median of passes:")
    sets = result["sets"]
    print(f"{'':34s}" + "".join(f"{name:>12s}" for name in sets))
    lines = [
        ("video, mbt reader", "video_ours"),
        ("video, bare PyAV (best of two)", "video_bare"),
        ("  bare: sequential to last frame", "video_bare_sequential"),
        ("  bare: seek to each frame", "video_bare_seek_each"),
        ("  mbt / bare (target <= 1.3)", "video_ours_vs_bare"),
        ("video, naive (every frame)", "video_naive"),
        ("sound, mbt reader", "sound_ours"),
        ("sound, naive (default probe)", "sound_naive"),
        ("item, mbt (AVDataset)", "item_ours"),
        ("item, naive port", "item_naive"),
        ("  naive / mbt", "item_naive_vs_ours"),
    ]
    for label, key in lines:
        fmt = "{:12.2f}" if "_vs_" in key else "{:12.1f}"
        print(f"{label:34s}" + "".join(fmt.format(sets[s][key]) for s in sets))
    if "long" in result:
        print("mbt predict (paper preset, 4 views, random weights), subprocess, median of runs:")
        print(
            f"{'file':20s}{'wall s':>8s}{'cpu s':>8s}{'peak RSS MB':>12s}"
            f"{'inputs cpu s':>13s}{'frames':>8s}{'samples':>10s}"
        )
        for name, r in result["long"].items():
            line = f"{name:20s}{r['wall_s']:8.2f}{r['cpu_s']:8.2f}{r['peak_rss_mb']:12.0f}"
            if "inputs_cpu_s" in r:
                line += (
                    f"{r['inputs_cpu_s']:13.2f}{r['frames_decoded']:8d}"
                    f"{r['audio_samples_decoded']:10d}"
                )
            print(line)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table, return the numbers."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=3, help="clips per GOP setting")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per clip (median)")
    ap.add_argument("--long", action="store_true", help="also predict on 10-s / 10-min files")
    ap.add_argument("--src", help="PYTHONPATH for the predict runs (another checkout's src)")
    ap.add_argument("--out", help="folder for the generated media (kept; default: temporary)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # as one data loader worker
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.out or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        result: dict[str, Any] = {"machine": machine(), "sets": {}}
        for gop in GOPS:
            clips = []
            for k in range(args.clips):
                name = f"ucf_gop{gop}_{k}"
                if (folder / f"{name}.wav").exists():
                    clips.append(Clip(folder / f"{name}.mp4", folder / f"{name}.wav", (0,), name))
                else:
                    clips.append(write_clip(folder, name, 6.5 + 0.5 * k, gop, seed=k))
            result["sets"][f"GOP {gop}"] = measure_set(clips, args.repeats)
        if args.long:
            torch.set_num_threads(os.cpu_count() or 1)
            result["long"] = measure_long(folder, args.src, max(1, args.repeats // 2))
    _print_table(result)
    return result


if __name__ == "__main__":
    main()
