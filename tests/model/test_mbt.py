"""Contracts and fusion semantics of the MBT model on tiny configurations."""

from __future__ import annotations

import pytest
import torch

from mbt.model import MBT
from mbt.model.fusion import BottleneckFusion, Separate, SharedFusion, VanillaFusion

from ..conftest import tiny_model_config

REGIMES = ["bottleneck", "vanilla", "shared", "late"]


def tiny(**kw):
    return tiny_model_config(**kw)


def inputs(cfg, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(batch, cfg.num_frames, 3, cfg.image_size, cfg.image_size, generator=g)
    audio = torch.randn(batch, cfg.audio_frames, cfg.mel_bins, generator=g)
    return video, audio


def randomise_head(model):
    # The head is zero-initialised (official), which would block every other gradient.
    torch.nn.init.normal_(model.head.weight, std=0.02)
    torch.nn.init.normal_(model.head.bias, std=0.02)


@pytest.mark.parametrize("fusion", REGIMES)
@pytest.mark.parametrize("classifier", ["token", "gap"])
def test_shapes_every_regime(fusion, classifier):
    cfg = tiny(fusion=fusion, classifier=classifier, num_classes=7)
    model = MBT(cfg).eval()
    video, audio = inputs(cfg, batch=3)
    assert model(video=video, audio=audio).shape == (3, 7)
    per = model(video=video, audio=audio, per_modality=True)
    expected = {"video", "audio"} if classifier == "token" else {"fused"}
    assert set(per) == expected and all(v.shape == (3, 7) for v in per.values())
    assert model(video=video).shape == (3, 7)  # a clip without sound is still classified
    assert model(audio=audio).shape == (3, 7)
    assert model(video=video, audio=audio, fuse=False).shape == (3, 7)


@pytest.mark.parametrize("modality", ["video", "audio"])
def test_unimodal_models(modality):
    cfg = tiny(modalities=(modality,))
    model = MBT(cfg).eval()
    video, audio = inputs(cfg)
    out = model(**{modality: video if modality == "video" else audio})
    assert out.shape == (2, cfg.num_classes)
    assert all(isinstance(layer, Separate) for layer in model.layers)
    with pytest.raises(ValueError, match="built for"):
        model(video=video, audio=audio)


def test_layers_built_per_regime():
    kinds = {
        "bottleneck": BottleneckFusion,
        "vanilla": VanillaFusion,
        "shared": SharedFusion,
    }
    for fusion, kind in kinds.items():
        cfg = tiny(fusion=fusion, fusion_layer=1)
        layers = MBT(cfg).layers
        assert not isinstance(layers[0], kind)
        assert all(isinstance(layer, kind) for layer in layers[1:])
    late = MBT(tiny(fusion="late")).layers
    assert all(isinstance(layer, Separate) for layer in late)
    # fusion_layer == depth is late fusion whatever the regime
    assert all(isinstance(layer, Separate) for layer in MBT(tiny(fusion_layer=4)).layers)


@pytest.mark.parametrize("fusion", REGIMES)
@pytest.mark.parametrize("classifier", ["token", "gap"])
def test_every_parameter_gets_a_gradient_and_nothing_is_nan(fusion, classifier):
    cfg = tiny(
        fusion=fusion, classifier=classifier, dropout=0.1
    )  # no drop path: it may drop a branch
    model = MBT(cfg).train()
    randomise_head(model)
    video, audio = inputs(cfg)
    per = model(video=video, audio=audio, per_modality=True)
    loss = sum(v.square().mean() for v in per.values())
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


def test_head_is_zero_initialised_and_bottleneck_count_is_official():
    cfg = tiny()
    model = MBT(cfg)
    assert model.head.weight.abs().sum() == 0 and model.head.bias.abs().sum() == 0
    assert model.bottleneck.shape == (1, cfg.n_bottlenecks + 1, cfg.width)  # official +1 with token
    assert MBT(tiny(fusion="late")).bottleneck is None
    assert MBT(tiny(fusion="vanilla")).bottleneck is None
    gap = MBT(tiny(classifier="gap"))
    assert gap.bottleneck.shape == (1, cfg.n_bottlenecks, cfg.width)
    assert MBT(tiny(bottleneck_extra_token=False)).bottleneck.shape[1] == cfg.n_bottlenecks


def test_attention_is_sdpa_on_every_path():
    model = MBT(tiny())
    attns = [m for m in model.modules() if m.__class__.__name__ == "Attention"]
    assert attns and all(a.fused_attn for a in attns)


def test_stochastic_depth_grows_linearly_to_the_last_layer():
    cfg = tiny(drop_path_rate=0.3)
    model = MBT(cfg)
    rates = [layer.blocks["video"].drop_path1 for layer in model.layers]
    probs = [getattr(r, "drop_prob", 0.0) for r in rates]
    assert probs == pytest.approx([0.0, 0.1, 0.2, 0.3])


# ------------------------------------------------------------------------------------------
# Fusion semantics


def video_tokens_after(model, video, audio, n_layers):
    """Video tokens after the first ``n_layers`` layers (before the final norm)."""
    x = {"video": model.embed["video"](video), "audio": model.embed["audio"](audio)}
    z = None if model.bottleneck is None else model.bottleneck.expand(video.shape[0], -1, -1)
    for layer in model.layers[:n_layers]:
        x, z = layer(x, z, True)
    return x["video"]


@pytest.mark.parametrize("fusion", ["bottleneck", "vanilla", "shared"])
def test_before_fusion_layer_audio_does_not_touch_video(fusion):
    cfg = tiny(fusion=fusion, fusion_layer=2)
    model = MBT(cfg).eval()
    video, audio = inputs(cfg)
    _, other_audio = inputs(cfg, seed=1)
    with torch.no_grad():
        a = video_tokens_after(model, video, audio, 2)
        b = video_tokens_after(model, video, other_audio, 2)
        assert torch.equal(a, b)  # bit-identical below Lf
        # From Lf on audio reaches the video stream: directly for vanilla and shared; through
        # the bottlenecks one layer later (layer Lf writes audio into z, Lf + 1 reads it).
        hops = 2 if fusion == "bottleneck" else 1
        if hops == 2:
            c = video_tokens_after(model, video, audio, 3)
            assert torch.equal(c, video_tokens_after(model, video, other_audio, 3))
        c = video_tokens_after(model, video, audio, 2 + hops)
        d = video_tokens_after(model, video, other_audio, 2 + hops)
        assert not torch.allclose(c, d)


def test_bottleneck_fusion_only_crosses_through_bottlenecks():
    """With no bottleneck tokens, the streams are independent even in fusion layers."""
    cfg = tiny(n_bottlenecks=0, bottleneck_extra_token=False, fusion_layer=0)
    model = MBT(cfg).eval()
    randomise_head(model)
    video, audio = inputs(cfg)
    _, other_audio = inputs(cfg, seed=1)
    with torch.no_grad():
        a = model(video=video, audio=audio, per_modality=True)["video"]
        b = model(video=video, audio=other_audio, per_modality=True)["video"]
        assert torch.equal(a, b)
        # with bottlenecks, the same change reaches the video logits
        model4 = MBT(tiny(fusion_layer=0)).eval()
        randomise_head(model4)
        a = model4(video=video, audio=audio, per_modality=True)["video"]
        b = model4(video=video, audio=other_audio, per_modality=True)["video"]
        assert not torch.allclose(a, b)


def test_bottleneck_layer_matches_its_definition():
    """out_m = Block_m([x_m, z]); z = mean of the per-modality bottleneck outputs."""
    cfg = tiny(fusion_layer=0)
    model = MBT(cfg).eval()
    layer = model.layers[0]
    g = torch.Generator().manual_seed(0)
    x = {
        "video": torch.randn(2, 5, cfg.width, generator=g),
        "audio": torch.randn(2, 3, cfg.width, generator=g),
    }
    z = torch.randn(2, 4, cfg.width, generator=g)
    with torch.no_grad():
        out, z_new = layer(x, z, True)
        yv = layer.blocks["video"](torch.cat([x["video"], z], 1))
        ya = layer.blocks["audio"](torch.cat([x["audio"], z], 1))
    torch.testing.assert_close(out["video"], yv[:, :5])
    torch.testing.assert_close(out["audio"], ya[:, :3])
    torch.testing.assert_close(z_new, (yv[:, 5:] + ya[:, 3:]) / 2)


def test_fusion_switched_off_at_inference_makes_streams_independent():
    cfg = tiny(fusion_layer=0)
    model = MBT(cfg).eval()
    randomise_head(model)
    video, audio = inputs(cfg)
    _, other_audio = inputs(cfg, seed=1)
    with torch.no_grad():
        a = model(video=video, audio=audio, fuse=False, per_modality=True)["video"]
        b = model(video=video, audio=other_audio, fuse=False, per_modality=True)["video"]
        assert torch.equal(a, b)
        off = MBT(tiny(fusion_layer=0, test_with_bottlenecks=False)).eval()
        off.load_state_dict(model.state_dict())
        torch.testing.assert_close(
            off(video=video, audio=audio), model(video=video, audio=audio, fuse=False)
        )
    # in training, the official switch leaves fusion on
    off.train()
    assert torch.is_grad_enabled()


def test_late_fusion_equals_two_independent_streams():
    cfg = tiny(fusion="late")
    model = MBT(cfg).eval()
    randomise_head(model)
    video_model = MBT(tiny(modalities=("video",))).eval()
    audio_model = MBT(tiny(modalities=("audio",))).eval()
    sd = model.state_dict()
    for single in (video_model, audio_model):
        own = single.state_dict()
        single.load_state_dict({k: sd[k] for k in own})
    video, audio = inputs(cfg)
    with torch.no_grad():
        both = model(video=video, audio=audio, per_modality=True)
        torch.testing.assert_close(both["video"], video_model(video=video))
        torch.testing.assert_close(both["audio"], audio_model(audio=audio))
        torch.testing.assert_close(
            model(video=video, audio=audio), (both["video"] + both["audio"]) / 2
        )


def test_vanilla_fusion_lets_every_token_see_the_other_stream():
    cfg = tiny(fusion="vanilla", fusion_layer=3)
    model = MBT(cfg).eval()
    video, audio = inputs(cfg)
    audio2 = audio.clone()
    audio2[:, -16:] += 1.0  # change only the last audio patch row
    with torch.no_grad():
        a = video_tokens_after(model, video, audio, 4)
        b = video_tokens_after(model, video, audio2, 4)
    assert (a - b).abs().amax(-1).gt(0).all()  # every video token moved


def test_shape_errors_are_clear():
    model = MBT(tiny())
    with pytest.raises(ValueError, match=r"video: expected \(B, 4, 3, 32, 32\)"):
        model(video=torch.zeros(1, 4, 3, 16, 16))
    with pytest.raises(ValueError, match=r"audio: expected \(B, 128, 64\)"):
        model(audio=torch.zeros(1, 64, 128))
    with pytest.raises(ValueError, match="at least one"):
        model()


def test_no_weight_decay_lists_tokens_and_positions():
    model = MBT(tiny())
    names = model.no_weight_decay()
    assert "bottleneck" in names and "embed.video.prefix.cls_token" in names
    assert "embed.audio.pos_grid" in names and "embed.video.pos_temporal" in names
    assert not any("blocks" in n for n in names)
