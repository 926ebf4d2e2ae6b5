"""Audio decoding and AST features: parity with HF's ASTFeatureExtractor, analytic signals."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from mbt.data.audio import (
    AUDIOSET_MEAN,
    AUDIOSET_STD,
    SAMPLE_RATE,
    MediaError,
    NoAudioError,
    ast_features,
    load_audio,
    log_mel,
    mel_filters,
    normalize_fbank,
    pad_or_cut,
)
from tests.data.media import indexed_clip, sine, write_audio, write_video

SR = SAMPLE_RATE


def chirp_harmonics_noise(seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    """Linear chirp 100 Hz -> 4 kHz, a 220 Hz harmonic series, noise and a DC offset."""
    t = np.arange(round(seconds * SR)) / SR
    chirp = 0.3 * np.sin(2 * np.pi * (100 * t + 0.5 * (4000 - 100) / seconds * t**2))
    harmonics = sum(0.1 / k * np.sin(2 * np.pi * 220 * k * t) for k in range(1, 8))
    noise = 0.01 * np.random.default_rng(seed).standard_normal(len(t))
    return (chirp + harmonics + noise + 0.05).astype(np.float32)


def speech_like(seconds: float = 2.5, seed: int = 1) -> np.ndarray:
    """Voiced harmonics with a wobbling pitch and a formant bump, 4 Hz syllabic AM, breath noise."""
    t = np.arange(round(seconds * SR)) / SR
    f0 = 140 + 20 * np.sin(2 * np.pi * 1.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    voice = sum(np.exp(-(((k * 140 - 700) / 600) ** 2)) * np.sin(k * phase) for k in range(1, 30))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t)) ** 2
    noise = 0.003 * np.random.default_rng(seed).standard_normal(len(t))
    return (0.2 * envelope * voice + noise).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# features


def hf_extractor(max_length: int):
    """HF's AST feature extractor, checked to run its numpy (torchaudio-free) path."""
    from transformers import ASTFeatureExtractor
    from transformers.utils import is_speech_available

    # HF uses torchaudio's kaldi.fbank when it is installed; its numpy path is the oracle here.
    assert not is_speech_available(), "torchaudio is installed: HF would not use its numpy path"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "at least one mel filter has all zero values"
        fe = ASTFeatureExtractor(max_length=max_length)
    assert hasattr(fe, "mel_filters")  # set only on the numpy path
    return fe


@pytest.mark.parametrize("signal", [chirp_harmonics_noise, speech_like])
@pytest.mark.parametrize("target_frames", [1024, 200])  # padded (AST's 10.24 s) and cut
def test_parity_with_hf_ast_feature_extractor(signal, target_frames):
    x = signal()
    ours = ast_features(torch.from_numpy(x), target_frames)
    # AST's loader subtracts the waveform mean before fbank; HF leaves that to the caller.
    fe = hf_extractor(target_frames)
    ref = fe(x - x.mean(), sampling_rate=SR, return_tensors="np")["input_values"][0]
    assert ours.shape == ref.shape == (target_frames, 128)
    assert np.abs(ours.numpy() - ref).max() < 1e-3


def test_sine_peaks_in_the_right_mel_bin():
    def mel(f):
        return 1127.0 * math.log(1 + f / 700)

    lo, hi = mel(20.0), mel(SR / 2)
    for k in (40, 70, 100):
        centre = lo + (k + 1) * (hi - lo) / (128 + 1)  # HTK mel centre of filter k
        freq = 700 * (math.exp(centre / 1127.0) - 1)
        fbank = log_mel(torch.from_numpy(sine(freq, 1.0, SR)))
        assert fbank.shape == (98, 128)  # 1 + (16000 - 400) // 160
        assert int(fbank.mean(0).argmax()) == k, (k, freq)


def test_log_mel_shapes_and_batching():
    x = torch.from_numpy(speech_like(1.0))
    assert log_mel(x[:399]).shape == (0, 128)  # shorter than one 25 ms frame
    assert log_mel(x[:400]).shape == (1, 128)
    assert log_mel(x, num_mel_bins=64).shape == (98, 64)
    both = log_mel(torch.stack([x, 0.5 * x]))  # (2, 98, 128)
    assert torch.allclose(both[1], log_mel(0.5 * x), atol=1e-5)
    assert torch.isfinite(log_mel(torch.zeros(SR))).all()  # silence hits the log floor, no -inf


