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
from pathlib import Path

import av
import numpy as np
import torch

from mbt.data.video import MediaError, _reason, open_media

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

SEEK_AFTER_S = 5.0  # seek (instead of decoding from the start) when start is later than this
SEEK_PREROLL_S = 1.0  # decode this much before `start`, so codec warm-up stays out of the window


class NoAudioError(MediaError):
    """The file has no audio stream (many UCF101 clips, some VGGSound videos)."""


# ---------------------------------------------------------------------------------------------
# Decoding


def load_audio(
    path: str | Path,
    *,
    start: float | None = None,
    duration: float | None = None,
    sample_rate: int = SAMPLE_RATE,
) -> torch.Tensor:
    """Decode the first audio stream of a file to mono float32 at ``sample_rate``.

    Channels are averaged (a mono signal stored as identical stereo channels comes back
    unchanged) after resampling with libswresample. Time 0 is the first sample of the stream.
    If the file ends before ``start + duration``, the result is zero-padded at the end, so the
    length is always ``round(duration * sample_rate)`` when ``duration`` is given.

    Args:
        path: any file FFmpeg reads: wav, flac, ogg, mp3, m4a, or a video with an audio track.
        start: first second to return (None = 0). Late starts seek instead of decoding all.
        duration: seconds to return (None = to the end of the stream).
        sample_rate: output rate in Hz.

    Returns:
        float32 (N,) waveform, nominally in [-1, 1].

    Raises:
        NoAudioError: the file has no audio stream.
        MediaError: the file is missing, empty, corrupt, or cannot be decoded.
    """
    start = 0.0 if start is None else float(start)
    if start < 0 or (duration is not None and duration < 0):
        raise ValueError(f"start and duration must be >= 0, got {start}, {duration}")
    first = round(start * sample_rate)  # index of the first wanted output sample
    count = None if duration is None else round(duration * sample_rate)
    container = open_media(path)
    try:
        if not container.streams.audio:
            raise NoAudioError(f"{path}: no audio stream")
        decoded = None
        if start > SEEK_AFTER_S:
            decoded = _decode(container, path, sample_rate, first, count, seek_to=start)
        if decoded is None:  # no seek, or it could not be placed on the timeline: from the start
            if start > SEEK_AFTER_S:
                container.close()
                container = open_media(path)
            decoded = _decode(container, path, sample_rate, first, count)
        x, offset = decoded
    except av.FFmpegError as e:
        raise MediaError(f"{path}: cannot decode audio ({_reason(e)})") from e
    finally:
        container.close()
    # `x` holds output samples [offset, offset + len(x)), offset <= first; cut [first, +count).
    lo = first - offset
    x = x[lo:] if count is None else x[lo : lo + count]
    if count is not None and len(x) < count:  # the file ends before the window does
        x = np.concatenate([x, np.zeros(count - len(x), np.float32)])
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))  # (N,)


def _decode(
    container: av.container.InputContainer,
    path: str | Path,
    sample_rate: int,
    first: int,
    count: int | None,
    seek_to: float | None = None,
) -> tuple[np.ndarray, int] | None:
    """Mono float32 samples and the output index of the first one (0 unless seeking).

    With ``seek_to``, seeks a little before it and places the samples on the timeline by the
    first frame's timestamp; returns None if that is impossible (no timestamp, or the seek
    landed after ``first``), and the caller decodes from the start instead.
    """
    stream = container.streams.audio[0]
    stream.thread_type = "AUTO"
    origin = stream.start_time or 0  # pts of the first sample, in time_base units
    if seek_to is not None:
        target = origin + int((seek_to - SEEK_PREROLL_S) / stream.time_base)
        container.seek(target, stream=stream, backward=True)
    resampler = av.AudioResampler(format="fltp", layout=None, rate=sample_rate)  # keep channels
    margin = sample_rate // 10  # decode 100 ms past the window: the resampler lags a little
    chunks: list[np.ndarray] = []
    offset, have = 0, 0
    for i, frame in enumerate(container.decode(stream)):
        if seek_to is not None and i == 0:
            if frame.pts is None:
                return None
            offset = round((frame.pts - origin) * float(stream.time_base) * sample_rate)
            if offset > first:
                return None
        for out in resampler.resample(frame):
            chunks.append(out.to_ndarray().mean(axis=0))  # (C, n) -> (n,) downmix
            have += out.samples
        if count is not None and offset + have >= first + count + margin:
            break
    else:
        chunks.extend(out.to_ndarray().mean(axis=0) for out in resampler.resample(None))
    if not chunks:
        raise MediaError(f"{path}: the audio stream holds no decodable samples")
    return np.concatenate(chunks).astype(np.float32, copy=False), offset


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
