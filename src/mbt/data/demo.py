"""A small, procedurally generated audio-visual data set that needs fusion to be solved.

Every clip has a visual attribute and an audio attribute that both last the whole clip:

- picture: a background texture, horizontal stripes (``H``), vertical stripes (``V``) or a
  checkerboard (``C``), with random colours, period, drift, moving clutter blobs and pixel noise;
- sound: a low hum (``L``, 300-550 Hz and its octave), a high beep (``B``, a 1.8-2.6 kHz tone) or
  a hiss (``S``, noise band 4.5-6.5 kHz), with random level, phase, slow tremolo, clicks and noise.

Classes are defined over (picture, sound) pairs so that neither modality alone predicts the
class while the pair identifies it exactly. Two class sets:

``"cycle"`` (default): six classes, one pair each, every picture and every sound in two classes::

    HorizHum (H, L)   HorizBeep (H, B)   VertBeep (V, B)
    VertHiss (V, S)   CheckHiss (C, S)   CheckHum (C, L)

Neighbours in this cycle differ in one modality only (HorizHum / HorizBeep only in sound,
HorizBeep / VertBeep only in picture, ...), so the sound alone leaves two equally likely classes,
as does the picture (Bayes accuracy 50 % each); the pair decides (100 %). The classes are
additive: late fusion (adding per-modality logits) solves them as well as MBT does.

``"pairing"``: an interaction. Give each picture its own sound (H -> L, V -> B, C -> S); the
class says which sound the picture got (a 3 x 3 Latin square of picture x sound)::

    Own  (H, L) (V, B) (C, S)    Next (H, B) (V, S) (C, L)    Prev (H, S) (V, L) (C, B)

Every picture and every sound occurs equally often in every class, so one modality alone says
nothing (Bayes accuracy 33 %), and no sum of a picture score and a sound score separates the
classes: on balanced data the cross-entropy optimum of such a sum is the uniform prediction.
Only a model that lets the streams exchange information before the head (MBT) can solve it.
With ``clips_per_group=3`` each group (scene) holds each pair of its class once.

The files use the PJZUF-C101 layout read by :func:`mbt.data.layouts.scan`::

    <out>/video/<Class>/v_<Class>_g<gg>_c<cc>.mp4   H.264 (yuv420p), 64x48 px, 25 fps, ~2 s
    <out>/audio/<Class>/v_<Class>_g<gg>_c<cc>.wav   16-bit PCM, 44.1 kHz, mono or stereo

One clip in four carries its sound inside the mp4 (mono AAC) and has no wav. Clips of one group
share texture period and tone, as the clips of a UCF101 group share actor and scene,
so a split must be group-aware.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import wave
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# class set -> class name -> the (picture, sound) pairs of the class; see the module docstring.
CLASS_SETS: dict[str, dict[str, tuple[tuple[str, str], ...]]] = {
    "cycle": {
        "CheckHiss": (("C", "S"),),
        "CheckHum": (("C", "L"),),
        "HorizBeep": (("H", "B"),),
        "HorizHum": (("H", "L"),),
        "VertBeep": (("V", "B"),),
        "VertHiss": (("V", "S"),),
    },
    "pairing": {
        "Next": (("H", "B"), ("V", "S"), ("C", "L")),
        "Own": (("H", "L"), ("V", "B"), ("C", "S")),
        "Prev": (("H", "S"), ("V", "L"), ("C", "B")),
    },
}
CLASSES = CLASS_SETS["cycle"]  # the default set
PICTURES = {"H": "horizontal stripes", "V": "vertical stripes", "C": "checkerboard"}
SOUNDS = {"L": "low hum 300-550 Hz", "B": "high beep 1.8-2.6 kHz", "S": "hiss 4.5-6.5 kHz"}

HEIGHT, WIDTH = 48, 64  # frames: the tiny model crops 32x32 after resizing the short side to 36
FPS = 25
WAV_RATE = 44100  # as PJZUF-C101 (REFERENCE.md section 8): the loader must resample to 16 kHz
AAC_RATE = 22050  # sound stored inside the mp4: yet another rate


def make_demo_data(
    out: str | Path,
    *,
    seed: int = 0,
    clips_per_class: int = 40,
    clips_per_group: int = 4,
    duration: tuple[float, float] = (1.8, 2.4),
    embedded_audio_every: int = 4,
    classes: str = "cycle",
    overwrite: bool = False,
) -> Path:
    """Write the demo data set (see the module docstring) and a ``README.txt`` describing it.

    The content is a deterministic function of the arguments (same seed, same decoded frames and
    samples). Default size: 6 classes x 40 clips = 240 clips, about 50 MB (mostly the
    44.1 kHz wav files), written in about 15 s.

    Args:
        out: Folder to create. It must not exist or be empty unless ``overwrite``.
        seed: Seed of everything random.
        clips_per_class: Clips per class; a multiple of 3 keeps the three (picture, sound)
            pairs of the ``pairing`` classes balanced.
        clips_per_group: Clips sharing one "scene" (texture period and tone).
        duration: Range of clip lengths in seconds (each at least 1.3 s so that the 1.28 s audio
            window of the demo model fits).
        embedded_audio_every: One clip in this many keeps its sound in the mp4 (AAC) instead of a
            wav file; 0 = never.
        classes: The class set, ``"cycle"`` or ``"pairing"`` (see the module docstring).
        overwrite: Replace an existing non-empty ``out``.

    Returns:
        ``out`` as a Path.
    """
    out = Path(out)
    spec = _Spec(seed, clips_per_class, clips_per_group, duration, embedded_audio_every, classes)
    _make_room(out, overwrite)
    # Write into a sibling temporary folder, then rename: a crash never leaves half a data set.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        n_wav = 0
        for ci, name in enumerate(sorted(spec.class_set)):
            for k in range(clips_per_class):
                n_wav += _write_clip(tmp, spec, ci, name, k)
        n_embedded = len(spec.class_set) * clips_per_class - n_wav
        (tmp / "README.txt").write_text(_readme(spec, n_wav, n_embedded))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


@dataclass(frozen=True)
class _Spec:
    """The arguments of :func:`make_demo_data` that shape the data, checked."""

    seed: int
    clips_per_class: int
    clips_per_group: int
    duration: tuple[float, float]
    embedded_audio_every: int
    classes: str

    def __post_init__(self) -> None:
        if self.classes not in CLASS_SETS:
            raise ValueError(
                f"make_demo_data: classes must be one of {sorted(CLASS_SETS)}, got {self.classes!r}"
            )
        if self.clips_per_class < 1 or self.clips_per_group < 1:
            raise ValueError("make_demo_data: clips_per_class and clips_per_group must be >= 1")
        if not 1.3 <= self.duration[0] <= self.duration[1]:
            raise ValueError(
                f"make_demo_data: duration must satisfy 1.3 <= lo <= hi, got {self.duration}"
            )

    @property
    def class_set(self) -> dict[str, tuple[tuple[str, str], ...]]:
        return CLASS_SETS[self.classes]


def _make_room(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty ``out`` unless ``overwrite`` (then delete it)."""
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(f"{out}: folder exists and is not empty (pass overwrite=True)")
        shutil.rmtree(out)


