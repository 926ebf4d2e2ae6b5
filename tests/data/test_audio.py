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
    AudioTrack,
    MediaError,
    NoAudioError,
    ast_features,
    fbank_rows,
    fbank_span,
    load_audio,
    log_mel,
    mel_filters,
    normalize_fbank,
    open_audio,
    pad_or_cut,
    wav_declared_frames,
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


# ---------------------------------------------------------------------------------------------
# windows: decode only the part that is used, on the grid of a decode from the start

NO_PNS = {"aac_pns": "0"}  # see test_windows_are_slices_of_the_whole_track


@pytest.fixture(scope="module")
def tracks(tmp_path_factory) -> dict[str, str]:
    """12-s sound files (a chirp, harmonics and noise) at the rates data sets come in."""
    d = tmp_path_factory.mktemp("tracks")

    def signal(rate: int, channels: int) -> np.ndarray:
        t = np.arange(12 * rate) / rate
        chirp = 0.3 * np.sin(2 * np.pi * (100 * t + 150 * t**2))  # 100 Hz -> 3.7 kHz
        harmonics = sum(0.1 / k * np.sin(2 * np.pi * 220 * k * t) for k in range(1, 6))
        noise = 0.02 * np.random.default_rng(rate).standard_normal(len(t))
        x = (chirp + harmonics + noise).astype(np.float32)
        return np.stack([x, np.roll(x, 7)], axis=1)[:, :channels]  # (N, C)

    return {
        "wav 44.1k stereo": str(write_audio(d / "a.wav", signal(44100, 2), 44100)),
        "wav 48k mono": str(write_audio(d / "b.wav", signal(48000, 1), 48000)),
        "aac 44.1k stereo": str(write_audio(d / "c.m4a", signal(44100, 2), 44100, options=NO_PNS)),
        "aac 22.05k mono": str(write_audio(d / "d.m4a", signal(22050, 1), 22050, options=NO_PNS)),
        "flac 32k": str(write_audio(d / "e.flac", signal(32000, 1), 32000)),
    }


@pytest.mark.parametrize(
    "name", ["wav 44.1k stereo", "wav 48k mono", "aac 44.1k stereo", "aac 22.05k mono", "flac 32k"]
)
def test_windows_are_slices_of_the_whole_track(tracks, name):
    """A window decoded alone equals the same samples of a decode from the start, so its
    log-mel rows are the whole track's rows, up to float32 rounding (the waveform mean that
    log_mel subtracts first differs: ~1e-7 of a row's energy, which is up to ~1e-3 in the log
    of its quietest bins). AAC's perceptual noise substitution
    synthesises noise bands from the decoder's random state, which depends on what it decoded
    before, so those bands cannot match any other decode; the AAC files here are encoded
    without it."""
    path = tracks[name]
    whole = load_audio(path)  # (N,)
    rows = log_mel(whole)  # (N_a, F)
    for start in (0, 80, 333, len(rows) - 300):
        first, n = fbank_span(start, 300)
        with AudioTrack(path) as track:
            x = torch.from_numpy(track.read(first, n))
            assert track.count.seeks == (first > SR)  # a window past the first second seeks
        assert torch.allclose(x, whole[first : first + n], atol=1e-6), (name, start)
        window, ref = log_mel(x).exp(), rows[start : start + 300].exp()  # mel energies
        assert window.shape == ref.shape == (300, 128)
        error = (window - ref).abs() / ref.sum(dim=-1, keepdim=True)  # of each row's energy
        assert error.max() < 1e-5, (name, start)


def test_late_window_of_an_aac_track_is_on_the_sample_grid(tracks):
    """load_audio(start > 5 s) once placed the samples by the first packet's timestamp without
    aligning the resampling grid: an AAC window shifted by a fraction of a sample."""
    path = tracks["aac 44.1k stereo"]
    whole = load_audio(path)
    late = load_audio(path, start=6.3, duration=1.0)  # (16000,)
    first = round(6.3 * SR)
    assert torch.allclose(late, whole[first : first + SR], atol=1e-6)


def test_track_length_from_the_header(tracks):
    for name, path in tracks.items():
        with AudioTrack(path) as track:
            assert track.count.samples == 0  # nothing decoded yet
            n = len(load_audio(path))
            # wav: exact; compressed: the decoder may emit a frame's padding beyond it
            assert n - 0.03 * SR <= track.samples <= n, name
            assert fbank_rows(track.samples) == 1 + (track.samples - 400) // 160


def test_wav_opens_with_a_small_probe(tracks):
    """A wav's header says everything: FFmpeg's default 5 MB probe would read a short wav
    packet by packet first (~50 ms per open)."""
    path = tracks["wav 44.1k stereo"]
    assert wav_declared_frames(path) == 12 * 44100
    container, declared = open_audio(path)
    with container:
        assert declared == 12 * 44100 and container.format.name == "wav"
    assert wav_declared_frames(tracks["aac 44.1k stereo"]) is None  # not a wav
