"""UCF101-sized test media for the benchmarks: 320x240, 25 fps, ~7 s, H.264 + AAC, wav beside.

Sized like UCF101 in bits, not only in pixels, because a cache's size is measured against the
source's: x264 at its defaults (crf 23, preset medium, 3 B-frames) spends ~0.5 MB on a 7-s clip,
as UCF101's 6.5 GB / 13,320 clips. The content has natural-image statistics: a 1/f colour
texture seen by a camera that pans and zooms slowly (sub-pixel motion, so H.264 does not get
it for free), two textured "actors" moving across it, mild sensor noise. The sound: pink room
tone, a harmonic voice with vibrato, clicks. (The generator of i12's research, made a module:
content matters, a noisier texture with whole-pixel motion gives a 0.3 MB mp4 and JPEGs 20 %
larger; the cache benchmark says which one it measured.)

    write_dataset(root, classes=2, clips_per_class=3, gop=250)  # PJZUF layout: video/, audio/
"""

from __future__ import annotations

import wave
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F

W, H, FPS, RATE = 320, 240, 25, 44100


def texture(rng: np.random.Generator, h: int, w: int) -> torch.Tensor:
    """(3, h, w) float in [0, 1] with a ~1/f amplitude spectrum and correlated colours."""
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]
    f = np.hypot(fx, fy)
    f[0, 0] = 1.0
    amp = 1.0 / f**1.05
    amp[0, 0] = 0.0
    planes = []
    for _ in range(3):
        spec = amp * np.exp(2j * np.pi * rng.random(amp.shape)) * rng.normal(1, 0.2, amp.shape)
        x = np.fft.irfft2(spec, (h, w))
        planes.append(x / x.std())
    lum, c1, c2 = planes
    mix = np.stack([lum + 0.35 * c1, lum + 0.35 * c2, lum - 0.3 * c1]) * 0.16
    mix += rng.uniform(0.35, 0.6, size=(3, 1, 1))
    return torch.from_numpy(np.clip(mix, 0, 1).astype(np.float32))