def _write_clip(tmp: Path, spec: _Spec, ci: int, name: str, k: int) -> bool:
    """Render and write clip ``k`` of class ``name`` (the ``ci``-th); True if it got a wav
    file, False if its sound went into the mp4."""
    g, c = k // spec.clips_per_group + 1, k % spec.clips_per_group + 1
    # One generator per group (the shared scene: texture period, tone) and one per clip. The
    # scene does not depend on the class, so no nuisance correlates with the class (group g has
    # the same scene in every class), and a clip does not depend on the others.
    scene = np.random.default_rng([spec.seed, g])
    rng = np.random.default_rng([spec.seed, ci, g, c])
    pairs = spec.class_set[name]
    picture, sound = pairs[k % len(pairs)]  # every pair in every group of len(pairs) clips
    stem = f"v_{name}_g{g:02d}_c{c:02d}"
    secs = float(rng.uniform(*spec.duration))
    frames = _render_video(picture, secs, scene, rng)
    every = spec.embedded_audio_every
    embedded = every > 0 and k % every == 0  # by position in the class, not by class
    rate = AAC_RATE if embedded else WAV_RATE
    # The sound is a little longer or shorter than the picture, as in real files.
    samples = _render_audio(sound, secs + float(rng.uniform(-0.1, 0.1)), rate, scene, rng)
    vpath = tmp / "video" / name / f"{stem}.mp4"
    vpath.parent.mkdir(parents=True, exist_ok=True)
    if embedded:
        _write_mp4(vpath, frames, FPS, audio=samples, audio_rate=rate)
        return False
    _write_mp4(vpath, frames, FPS)
    if rng.random() < 0.25:  # stereo: two slightly different channels exercise the down-mix
        samples = np.stack([samples, samples * rng.uniform(0.6, 1.0)], axis=1)
    apath = tmp / "audio" / name / f"{stem}.wav"
    apath.parent.mkdir(parents=True, exist_ok=True)
    _write_wav(apath, samples, rate)
    return True


