"""Audio front-end: decode to 16 kHz mono, then AST's Kaldi log-mel filterbank.

``load_audio`` reads any file FFmpeg reads (wav, flac, ogg, mp3, or a video's own audio track)
through PyAV and libswresample. ``log_mel`` reproduces ``torchaudio.compliance.kaldi.fbank`` with
the arguments AST uses (REFERENCE.md section 4) in plain torch, so AudioSet-trained AST weights
see the features they were trained on; ``tests/data/test_audio.py`` checks it against HF's
``ASTFeatureExtractor``. Features are then cut or zero-padded to a fixed number of frames and
normalised with the AudioSet statistics::

    wav = load_audio(path, start=0.0, duration=8.0)        # (128000,)
    fbank = normalize_fbank(pad_or_cut(log_mel(wav), 800))  # (800, 128)

Shape vocabulary: N samples, T_a feature frames (one per 10 ms), F mel bins.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import av
import numpy as np
import torch

from mbt.data.lengths import HeaderLength, cut_short, stream_length
from mbt.data.video import DecodeCount, MediaError, TruncatedMediaError, _reason, open_media

SAMPLE_RATE = 16000  # Hz, what AST and MBT are trained on
FRAME_LENGTH_S = 0.025  # Kaldi frame_length 25 ms -> 400 samples at 16 kHz
FRAME_SHIFT_S = 0.010  # Kaldi frame_shift 10 ms -> 160 samples at 16 kHz, 100 frames per second
FBANK_RATE = 100  # log-mel frames per second: 1 / FRAME_SHIFT_S
N_MELS = 128  # F
PREEMPHASIS = 0.97  # Kaldi default preemphasis_coefficient
MEL_LOW_HZ = 20.0  # Kaldi default low_freq; the high edge is the Nyquist frequency
LOG_FLOOR = torch.finfo(torch.float32).eps  # 1.1920929e-07, Kaldi's floor before the log
# AudioSet statistics of this log-mel, from AST (YuanGongND/ast, src/run.py: dataset mean/std
# for audioset) and HF ASTFeatureExtractor's defaults. Other data sets need their own.
AUDIOSET_MEAN = -4.2677393
AUDIOSET_STD = 4.5689974

SEEK_AFTER_S = 1.0  # windows starting later than this seek instead of decoding from the start
SEEK_PREROLL_S = 0.5  # decode this much before a window, so codec and resampler warm-up stay out
LANDING_MARGIN_S = 0.05  # a seek must land at least this far before the window it serves
RESAMPLER_LAG_S = 0.1  # decode this much past a window: the resampler's output lags its input


class NoAudioError(MediaError):
    """The file has no audio stream (many UCF101 clips, some VGGSound videos)."""


class _SeekMissed(Exception):
    """A seek landed too late (or without a timestamp): decode from the start instead."""


# ---------------------------------------------------------------------------------------------
# Decoding


def load_audio(
    path: str | Path,
    *,
    start: float | None = None,
    duration: float | None = None,
    sample_rate: int = SAMPLE_RATE,
    pad_truncated: bool = False,
) -> torch.Tensor:
    """Decode the first audio stream of a file to mono float32 at ``sample_rate``.

    Channels are averaged (a mono signal stored as identical stereo channels comes back
    unchanged) after resampling with libswresample. Time 0 is the first sample of the stream;
    a window decodes only itself (see :class:`AudioTrack`), on the same sample grid as a
    decode from the start. If the file ends before ``start + duration``, the result is
    zero-padded at the end, so the length is always ``round(duration * sample_rate)`` when
    ``duration`` is given.

    Args:
        path: any file FFmpeg reads: wav, flac, ogg, mp3, m4a, or a video with an audio track.
        start: first second to return (None = 0).
        duration: seconds to return (None = to the end of the stream).
        sample_rate: output rate in Hz.
        pad_truncated: for a file that decodes to less than its header says (a cut download),
            zero-pad the missing part instead of raising.

    Returns:
        float32 (N,) waveform, nominally in [-1, 1].

    Raises:
        NoAudioError: the file has no audio stream.
        TruncatedMediaError: the file is truncated and the request reaches past its decodable
            end (unless ``pad_truncated``).
        MediaError: the file is missing, empty, corrupt, or cannot be decoded.
    """
    start = 0.0 if start is None else float(start)
    if start < 0 or (duration is not None and duration < 0):
        raise ValueError(f"start and duration must be >= 0, got {start}, {duration}")
    first = round(start * sample_rate)  # index of the first wanted output sample
    count = None if duration is None else round(duration * sample_rate)
    with AudioTrack(path, sample_rate=sample_rate) as track:
        x = track.read(first, count)
        wanted = first + count if count is not None else max(first, track.samples or 0)
        track.check_end(wanted, pad_truncated)  # to the end: as far as the header says
    if count is not None and len(x) < count:  # the file ends before the window does
        x = np.concatenate([x, np.zeros(count - len(x), np.float32)])
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))  # (N,)


def open_audio(path: str | Path) -> tuple[av.container.InputContainer, int | None]:
    """Open a sound file; also return the sample frames a wav header declares (else None).

    A wav is opened as wav with a 32-byte probe: FFmpeg's default probe (5 MB) reads a whole
    short wav packet by packet to learn what its header already says (~50 ms per open).
    """
    declared = wav_declared_frames(path)
    if declared is None:
        return open_media(path), None
    return open_media(path, {"probesize": "32"}, format="wav"), declared


def wav_declared_frames(path: str | Path) -> int | None:
    """Sample frames the ``data`` chunk of a RIFF/WAVE header declares; None if ``path`` is
    not such a wav or does not say (a streamed wav's size field is 0 or 0xFFFFFFFF).

    FFmpeg clamps a wav's duration to the bytes present, so a cut wav looks whole to it; the
    header's own count is what tells a truncated wav from a short one.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            block = 0  # bytes per sample frame, from the fmt chunk
            while len(chunk := f.read(8)) == 8:
                name, size = chunk[:4], int.from_bytes(chunk[4:], "little")
                if name == b"fmt ":
                    fmt = f.read(size)
                    block = int.from_bytes(fmt[12:14], "little") if len(fmt) >= 14 else 0
                    f.seek(size % 2, 1)  # chunks are padded to an even size
                elif name == b"data":
                    return size // block if block and 0 < size < 0xFFFFFFFF else None
                else:
                    f.seek(size + size % 2, 1)
    except OSError:
        return None  # open_media names the problem
    return None


class AudioTrack:
    """The first audio stream of a file as mono samples at ``sample_rate``: its length from
    the header, and any window of it decoded alone.

    A window seeks :data:`SEEK_PREROLL_S` before itself and drops input samples up to the
    next point where the input and output sample grids meet (every 441 input samples at
    44.1 kHz -> 16 kHz; ``rate / gcd(rate, sample_rate)`` in general), so its samples are the
    ones a decode from the start gives at the same indices (up to float rounding in the
    resampler's warm-up, which the pre-roll absorbs). Without that alignment an AAC track is
    shifted by a fraction of a sample and its log-mel differs by up to ~1.7.

    Args:
        path: the file.
        container: an open container of ``path`` to share with its video reader (the caller
            closes it); None opens one (a wav with a small probe, see :func:`open_audio`).
        sample_rate: output rate in Hz.
        threads: FFmpeg decoder threads, ``"AUTO"`` or ``"NONE"``.

    Raises:
        NoAudioError: the file has no audio stream.
        MediaError: the file cannot be opened.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        container: av.container.InputContainer | None = None,
        sample_rate: int = SAMPLE_RATE,
        threads: Literal["AUTO", "NONE"] = "NONE",
    ) -> None:
        self.path = path
        self.sample_rate = sample_rate
        self._own = container is None
        declared = None
        if container is None:
            container, declared = open_audio(path)
        self.container = container
        if not container.streams.audio:
            self.close()
            raise NoAudioError(f"{path}: no audio stream")
        self.stream = container.streams.audio[0]
        self.stream.thread_type = threads
        self.rate = int(self.stream.sample_rate or self.stream.codec_context.sample_rate or 0)
        if self.rate <= 0:
            self.close()
            raise MediaError(f"{path}: the audio stream has no sample rate (corrupt header?)")
        self._tb = float(self.stream.time_base) if self.stream.time_base else 1 / self.rate
        self._origin = self.stream.start_time or 0  # pts of the first sample, time_base units
        self._length = self._header_length(declared)
        # output samples the header promises (None: it gives no length)
        self.samples = None if self._length is None else round(self._length.seconds * sample_rate)
        self.decoded_to: int | None = None  # output samples that decode, once the end is seen
        self.count = DecodeCount()
        self._fresh = self._own  # nothing read yet: decoding from the start needs no seek
        self._error: str | None = None  # the FFmpeg error that ended decoding, if any

    def __enter__(self) -> AudioTrack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the container if this reader opened it."""
        if self._own:
            self.container.close()

    def _header_length(self, declared: int | None) -> HeaderLength | None:
        """The length the header gives (a wav's data chunk of ``declared`` sample frames, the
        stream's own, else the container's: :func:`mbt.data.lengths.stream_length`)."""
        seconds = None if declared is None else declared / self.rate
        return stream_length(self.container, self.stream, declared=seconds)

    def read(self, first: int = 0, count: int | None = None) -> np.ndarray:
        """float32 (n,): output samples ``[first, first + count)`` (to the end if ``count`` is
        None); fewer where the stream ends first (then :attr:`decoded_to` is set)."""
        if first < 0 or (count is not None and count < 0):
            raise ValueError(f"first and count must be >= 0, got {first}, {count}")
        try:
            x, offset = None, 0
            if first > SEEK_AFTER_S * self.sample_rate:
                try:
                    x, offset = self._decode(first, count, seek=True)
                except _SeekMissed:
                    x = None
            if x is None:
                x, offset = self._decode(first, count, seek=False)
        except av.FFmpegError as e:
            raise MediaError(f"{self.path}: cannot decode audio ({_reason(e)})") from e
        lo = first - offset  # `x` holds output samples [offset, offset + len(x)), offset <= first
        return x[lo:] if count is None else x[lo : lo + count]

    @property
    def truncated(self) -> bool:
        """Whether decoding reached the end of the stream well before its header's length and
        the file was cut there (:func:`mbt.data.lengths.cut_short`), not merely a sound that
        ends before its picture."""
        if self.decoded_to is None or self._length is None:
            return False
        decoded = self.decoded_to / self.sample_rate
        return cut_short(self.path, self.stream.index, self._length, decoded)

    def check_end(self, end: int, pad: bool = False) -> None:
        """Raise :class:`TruncatedMediaError` if output samples up to ``end`` were wanted from
        a truncated stream that ended before them (unless ``pad``)."""
        if pad or self.decoded_to is None or end <= self.decoded_to or not self.truncated:
            return
        sr = self.sample_rate
        why = f" (decoding stopped: {self._error})" if self._error else ""
        raise TruncatedMediaError(
            f"{self.path}: truncated: the header says {(self.samples or 0) / sr:.2f} s of sound, "
            f"it decodes to {self.decoded_to / sr:.2f} s{why}"
        )

    def _decode(self, first: int, count: int | None, seek: bool) -> tuple[np.ndarray, int]:
        """Mono samples from a seek before ``first`` (or from the start) to ``first + count``
        plus the resampler's lag, and the output index of the first one."""
        sr, rate = self.sample_rate, self.rate
        step = rate // math.gcd(rate, sr)  # input samples between points where the grids meet
        if seek:
            begin = first / sr - SEEK_PREROLL_S - step / rate  # seconds
            self._seek(self._origin + max(0, int(begin / self._tb)))
        elif not self._fresh:
            self._seek(self._origin)  # back to the start
        self._fresh = False
        stop = None if count is None else first + count + round(RESAMPLER_LAG_S * sr)
        resampler = av.AudioResampler(format="fltp", layout=None, rate=sr)  # keep channels
        chunks: list[np.ndarray] = []
        offset, have, drop = 0, 0, 0
        for i, frame in enumerate(self._frames()):
            if i == 0 and seek:
                if frame.pts is None:
                    raise _SeekMissed
                pos = round((frame.pts - self._origin) * self._tb * rate)  # input sample index
                drop = -pos % step  # to the next grid point
                offset = (pos + drop) * sr // rate
                if offset > first - LANDING_MARGIN_S * sr:
                    raise _SeekMissed
            if drop:
                frame, drop = _drop_samples(frame, drop)
                if frame is None:
                    continue
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().mean(axis=0))  # (C, n) -> (n,) downmix
                have += out.samples
            if stop is not None and offset + have >= stop:
                break
        else:  # the stream ended: flush the resampler
            chunks.extend(out.to_ndarray().mean(axis=0) for out in resampler.resample(None))
            self.decoded_to = offset + sum(len(c) for c in chunks)
        if not chunks:
            raise MediaError(f"{self.path}: the audio stream holds no decodable samples")
        return np.concatenate(chunks).astype(np.float32, copy=False), offset

    def _seek(self, target: int) -> None:
        try:
            self.container.seek(target, stream=self.stream, backward=True)
        except av.FFmpegError as e:
            raise _SeekMissed from e
        self.count.seeks += 1

    def _frames(self) -> Iterator[av.AudioFrame]:
        """Decoded frames from where the demuxer stands. An FFmpeg error after the first
        frame ends the stream there: the decodable end of a damaged or cut file."""
        frames = self.container.decode(self.stream)
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                return
            except av.FFmpegError as e:
                if self.count.samples == 0:
                    raise  # nothing decodes at all
                self._error = _reason(e)
                return
            self.count.samples += frame.samples
            yield frame