def frames(rng: np.random.Generator, n: int, chunk: int = 125) -> Iterator[np.ndarray]:
    """uint8 (t, H, W, 3) chunks of an n-frame clip: the camera over the scene, the actors."""
    scene = texture(rng, 2 * H, 2 * W)[None]  # (1, 3, 2H, 2W)
    actors = [texture(rng, 96, 96)[None] for _ in range(2)]
    pan, zoom = rng.uniform(-0.15, 0.15, size=2), rng.uniform(-0.02, 0.02)
    speed = [rng.uniform(0.2, 0.6, size=2) * rng.choice([-1, 1], size=2) for _ in actors]
    phase = [rng.uniform(0, 2 * np.pi, size=2) for _ in actors]
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1, 1, W), indexing="ij")
    for s in range(0, n, chunk):
        t = torch.arange(s, min(n, s + chunk), dtype=torch.float32) / FPS  # (t,)
        theta = torch.zeros(len(t), 2, 3)  # the camera sees half the scene, pans and zooms
        theta[:, 0, 0] = theta[:, 1, 1] = 0.5 * (1 + zoom * torch.sin(t / 3))
        theta[:, 0, 2] = 0.4 * torch.sin(float(pan[0]) * t + 0.3)
        theta[:, 1, 2] = 0.4 * torch.sin(float(pan[1]) * t + 1.1)
        grid = F.affine_grid(theta, (len(t), 3, H, W), align_corners=False)
        img = F.grid_sample(scene.expand(len(t), -1, -1, -1), grid, padding_mode="reflection",
                            align_corners=False)  # fmt: skip  # (t, 3, H, W)
        for tex, v, ph in zip(actors, speed, phase, strict=True):
            px = 0.7 * torch.sin(float(v[0]) * 2 * t + float(ph[0]))[:, None, None]
            py = 0.5 * torch.sin(float(v[1]) * 2 * t + float(ph[1]))[:, None, None]
            r = (0.35 + 0.05 * torch.sin(3 * t))[:, None, None]  # breathing size
            dx, dy = (xx - px) / r, (yy - py) * (H / W) * 1.6 / r  # (t, H, W)
            mask = (dx**2 + dy**2 < 1).float()[:, None]  # (t, 1, H, W)
            g = torch.stack([dx, dy], -1).clamp(-1, 1)
            patch = F.grid_sample(tex.expand(len(t), -1, -1, -1), g, align_corners=False)
            img = img * (1 - mask) + patch * mask
        img += torch.randn(img.shape, generator=torch.Generator().manual_seed(s)) * (2 / 255)
        yield (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def sound(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """float32 (N, 2) at 44.1 kHz: pink room tone, a voice with vibrato, clicks."""
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    spec = np.fft.rfft(rng.normal(size=n)) / np.sqrt(np.maximum(np.fft.rfftfreq(n, 1 / RATE), 20))
    room = np.fft.irfft(spec, n)
    room *= 0.05 / room.std()
    f0 = rng.uniform(120, 300) * (1 + 0.03 * np.sin(2 * np.pi * 5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    voice = sum(np.sin(k * phase) / k for k in range(1, 8)) * 0.15
    voice *= 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.2, 0.7) * t) ** 2
    x = room + voice
    for _ in range(int(rng.integers(3, 10))):
        i = int(rng.integers(0, max(1, n - 2000)))
        x[i : i + 2000] += rng.uniform(-0.4, 0.4) * np.exp(-np.arange(2000) / 200)
    return np.clip(np.stack([x, 0.8 * x + 0.2 * np.roll(x, 441)], 1), -1, 1).astype(np.float32)


def write_clip(
    video: Path,
    wav: Path,
    seconds: float,
    *,
    gop: int = 250,
    seed: int = 0,
    preset: str = "medium",
    loop: float = 0.0,
) -> None:
    """``video`` (H.264 crf 23, a keyframe at least every ``gop`` frames, + AAC) and ``wav``
    (44.1 kHz stereo 16-bit) of the same sound. With ``loop``, the frames after ``loop``
    seconds replay the first ``loop`` seconds back and forth (long files render fast)."""
    rng = np.random.default_rng(seed)
    samples = sound(rng, seconds)  # first: the frames below draw from rng after it
    n = round(seconds * FPS)
    video_frames = frames(rng, n)
    if loop and round(loop * FPS) < n:
        video_frames = _replayed(np.concatenate(list(frames(rng, round(loop * FPS)))), n)
    video.parent.mkdir(parents=True, exist_ok=True)
    wav.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(video), "w", format="mp4") as c:
        vs = c.add_stream("libx264", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        keyint = f"keyint={gop}:min-keyint={min(gop, 25)}"  # x264's defaults otherwise
        vs.options = {"crf": "23", "preset": preset, "x264-params": keyint}
        astream = c.add_stream("aac", rate=RATE, layout="stereo")
        i = 0
        for chunk in video_frames:
            for image in chunk:
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts, i = i, i + 1
                c.mux(vs.encode(frame))
        c.mux(vs.encode(None))
        for s in range(0, len(samples), 1024):
            part = np.ascontiguousarray(samples[s : s + 1024].T)
            frame = av.AudioFrame.from_ndarray(part, format="fltp", layout="stereo")
            frame.sample_rate, frame.pts, frame.time_base = RATE, s, Fraction(1, RATE)
            c.mux(astream.encode(frame))
        c.mux(astream.encode(None))
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(np.round(samples * 32767).astype("<i2").tobytes())


def _replayed(first: np.ndarray, n: int, chunk: int = 125) -> Iterator[np.ndarray]:
    """uint8 (t, H, W, 3) chunks of n frames: ``first`` forward, backward, forward ..."""
    period = max(1, 2 * len(first) - 2)
    k = np.arange(n) % period
    order = np.where(k < len(first), k, period - k)
    for s in range(0, n, chunk):
        yield first[order[s : s + chunk]]


def write_dataset(
    root: Path, *, classes: int = 2, clips_per_class: int = 3, gop: int = 250, seed: int = 0
) -> Path:
    """A PJZUF-layout data set of UCF101-sized clips (6.5-7.5 s, one group per clip)."""
    for c in range(classes):
        name = f"Class{c}"
        for k in range(clips_per_class):
            rng = np.random.default_rng([seed, c, k])
            stem = f"v_{name}_g{k + 1:02d}_c01"
            write_clip(
                root / "video" / name / f"{stem}.mp4", root / "audio" / name / f"{stem}.wav",
                float(rng.uniform(6.5, 7.5)), gop=gop, seed=int(rng.integers(2**31)),
            )  # fmt: skip
    return root