def test_log_mel_accepts_numpy_and_refuses_integer_samples():
    wav = speech_like(1.0)  # float32 numpy, as a wav reader returns it after scaling
    torch.testing.assert_close(log_mel(wav), log_mel(torch.from_numpy(wav)))
    assert log_mel(wav.astype(np.float64)).dtype == torch.float32
    with pytest.raises(ValueError, match="int16.*32768"):
        log_mel((wav * 32767).astype(np.int16))


def test_mel_filters_are_cached_and_kaldi_shaped():
    fb = mel_filters(128, 512, SR)
    assert fb is mel_filters(128, 512, SR)
    assert fb.shape == (128, 257) and (fb[:, -1] == 0).all()  # Nyquist bin unused, as Kaldi
    assert fb.max() <= 1.0 and fb.min() >= 0.0


def test_pad_or_cut_and_normalize():
    fbank = torch.randn(10, 4)
    padded = pad_or_cut(fbank, 15)
    assert padded.shape == (15, 4) and torch.equal(padded[:10], fbank) and (padded[10:] == 0).all()
    assert torch.equal(pad_or_cut(fbank, 6), fbank[:6])
    norm = normalize_fbank(torch.full((2, 2), AUDIOSET_MEAN + 2 * AUDIOSET_STD))
    assert torch.allclose(norm, torch.ones(2, 2))


# ---------------------------------------------------------------------------------------------
# decoding


def peak_hz(x: torch.Tensor, rate: int = SR) -> float:
    spectrum = np.abs(np.fft.rfft(x.numpy() * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


def test_stereo_44k_wav_to_mono_16k(tmp_path):
    left = sine(1000, 2.0, 44100, amplitude=0.4)
    path = write_audio(tmp_path / "stereo.wav", np.stack([left, left], axis=1), 44100)
    x = load_audio(path)
    assert x.dtype == torch.float32 and x.shape == (2 * SR,)
    assert peak_hz(x) == pytest.approx(1000, abs=1)
    assert float(x[1000:-1000].abs().max()) == pytest.approx(0.4, abs=0.01)  # mean of channels


@pytest.mark.parametrize("ext", ["flac", "ogg", "mp3"])
def test_compressed_formats(tmp_path, ext):
    path = write_audio(tmp_path / f"tone.{ext}", sine(440, 1.5, 44100), 44100)
    x = load_audio(path)
    assert abs(len(x) - 1.5 * SR) < 0.05 * SR  # codecs may add a few ms of padding
    assert peak_hz(x) == pytest.approx(440, abs=2)


def test_window_cut_and_zero_padding(tmp_path):
    # clicks at 1.0 s and 6.5 s in a 7 s file; start=6.0 > 5 s goes through the seek path
    x = np.zeros(7 * SR, np.float32)
    x[SR] = x[int(6.5 * SR)] = 0.9
    path = write_audio(tmp_path / "clicks.wav", x, SR)
    near = load_audio(path, start=0.5, duration=1.0)
    assert near.shape == (SR,) and int(near.abs().argmax()) == SR // 2
    late = load_audio(path, start=6.0, duration=2.0)  # runs 1 s past the end of the file
    assert late.shape == (2 * SR,) and int(late.abs().argmax()) == SR // 2
    assert (late[SR:] == 0).all()
    assert load_audio(path, start=3.0).shape == (4 * SR,)


def test_audio_track_of_a_video(tmp_path):
    audio = sine(660, 1.6, 22050)
    path = write_video(
        tmp_path / "with_audio.mp4", indexed_clip(40), 25, audio=audio, audio_rate=22050
    )
    x = load_audio(path)
    assert abs(len(x) - 1.6 * SR) < 0.05 * SR
    assert peak_hz(x) == pytest.approx(660, abs=2)


def test_media_errors(tmp_path):
    silent = write_video(tmp_path / "silent.mp4", indexed_clip(5), 25)
    with pytest.raises(NoAudioError, match="no audio stream") as err:
        load_audio(silent)
    assert str(silent) in str(err.value)
    empty = tmp_path / "empty.wav"
    empty.touch()
    corrupt = tmp_path / "corrupt.mp3"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    for path in (empty, corrupt):
        with pytest.raises(MediaError) as err:
            load_audio(path)
        assert str(path) in str(err.value) and not isinstance(err.value, NoAudioError)
