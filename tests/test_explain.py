"""Bottleneck attention maps: recomputed weights equal timm's own, and the file-level command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mbt.cli import main
from mbt.config import RunConfig, save_config
from mbt.data.video import MediaError
from mbt.explain import bottleneck_attention, explain_clip, plot_attention
from mbt.model import MBT
from mbt.training.checkpoint import save_checkpoint
from tests.conftest import tiny_model_config
from tests.data.media import sine, write_video


def _model(**changes) -> MBT:
    torch.manual_seed(0)
    return MBT(tiny_model_config(num_classes=3, **changes)).eval()


def _inputs(cfg, batch=2):
    torch.manual_seed(1)
    video = torch.randn(batch, cfg.num_frames, 3, cfg.image_size, cfg.image_size)
    return video, torch.randn(batch, cfg.audio_frames, cfg.mel_bins)


def test_weights_are_softmax_rows_equal_to_timms_explicit_attention():
    model = _model()
    cfg = model.cfg
    video, audio = _inputs(cfg)
    out = bottleneck_attention(model, video, audio)
    assert out["layers"] == list(range(cfg.fusion_layer, cfg.depth))
    n_b = cfg.num_bottleneck_tokens
    for m, w in out["weights"].items():
        n = model.embed[m].prefix.num_prefix + model.embed[m].num_tokens + n_b
        assert w.shape == (len(out["layers"]), 2, cfg.num_heads, n_b, n)
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))

    # timm's non-fused path materialises the weights and passes them through attn_drop.
    seen = {}
    handles = []
    for i in out["layers"]:
        for m, block in model.layers[i].blocks.items():
            block.attn.fused_attn = False
            handles.append(
                block.attn.attn_drop.register_forward_hook(
                    lambda _m, _i, o, key=(i, m): seen.__setitem__(key, o)
                )
            )
    with torch.no_grad():
        logits = model(video=video, audio=audio, fuse=True)
    for h in handles:
        h.remove()
    torch.testing.assert_close(out["logits"], logits, atol=1e-5, rtol=0)
    for j, i in enumerate(out["layers"]):
        for m in ("video", "audio"):
            torch.testing.assert_close(
                out["weights"][m][j], seen[(i, m)][:, :, -n_b:], atol=1e-6, rtol=0
            )

    t, h, w = model.embed["video"].grid
    assert out["maps"]["video"].shape == (len(out["layers"]), 2, t, h, w)
    assert out["maps"]["audio"].shape == (len(out["layers"]), 2, *model.embed["audio"].grid)


def test_identity_projections_make_bottlenecks_attend_to_themselves():
    # q = k = 3 x: each query scores highest against itself, so the bottleneck keys must win.
    model = _model()
    layer = model.layers[model.cfg.fusion_layer].blocks["video"]
    d = model.cfg.width
    with torch.no_grad():
        qkv = layer.attn.qkv
        qkv.weight.zero_()
        qkv.bias.zero_()
        qkv.weight[:d] = torch.eye(d) * 3  # q = 3 x, k = 3 x
        qkv.weight[d : 2 * d] = torch.eye(d) * 3
    video, audio = _inputs(model.cfg, batch=1)
    out = bottleneck_attention(model, video, audio)
    w = out["weights"]["video"][0, 0].mean(0).mean(0)  # (P + N_v + N_b,) over heads, queries
    assert torch.isfinite(w).all() and abs(float(w.sum()) - 1) < 1e-5
    # Self-similarity dominates: the bottleneck keys (the queries themselves) score highest.
    n_b = model.cfg.num_bottleneck_tokens
    assert w[-n_b:].sum() > w[:-n_b].max()


def test_needs_bottleneck_fusion():
    with pytest.raises(ValueError, match="bottleneck"):
        bottleneck_attention(_model(fusion="late"), *_inputs(tiny_model_config()))


def test_plots_and_file_level_command(tmp_path):
    model = _model()
    out = bottleneck_attention(model, *_inputs(model.cfg, batch=1))
    files = plot_attention(out, tmp_path / "figs", per_layer=True)
    assert {f.name for f in files} >= {"video_attention.png", "audio_attention.png"}
    assert all(f.stat().st_size > 0 for f in files)

    model.save_pretrained(tmp_path / "model", class_names=["a", "b", "c"])
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (40, 48, 64, 3), dtype=np.uint8)
    clip = write_video(
        tmp_path / "clip.mp4", frames, 25, audio=sine(440, 1.6, 16000), audio_rate=16000
    )
    result = explain_clip(tmp_path / "model", clip, out_dir=tmp_path / "explain")
    assert result["prediction"] in {"a", "b", "c"}
    assert len(result["files"]) == 2
    assert abs(sum(result["probabilities"]) - 1) < 1e-5


def test_only_a_file_without_an_audio_stream_means_no_sound(tmp_path):
    model = _model()
    model.save_pretrained(tmp_path / "model")
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (40, 48, 64, 3), dtype=np.uint8)
    silent = write_video(tmp_path / "silent.mp4", frames, 25)  # no audio stream at all
    result = explain_clip(tmp_path / "model", silent, out_dir=tmp_path / "silent")
    assert [Path(f).name for f in result["files"]] == ["video_attention.png"]

    # A sound file that exists but cannot be decoded is an error, never silence.
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)) * 4)
    with pytest.raises(MediaError, match="corrupt.wav"):
        explain_clip(tmp_path / "model", silent, audio=corrupt, out_dir=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_cli_explains_a_run_directory(tmp_path, capsys):
    model = _model()
    run = tmp_path / "run"
    save_checkpoint(run / "checkpoints" / "last", model, {"epoch": 1, "classes": ["a", "b", "c"]})
    save_config(RunConfig(model=model.cfg), run / "config.yaml")
    frames = np.random.default_rng(0).integers(0, 255, (40, 48, 64, 3), dtype=np.uint8)
    clip = write_video(tmp_path / "clip.mp4", frames, 25, audio=sine(440, 1.6, 16000))
    args = ["explain", str(run), str(clip), "--checkpoint", "last", "--out", str(tmp_path / "x")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.split(" | ")[0] in {"predicted: a", "predicted: b", "predicted: c"}
    assert (tmp_path / "x" / "video_attention.png").is_file()
    assert (tmp_path / "x" / "audio_attention.png").is_file()
