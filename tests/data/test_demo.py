"""The demo data set: real files, deterministic, and a task that needs both modalities."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from mbt.config import DataConfig
from mbt.data.audio import load_audio, log_mel
from mbt.data.demo import CLASS_SETS, CLASSES, make_demo_data
from mbt.data.layouts import scan
from mbt.data.video import probe_video, read_frames


def _decoded(root: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    out = {}
    for video in sorted((root / "video").rglob("*.mp4")):
        rel = video.relative_to(root / "video").with_suffix("")
        wav = root / "audio" / rel.with_suffix(".wav")
        info = probe_video(video)
        frames = read_frames(video, [i / info.fps for i in range(info.num_frames)])
        out[rel.as_posix()] = (frames, load_audio(wav if wav.exists() else video))
    return out


def test_same_seed_same_content(tmp_path):
    a = make_demo_data(tmp_path / "a", seed=3, clips_per_class=1, embedded_audio_every=2)
    b = make_demo_data(tmp_path / "b", seed=3, clips_per_class=1, embedded_audio_every=2)
    c = make_demo_data(tmp_path / "c", seed=4, clips_per_class=1, embedded_audio_every=2)
    da, db, dc = _decoded(a), _decoded(b), _decoded(c)
    assert sorted(da) == sorted(db) == sorted(dc) and len(da) == len(CLASSES)
    for key in da:  # decoded content (the files themselves are byte-identical too)
        assert torch.equal(da[key][0], db[key][0]) and torch.equal(da[key][1], db[key][1])
    assert any(not torch.equal(da[k][0], dc[k][0]) for k in da)


def test_files_and_readme(demo_root, tmp_path):
    videos = sorted((demo_root / "video").rglob("*.mp4"))
    wavs = sorted((demo_root / "audio").rglob("*.wav"))
    assert len(videos) == 4 * len(CLASSES)
    embedded = [v for v in videos if probe_video(v).has_audio]
    assert 0 < len(embedded) < len(videos)  # some sound inside the mp4 ...
    assert len(embedded) + len(wavs) == len(videos)  # ... the rest in a wav, never both
    info = probe_video(videos[0])
    assert (info.width, info.height, info.fps) == (64, 48, 25.0) and 1.7 < info.duration < 2.5
    import av

    with av.open(str(videos[0])) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        assert c.streams.video[0].codec_context.pix_fmt == "yuv420p"
    with av.open(str(wavs[0])) as c:
        assert c.streams.audio[0].sample_rate == 44100
    readme = (demo_root / "README.txt").read_text()
    for name in CLASSES:
        assert name in readme
    assert "50 %" in readme
    pairing = make_demo_data(tmp_path / "pairing", classes="pairing", clips_per_class=3)
    assert "its own sound" in (pairing / "README.txt").read_text()
    assert sorted(p.name for p in (pairing / "video").iterdir()) == sorted(CLASS_SETS["pairing"])


@pytest.mark.parametrize(("class_set", "bayes"), [("cycle", 1 / 2), ("pairing", 1 / 3)])
def test_no_single_modality_predicts_the_class(class_set, bayes):
    """Bayes accuracy of picture alone and sound alone: 50 % (cycle), 33 % (pairing, chance);
    of both together: 100 %."""
    assert sorted(CLASS_SETS) == ["cycle", "pairing"]
    classes = CLASS_SETS[class_set]
    mass: Counter = Counter()
    for name, pairs in classes.items():
        for pair in pairs:
            mass[name, pair] += 1 / len(pairs)  # each class has the same number of clips
    for axis in (0, 1):
        best: dict[str, float] = {}
        for name, pair in mass:
            per_class = sum(v for (n, p), v in mass.items() if n == name and p[axis] == pair[axis])
            best[pair[axis]] = max(best.get(pair[axis], 0.0), per_class)
        assert sum(best.values()) / len(classes) == pytest.approx(bayes)
    assert len({pair for _, pair in mass}) == len(mass)  # each pair belongs to one class


def test_cues_are_visible_and_audible(demo_root):
    """The texture orientation shows in the decoded frames, the sound's band in the log-mel."""
    index = scan(demo_root, DataConfig())
    for clip in index.train + index.val:
        ((picture, sound),) = CLASSES[index.classes[clip.labels[0]]]
        frames = read_frames(clip.video, [0.5], short_side=36)[0].float().mean(-1)  # (H, W)
        gx = (frames[:, 1:] - frames[:, :-1]).abs().mean()  # changes along x: vertical stripes
        gy = (frames[1:] - frames[:-1]).abs().mean()
        seen = "V" if gx > 3 * gy else "H" if gy > 3 * gx else "C"
        assert seen == picture, (clip.key, gx, gy)
        fbank = log_mel(load_audio(clip.audio or clip.video), num_mel_bins=64)  # (N_a, 64)
        peak = int(fbank.median(0).values.argmax())
        heard = "L" if peak < 24 else "B" if peak < 44 else "S"
        assert heard == sound, (clip.key, peak)