# ---------------------------------------------------------------------------------------------
# picture


def _render_video(
    picture: str, secs: float, scene: np.random.Generator, rng: np.random.Generator
) -> np.ndarray:
    """Frames (T, H, W, 3) uint8 of a drifting texture with moving clutter and noise."""
    n = max(2, round(secs * FPS))
    t = np.arange(n, dtype=np.float32)[:, None, None] / FPS  # (T, 1, 1) seconds
    y = np.arange(HEIGHT, dtype=np.float32)[None, :, None]  # (1, H, 1)
    x = np.arange(WIDTH, dtype=np.float32)[None, None, :]  # (1, 1, W)
    period = scene.uniform(10.0, 15.0)  # >= 7.5 px after the resize to 36: patches see edges
    drift = rng.uniform(-6.0, 6.0)  # px/s: the texture slides slowly
    phase = rng.uniform(0, period)
    if picture == "H":
        pattern = np.sin(2 * np.pi * (y + phase + drift * t) / period)  # (T, H, 1)
    elif picture == "V":
        pattern = np.sin(2 * np.pi * (x + phase + drift * t) / period)  # (T, 1, W)
    else:
        pattern = np.sin(2 * np.pi * (y + phase + drift * t) / period) * np.sin(
            2 * np.pi * (x + rng.uniform(0, period)) / period
        )  # (T, H, W)
    pattern = np.broadcast_to(pattern, (n, HEIGHT, WIDTH))
    mask = (pattern > 0).astype(np.float32)[..., None]  # (T, H, W, 1) square-wave texture
    # Two colours with enough luminance difference for the texture to survive H.264 and resizing.
    c0 = rng.uniform(0, 110, size=3)
    c1 = np.clip(c0 + rng.uniform(90, 140) * rng.uniform(0.6, 1.0, size=3), 0, 255)
    if rng.random() < 0.5:
        c0, c1 = c1, c0
    img = (mask * c1 + (1 - mask) * c0).astype(np.float32)  # (T, H, W, 3)
    # Clutter: a few blobs of random colour moving across, bouncing off the borders.
    span = np.array([HEIGHT, WIDTH], dtype=np.float32)
    for _ in range(int(rng.integers(0, 3))):
        r = rng.uniform(2.5, 4.5)
        p0 = rng.uniform([r, r], [HEIGHT - r, WIDTH - r])
        pos = p0 + rng.uniform(-20, 20, size=2) * t[:, 0, 0, None]  # (T, 2)
        pos = span - np.abs(np.mod(pos, 2 * span) - span)  # reflect into [0, span]
        d2 = (y - pos[:, 0, None, None]) ** 2 + (x - pos[:, 1, None, None]) ** 2  # (T, H, W)
        img[d2 < r * r] = rng.uniform(0, 255, size=3)
    img += rng.normal(0, 5.0, size=img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# sound


def _render_audio(
    sound: str, secs: float, rate: int, scene: np.random.Generator, rng: np.random.Generator
) -> np.ndarray:
    """Mono float32 samples in [-1, 1]: the class sound over background noise."""
    n = int(secs * rate)
    t = np.arange(n) / rate
    # The three sounds occupy disjoint bands (hum < 1.1 kHz, beep 1.8-2.6 kHz, hiss 4.5-6.5
    # kHz): no harmonic of one falls into the band of another.
    if sound == "L":
        f0 = scene.uniform(300, 550) * rng.uniform(0.97, 1.03)
        sig = np.sin(2 * np.pi * f0 * t + rng.uniform(0, 2 * np.pi))
        sig += 0.5 * np.sin(2 * np.pi * 2 * f0 * t + rng.uniform(0, 2 * np.pi))
        sig /= 1.5
    elif sound == "B":
        f0 = scene.uniform(1800, 2600) * rng.uniform(0.97, 1.03)
        sig = np.sin(2 * np.pi * f0 * t + rng.uniform(0, 2 * np.pi))
    else:
        sig = _band_noise(n, rate, 4500.0, 6500.0, rng) * 1.5
    # Slow tremolo that never drops below 40 %: the cue is present in every window.
    trem = 0.7 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.5, 2.0) * t + rng.uniform(0, 2 * np.pi))
    sig = sig * trem * rng.uniform(0.25, 0.5)
    # Background: broadband noise plus a few clicks at random times.
    bg = _band_noise(n, rate, 50.0, 7900.0, rng) * rng.uniform(0.01, 0.03)
    for _ in range(int(rng.integers(0, 4))):
        i = int(rng.integers(0, max(1, n - 200)))
        bg[i : i + 200] += rng.uniform(-0.3, 0.3) * np.exp(-np.arange(len(bg[i : i + 200])) / 30)
    return np.clip(sig + bg, -1.0, 1.0).astype(np.float32)