def _drop_samples(frame: av.AudioFrame, n: int) -> tuple[av.AudioFrame | None, int]:
    """``frame`` without its first ``n`` samples (None if that is all of them), and how many
    samples are still to drop from the frames after it."""
    if n >= frame.samples:
        return None, n - frame.samples
    x = frame.to_ndarray()  # planar (C, S) or packed (1, S * C)
    x = x[:, n:] if frame.format.is_planar else x[:, n * len(frame.layout.channels) :]
    out = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(x), format=frame.format.name, layout=frame.layout.name
    )
    out.sample_rate = frame.sample_rate
    if frame.pts is not None and frame.time_base is not None:
        out.pts = frame.pts + round(n / frame.sample_rate / frame.time_base)
        out.time_base = frame.time_base
    return out, 0


# ---------------------------------------------------------------------------------------------
# Features


def _frame_sizes(sample_rate: int) -> tuple[int, int, int]:
    """(window, hop, FFT size) in samples: 400, 160, 512 at 16 kHz."""
    window = int(sample_rate * FRAME_LENGTH_S)
    hop = int(sample_rate * FRAME_SHIFT_S)
    n_fft = 1 << (window - 1).bit_length()  # Kaldi round_to_power_of_two
    return window, hop, n_fft


@functools.lru_cache(maxsize=16)
def mel_filters(
    num_mel_bins: int, n_fft: int, sample_rate: int, device: str = "cpu"
) -> torch.Tensor:
    """Kaldi's triangular mel filterbank (HTK mel scale, triangles in mel space).

    Filter ``k`` rises from mel edge ``k`` to ``k + 1`` and falls to ``k + 2``, with
    ``num_mel_bins + 2`` edges evenly spaced in mel from 20 Hz to Nyquist, and
    ``mel(f) = 1127 ln(1 + f / 700)``. The Nyquist FFT bin gets weight 0, as in Kaldi.

    Returns:
        float32 (F, n_fft // 2 + 1).
    """
    mel_lo, mel_hi = _hz_to_mel(MEL_LOW_HZ), _hz_to_mel(sample_rate / 2)
    edges = torch.linspace(mel_lo, mel_hi, num_mel_bins + 2, dtype=torch.float64)  # (F + 2,)
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # (F, 1) each
    bins = torch.arange(n_fft // 2, dtype=torch.float64) * sample_rate / n_fft  # Hz, no Nyquist
    mel = 1127.0 * torch.log1p(bins / 700.0)  # (n_fft // 2,)
    up = (mel - left) / (centre - left)  # (F, n_fft // 2)
    down = (right - mel) / (right - centre)
    weights = torch.minimum(up, down).clamp_min(0.0)
    weights = torch.nn.functional.pad(weights, (0, 1))  # (F, n_fft // 2 + 1)
    return weights.to(device=device, dtype=torch.float32)


@functools.lru_cache(maxsize=16)
def _hann(window: int, device: str) -> torch.Tensor:
    return torch.hann_window(window, periodic=False, dtype=torch.float32, device=device)  # Kaldi


def _hz_to_mel(hz: float) -> float:
    return 1127.0 * math.log1p(hz / 700.0)


def log_mel(
    waveform: torch.Tensor | np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    num_mel_bins: int = N_MELS,
) -> torch.Tensor:
    """AST's log-mel filterbank: ``torchaudio.compliance.kaldi.fbank`` as AST calls it.

    The waveform mean is subtracted first (AST's loader does this). Then, Kaldi-style:
    25 ms frames every 10 ms, only whole frames (snip_edges); per frame remove the DC offset,
    pre-emphasise (0.97, the first sample against itself), apply a symmetric Hann window, take
    the power spectrum of a zero-padded 512-point FFT, apply the mel filterbank
    (:func:`mel_filters`), and take ``log(max(energy, float32 eps))``. No dither, no energy
    term (``use_energy=False``, so ``htk_compat`` changes nothing).

    Args:
        waveform: float (..., N) samples at ``sample_rate``, in [-1, 1] (not int16-scaled);
            a tensor or a numpy array.
        sample_rate: Hz.
        num_mel_bins: F.

    Returns:
        float32 (..., T_a, F) with ``T_a = 1 + (N - 400) // 160`` at 16 kHz (0 if N < 400).

    Raises:
        ValueError: integer samples (int16 from a wav reader must be divided by 32768 first).
    """
    window, hop, n_fft = _frame_sizes(sample_rate)
    x = torch.as_tensor(waveform)  # numpy arrays share their memory, tensors pass through
    if not x.is_floating_point():
        raise ValueError(
            f"log_mel: expected float samples in [-1, 1], got {x.dtype} "
            "(divide int16 samples by 32768)"
        )
    x = x.float()
    x = x - x.mean(dim=-1, keepdim=True)  # (..., N)
    if x.shape[-1] < window:
        return x.new_zeros(*x.shape[:-1], 0, num_mel_bins)
    frames = x.unfold(-1, window, hop)  # (..., T_a, 400)
    frames = frames - frames.mean(dim=-1, keepdim=True)  # remove_dc_offset
    previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)  # x[n - 1], x[-1] := x[0]
    frames = (frames - PREEMPHASIS * previous) * _hann(window, str(x.device))
    power = torch.fft.rfft(frames, n=n_fft).abs().pow(2)  # (..., T_a, 257)
    mel = power @ mel_filters(num_mel_bins, n_fft, sample_rate, str(x.device)).T  # (..., T_a, F)
    return mel.clamp_min(LOG_FLOOR).log()


