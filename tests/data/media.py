"""Media files generated at test time (PyAV), so no test depends on downloaded data.

``write_video`` writes frames (and optionally an audio track muxed into the same container),
``write_audio`` writes a waveform to wav / flac / ogg / mp3. ``index_frame`` / ``frame_index``
draw and read back a frame number as a pattern of black and white stripes that survives lossy
codecs, so decoding tests can check *which* frame came back from any container.

Import them from other tests with ``from tests.data.media import write_video``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# Encoder settings chosen for tiny test clips: fast, and high enough quality that the stripe
# pattern of ``index_frame`` decodes back exactly through every lossy codec.
_VIDEO_OPTIONS = {
    "libx264": {"preset": "ultrafast", "crf": "12"},
    "libx264rgb": {"preset": "ultrafast", "qp": "0"},  # qp 0 = lossless
    "libvpx": {"deadline": "realtime", "cpu-used": "8", "crf": "4", "b": "4M"},
    "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8", "crf": "4", "b": "4M"},
    "mpeg4": {"qscale": "2"},
}
_PIX_FMT = {"libx264rgb": "rgb24", "ffv1": "bgr0", "png": "rgb24", "rawvideo": "rgb24"}
_AUDIO_CODEC_FOR_CONTAINER = {
    ".mp4": "aac",
    ".m4v": "aac",
    ".mov": "aac",
    ".mkv": "aac",
    ".webm": "libopus",
    ".avi": "pcm_s16le",
}
_AUDIO_CODEC_FOR_FILE = {
    ".wav": "pcm_s16le",
    ".flac": "flac",
    ".ogg": "libopus",
    ".opus": "libopus",
    ".mp3": "mp3",
    ".m4a": "aac",
}
_OPUS_RATES = (48000, 24000, 16000, 12000, 8000)
_STRIPES = 8  # bits of the frame number drawn by index_frame


def index_frame(index: int, height: int = 64, width: int = 64) -> np.ndarray:
    """A uint8 (H, W, 3) frame showing ``index`` (0..255) as 8 black/white vertical stripes."""
    assert 0 <= index < 2**_STRIPES and width % _STRIPES == 0
    bits = (index >> np.arange(_STRIPES)[::-1]) & 1  # most significant bit on the left
    row = np.repeat(bits * 255, width // _STRIPES).astype(np.uint8)  # (W,)
    return np.broadcast_to(row[None, :, None], (height, width, 3)).copy()


def frame_index(frame: np.ndarray) -> int:
    """Read back the number drawn by :func:`index_frame` from a decoded (H, W, 3) frame."""
    h, w, _ = frame.shape
    stripes = frame.astype(np.float32).mean(axis=(0, 2)).reshape(_STRIPES, w // _STRIPES)
    inner = stripes[:, 1:-1].mean(axis=1)  # skip the stripe edges, where codecs ring
    bits = (inner > 127.5).astype(int)
    return int((bits << np.arange(_STRIPES)[::-1]).sum())


def indexed_clip(num_frames: int, height: int = 64, width: int = 64) -> np.ndarray:
    """uint8 (T, H, W, 3) clip whose frame t shows the number t."""
    return np.stack([index_frame(t, height, width) for t in range(num_frames)])


def write_video(
    path: str | Path,
    frames: np.ndarray,
    fps: float,
    *,
    codec: str = "libx264",
    audio: np.ndarray | None = None,
    audio_rate: int = 16000,
    audio_channels: int = 1,
    pix_fmt: str | None = None,
    audio_codec: str | None = None,
    times: Sequence[float] | None = None,
    gop_size: int | None = None,
    options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
) -> Path:
    """Encode a clip, with an optional audio track muxed into the same container.

    Args:
        path: output file; the container is chosen from the extension (.mp4, .mkv, .avi, ...).
        frames: uint8 (T, H, W, 3) RGB frames. H and W should be even for 4:2:0 codecs.
        fps: nominal frame rate (the stream's time base is 1/fps unless ``times`` is given).
        codec: video encoder name (``libx264``, ``libx264rgb``, ``ffv1``, ``mpeg4``, ``libvpx``,
            ``libvpx-vp9``, ...).
        audio: float samples in [-1, 1], (N,) or (N, C); None writes a video-only file.
        audio_rate: sample rate of ``audio``.
        audio_channels: channel count when ``audio`` is 1-D (the signal is duplicated).
        pix_fmt: encoder pixel format; default rgb24/bgr0 for lossless RGB codecs, else yuv420p.
        audio_codec: audio encoder; default by container (aac, libopus for webm, pcm for avi).
        times: presentation time of each frame in seconds, for variable frame rate clips.
        gop_size: frames between key frames (small values make seeking tests meaningful).
        options: encoder options added to the defaults (e.g. ``{"bf": "3"}`` for B-frames).
        container_options: muxer options (e.g. ``{"movflags": "+faststart"}``: index first).

    Returns:
        ``path`` as a Path.
    """
    path = Path(path)
    frames = np.asarray(frames)
    assert frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[-1] == 3, frames.shape
    with av.open(str(path), "w", options=container_options or {}) as container:
        rate = Fraction(fps).limit_denominator(1001)
        vs = container.add_stream(codec, rate=rate)
        vs.width, vs.height = frames.shape[2], frames.shape[1]
        vs.pix_fmt = pix_fmt or _PIX_FMT.get(codec, "yuv420p")
        vs.options = {**_VIDEO_OPTIONS.get(codec, {}), **(options or {})}
        if gop_size is not None:
            vs.codec_context.gop_size = gop_size
        if times is not None:  # variable frame rate: millisecond timestamps
            assert len(times) == len(frames)
            vs.codec_context.time_base = Fraction(1, 1000)
            vs.time_base = Fraction(1, 1000)
        as_ = None
        if audio is not None:
            samples = np.asarray(audio, dtype=np.float32)
            if samples.ndim == 1:
                samples = np.repeat(samples[:, None], audio_channels, axis=1)  # (N, C)
            acodec = audio_codec or _AUDIO_CODEC_FOR_CONTAINER.get(path.suffix.lower(), "aac")
            as_ = _add_audio_stream(container, acodec, audio_rate, samples.shape[1])

        for t, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            if times is not None:
                frame.pts = round(times[t] * 1000)
                frame.time_base = Fraction(1, 1000)
            else:
                frame.pts = t
            container.mux(vs.encode(frame))
        container.mux(vs.encode(None))
        if as_ is not None:
            _encode_audio(container, as_, samples, audio_rate)
    return path


def write_audio(
    path: str | Path,
    samples: np.ndarray,
    rate: int,
    *,
    codec: str | None = None,
    options: dict[str, str] | None = None,
) -> Path:
    """Write float samples in [-1, 1], (N,) mono or (N, C), to wav / flac / ogg / mp3 / m4a.

    The codec follows the extension (pcm_s16le, flac, opus, mp3, aac); ``options`` go to the
    encoder (e.g. ``{"aac_pns": "0"}``). Opus only runs at 8/12/16/24/48 kHz; other rates are
    encoded at 48 kHz (PyAV resamples on the way in).
    """
    path = Path(path)
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 1:
        x = x[:, None]  # (N, 1)
    codec = codec or _AUDIO_CODEC_FOR_FILE.get(path.suffix.lower())
    if codec is None:
        raise ValueError(f"{path}: no default audio codec for {path.suffix!r}; pass codec=")
    with av.open(str(path), "w") as container:
        stream = _add_audio_stream(container, codec, rate, x.shape[1])
        stream.options = dict(options or {})
        _encode_audio(container, stream, x, rate)
    return path


def _layout(channels: int) -> str:
    return {1: "mono", 2: "stereo"}.get(channels, f"{channels}c")


def _add_audio_stream(container, codec: str, rate: int, channels: int):
    stream_rate = rate
    if codec in ("libopus", "opus") and rate not in _OPUS_RATES:
        stream_rate = 48000
    return container.add_stream(codec, rate=stream_rate, layout=_layout(channels))


def _encode_audio(container, stream, samples: np.ndarray, rate: int) -> None:
    """Feed (N, C) float32 samples to ``stream`` in chunks; PyAV re-chunks and converts."""
    chunk = 1024
    for i in range(0, len(samples), chunk):
        planar = np.ascontiguousarray(samples[i : i + chunk].T)  # (C, n)
        frame = av.AudioFrame.from_ndarray(planar, format="fltp", layout=_layout(planar.shape[0]))
        frame.sample_rate = rate
        frame.pts = i
        frame.time_base = Fraction(1, rate)
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def sine(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    """float32 (N,) sine wave."""
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# files as phones and other muxers write them (PyAV's muxers do not, on request)


def set_display_matrix(path: str | Path, a: int, b: int, c: int, d: int) -> Path:
    """Set the display matrix of an mp4 / mov file's video track header (``tkhd``), in place.

    ``(a, b, c, d)`` in {-1, 0, 1} is the 2x2 part of the matrix: a stored pixel (x, y) is
    shown at (a x + c y, b x + d y) (libavutil/display.h). The translation is the one a phone
    writes, which keeps the picture at the origin (FFmpeg ignores it). A phone's portrait clip
    is ``(0, 1, -1, 0)``: stored landscape, shown turned 90 degrees clockwise.
    """
    path = Path(path)
    data = bytearray(path.read_bytes())
    tkhd = _video_tkhd(data)
    version = data[tkhd + 8]
    at = tkhd + 8 + 4 + (32 if version == 1 else 20) + 16  # header, version/flags, times, ...
    width, height = (v >> 16 for v in struct.unpack(">II", data[at + 36 : at + 44]))
    x = -(min(0, a * width) + min(0, c * height))
    y = -(min(0, b * width) + min(0, d * height))
    one = 1 << 16  # 16.16 fixed point; u, v, w are 2.30
    matrix = (a * one, b * one, 0, c * one, d * one, 0, x * one, y * one, 1 << 30)
    data[at : at + 36] = struct.pack(">9i", *matrix)
    path.write_bytes(bytes(data))
    return path


def _boxes(data: bytearray, start: int, end: int):
    """(offset, type, end) of the ISO-BMFF boxes in ``data[start:end]``."""
    while start + 8 <= end:
        size, kind = struct.unpack(">I4s", data[start : start + 8])
        if size == 1:
            size = struct.unpack(">Q", data[start + 8 : start + 16])[0]
        elif size == 0:
            size = end - start
        yield start, kind, start + size
        start += size


def _video_tkhd(data: bytearray) -> int:
    """Offset of the ``tkhd`` box of the video track (the ``trak`` whose handler is ``vide``)."""
    for moov, kind, moov_end in _boxes(data, 0, len(data)):
        if kind != b"moov":
            continue
        for trak, kind, trak_end in _boxes(data, moov + 8, moov_end):
            if kind != b"trak":
                continue
            parts = {k: (o, e) for o, k, e in _boxes(data, trak + 8, trak_end)}
            mdia = {k: o for o, k, _ in _boxes(data, parts[b"mdia"][0] + 8, parts[b"mdia"][1])}
            if data[mdia[b"hdlr"] + 16 : mdia[b"hdlr"] + 20] == b"vide":
                return parts[b"tkhd"][0]
    raise ValueError("no video track header")


def drop_stream_durations(path: str | Path) -> Path:
    """Rename a Matroska / WebM file's per-stream ``DURATION`` tags, in place, so that only the
    container's length is left, as in files whose muxer writes no per-track tags (browsers'
    MediaRecorder and libwebm, streaming muxers). The bytes keep their length: the file stays
    valid, and FFmpeg reads the tags under the other name."""
    path = Path(path)
    data = path.read_bytes()
    assert data.count(b"DURATION") >= 1, f"{path}: no DURATION tag to drop"
    path.write_bytes(data.replace(b"DURATION", b"NOLENGTH"))
    return path