def _band_noise(n: int, rate: int, lo: float, hi: float, rng: np.random.Generator) -> np.ndarray:
    """White noise band-limited to [lo, hi] Hz by zeroing FFT bins, unit RMS."""
    m = 1 << max(0, n - 1).bit_length()  # a power of two: arbitrary lengths make the FFT slow
    spec = np.fft.rfft(rng.normal(size=m))
    freqs = np.fft.rfftfreq(m, 1.0 / rate)
    spec[(freqs < lo) | (freqs > hi)] = 0
    x = np.fft.irfft(spec, m)[:n]
    return x / (np.sqrt(np.mean(x**2)) + 1e-9)


# ---------------------------------------------------------------------------------------------
# writers (PyAV for the mp4, the standard library for the wav)


def _write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    """16-bit PCM wav; ``samples`` float in [-1, 1], (N,) or (N, C)."""
    pcm = np.round(np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1 if pcm.ndim == 1 else pcm.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def _write_mp4(
    path: Path,
    frames: np.ndarray,
    fps: int,
    *,
    audio: np.ndarray | None = None,
    audio_rate: int = AAC_RATE,
) -> None:
    """H.264 yuv420p mp4 of ``frames`` (T, H, W, 3) uint8, with an optional mono AAC track."""
    with av.open(str(path), "w", format="mp4") as container:
        vstream = container.add_stream("libx264", rate=Fraction(fps))
        vstream.width, vstream.height = frames.shape[2], frames.shape[1]
        vstream.pix_fmt = "yuv420p"
        # crf 18 keeps the texture crisp; one thread and no macroblock tree keep the bit
        # stream reproducible (identical files for a seed).
        vstream.options = {
            "crf": "18",
            "preset": "veryfast",
            "x264-params": "threads=1:lookahead-threads=1:sliced-threads=0:mbtree=0",
        }
        vstream.codec_context.thread_count = (
            1  # with x264-params: x264 (mbtree) is else not reproducible
        )
        astream = None
        if audio is not None:
            astream = container.add_stream("aac", rate=audio_rate)
            astream.layout = "mono"
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            frame.pts = i  # explicit timestamps: the file must not depend on encoder timing
            for packet in vstream.encode(frame):
                container.mux(packet)
        for packet in vstream.encode():
            container.mux(packet)
        if astream is not None:
            step = 1024  # AAC frame size
            for i in range(0, len(audio), step):
                chunk = np.ascontiguousarray(audio[None, i : i + step], dtype=np.float32)
                frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
                frame.sample_rate, frame.pts = audio_rate, i
                for packet in astream.encode(frame):
                    container.mux(packet)
            for packet in astream.encode():
                container.mux(packet)


def _readme(spec: _Spec, n_wav: int, n_embedded: int) -> str:
    class_set, clips_per_class = spec.class_set, spec.clips_per_class
    seed, clips_per_group, duration = spec.seed, spec.clips_per_group, spec.duration
    rows = []
    for name in sorted(class_set):
        pairs = " or ".join(f"({PICTURES[p]}, {SOUNDS[s]})" for p, s in class_set[name])
        rows.append(f"  {name:<10} {pairs}")
    n = clips_per_class * len(class_set)
    if spec.classes == "pairing":
        how = """Each picture has its own sound (horizontal stripes: hum, vertical stripes: beep,
checkerboard: hiss); the class says which sound it got: its own, the next one or the previous
one. Every picture and every sound occurs equally often in every class, so audio alone or video
alone gives 33 % at best, and no sum of a picture score and a sound score does better (late
fusion cannot solve it); audio and video together determine the class (100 %)."""
    else:
        how = """Each class shares its picture with one class and its sound with another (HorizHum and
HorizBeep differ only in sound, HorizBeep and VertBeep only in picture, ...). Each sound value
(and each picture value) is shared by two classes with equal mass, so the best possible
accuracy from audio alone or video alone is 50 %; audio and video together determine the
class (100 %)."""
    return f"""MBT demo data set (generated by mbt.data.demo.make_demo_data, seed={seed})

{len(class_set)} classes x {clips_per_class} clips = {n} clips, groups of {clips_per_group} clips
sharing texture period and tone (split group-aware, as UCF101).
Each clip lasts {duration[0]:.1f}-{duration[1]:.1f} s; picture and sound last the whole clip.

Layout (PJZUF-C101):
  video/<Class>/v_<Class>_g<gg>_c<cc>.mp4   H.264 yuv420p, {WIDTH}x{HEIGHT} px, {FPS} fps
  audio/<Class>/v_<Class>_g<gg>_c<cc>.wav   16-bit PCM, {WAV_RATE} Hz, mono or stereo
  {n_wav} clips have a wav file; {n_embedded} carry mono AAC ({AAC_RATE} Hz) inside the mp4.

Classes, as (picture, sound) pairs:
{chr(10).join(rows)}

Pictures: a texture filling the frame (horizontal stripes, vertical stripes or checkerboard)
with random colours, period (10-15 px) and slow drift, 0-2 moving clutter blobs, pixel noise.
Sounds: low hum (300-550 Hz and its octave), high beep (a 1.8-2.6 kHz tone) or hiss
(noise 4.5-6.5 kHz), with random level, phase and tremolo, over background noise and clicks.

{how}
"""