def fbank_rows(num_samples: int, sample_rate: int = SAMPLE_RATE) -> int:
    """T_a of :func:`log_mel` for ``num_samples`` samples: whole 25 ms frames every 10 ms."""
    window, hop, _ = _frame_sizes(sample_rate)
    return 0 if num_samples < window else 1 + (num_samples - window) // hop


def fbank_span(start: int, rows: int, sample_rate: int = SAMPLE_RATE) -> tuple[int, int]:
    """(first sample, sample count) of log-mel rows ``[start, start + rows)``: what to decode
    so that :func:`log_mel` of it gives exactly those rows of the whole track's log-mel."""
    window, hop, _ = _frame_sizes(sample_rate)
    return start * hop, (rows - 1) * hop + window if rows > 0 else 0


def pad_or_cut(fbank: torch.Tensor, target_frames: int) -> torch.Tensor:
    """Zero-pad at the end, or cut, the time axis of (..., T_a, F) to ``target_frames`` rows.

    Padding happens before :func:`normalize_fbank`, as in AST, so padded rows normalise to
    ``-mean / (2 * std)`` (0.467 with the AudioSet statistics), not to 0.
    """
    n = fbank.shape[-2]
    if n >= target_frames:
        return fbank[..., :target_frames, :]
    return torch.nn.functional.pad(fbank, (0, 0, 0, target_frames - n))  # (..., target, F)


def normalize_fbank(
    fbank: torch.Tensor, mean: float = AUDIOSET_MEAN, std: float = AUDIOSET_STD
) -> torch.Tensor:
    """AST's normalisation ``(fbank - mean) / (2 * std)``: roughly zero mean, std 0.5."""
    return (fbank - mean) / (2 * std)


def ast_features(
    waveform: torch.Tensor,
    target_frames: int,
    *,
    mean: float = AUDIOSET_MEAN,
    std: float = AUDIOSET_STD,
    sample_rate: int = SAMPLE_RATE,
    num_mel_bins: int = N_MELS,
) -> torch.Tensor:
    """Waveform (..., N) -> normalised fbank (..., target_frames, F), AST's full recipe."""
    fbank = log_mel(waveform, sample_rate, num_mel_bins)  # (..., T_a, F)
    return normalize_fbank(pad_or_cut(fbank, target_frames), mean, std)
