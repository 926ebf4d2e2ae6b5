"""AST weights (HF transformers folders, original AST .pth) -> MBT's audio stream.

Parity: a tiny random ``transformers.ASTModel`` and the converted audio-only MBT give the same
pooled feature (mean of CLS and distillation token after the final norm) on features made by
this package's AST front-end, which must match HF's ``ASTFeatureExtractor``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from mbt.config import ModelConfig  # noqa: E402
from mbt.model import MBT  # noqa: E402
from mbt.model.ast import (  # noqa: E402
    convert_ast,
    init_audio_from_ast,
    load_ast,
    pooled_audio_features,
)

MEL, LENGTH = 32, 64  # F, T_a: a 2 x 5 (freq x time) patch grid at kernel 16, stride 10


@pytest.fixture(scope="module")
def hf_ast(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.ASTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_length=LENGTH, num_mel_bins=MEL, num_labels=3,
    )  # fmt: skip
    model = transformers.ASTForAudioClassification(config).eval()
    with torch.no_grad():  # HF zero-inits tokens: randomise everything
        for p in model.parameters():
            p.normal_(0, 0.2)
    folder = tmp_path_factory.mktemp("hf_ast")
    model.save_pretrained(folder)
    return model, folder


def _features(seed: int = 0) -> torch.Tensor:
    """(2, LENGTH, MEL) normalised fbank of random waveforms, as HF's extractor makes it."""
    gen = np.random.default_rng(seed)
    waves = [gen.normal(0, 0.1, 16000).astype(np.float32) for _ in range(2)]
    fe = transformers.ASTFeatureExtractor(num_mel_bins=MEL, max_length=LENGTH)
    ref = torch.from_numpy(
        np.stack(
            [fe(w, sampling_rate=16000, return_tensors="np")["input_values"][0] for w in waves]
        )
    )
    try:
        from mbt.data.audio import log_mel, normalize_fbank, pad_or_cut
    except ImportError:
        return ref
    ours = torch.stack(
        [
            normalize_fbank(pad_or_cut(log_mel(torch.from_numpy(w), num_mel_bins=MEL), LENGTH))
            for w in waves
        ]
    )
    torch.testing.assert_close(ours, ref.float(), atol=2e-3, rtol=0)
    return ours


def _hf_pooled(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.audio_spectrogram_transformer(x).pooler_output


def test_hf_folder_converts_with_the_same_pooled_features(hf_ast, tmp_path):
    hf, folder = hf_ast
    model = convert_ast(folder, tmp_path / "out")
    cfg = model.cfg
    assert cfg.modalities == ("audio",) and cfg.audio_dist_token
    assert (cfg.audio_patch_size, cfg.audio_patch_stride, cfg.num_classes) == (16, 10, 3)
    assert model.embed["audio"].grid == (5, 2)  # (time, freq), time-major
    x = _features()
    with torch.no_grad():
        ours = pooled_audio_features(model, x)
    ref = _hf_pooled(hf, x)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    assert ref.abs().max() > 0.1

    reloaded = MBT.from_pretrained(tmp_path / "out")
    with torch.no_grad():
        torch.testing.assert_close(pooled_audio_features(reloaded, x), ours)


def _original_layout(hf) -> dict[str, torch.Tensor]:
    """The YuanGongND/ast DataParallel key layout, written from the HF model's weights."""
    sd = {k.removeprefix("audio_spectrogram_transformer."): v for k, v in hf.state_dict().items()}
    out = {
        "module.v.cls_token": sd["embeddings.cls_token"],
        "module.v.dist_token": sd["embeddings.distillation_token"],
        "module.v.pos_embed": sd["embeddings.position_embeddings"],
        "module.v.patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
        "module.v.patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
        "module.v.norm.weight": sd["layernorm.weight"],
        "module.v.norm.bias": sd["layernorm.bias"],
        "module.mlp_head.0.weight": sd["classifier.layernorm.weight"],
        "module.mlp_head.0.bias": sd["classifier.layernorm.bias"],
        "module.mlp_head.1.weight": sd["classifier.dense.weight"],
        "module.mlp_head.1.bias": sd["classifier.dense.bias"],
    }
    hf_layer = "layers.{i}." if any(k.startswith("layers.") for k in sd) else "encoder.layer.{i}."
    v5 = hf_layer.startswith("layers")
    for i in range(2):
        src, dst = hf_layer.format(i=i), f"module.v.blocks.{i}."
        names = {
            "norm1": "layernorm_before", "norm2": "layernorm_after",
            "attn.proj": "attention.o_proj" if v5 else "attention.output.dense",
            "mlp.fc1": "mlp.fc1" if v5 else "intermediate.dense",
            "mlp.fc2": "mlp.fc2" if v5 else "output.dense",
        }  # fmt: skip
        qkv = ("attention.q_proj", "attention.k_proj", "attention.v_proj") if v5 else tuple(
            f"attention.attention.{n}" for n in ("query", "key", "value")
        )  # fmt: skip
        for p in ("weight", "bias"):
            for ours, theirs in names.items():
                out[f"{dst}{ours}.{p}"] = sd[f"{src}{theirs}.{p}"]
            out[f"{dst}attn.qkv.{p}"] = torch.cat([sd[f"{src}{n}.{p}"] for n in qkv])
    return out


def test_original_pth_converts_with_the_same_pooled_features(hf_ast, tmp_path):
    hf, _ = hf_ast
    path = tmp_path / "audioset_tiny.pth"
    torch.save(_original_layout(hf), path)
    model = convert_ast(path, mel_bins=MEL, max_length=LENGTH, stride=10, num_heads=4)
    assert model.cfg.audio_frames == LENGTH and model.cfg.num_classes == 3
    x = _features(1)
    with torch.no_grad():
        torch.testing.assert_close(
            pooled_audio_features(model, x), _hf_pooled(hf, x), atol=1e-5, rtol=0
        )


def test_shorter_input_cuts_the_time_grid_from_the_middle(hf_ast):
    hf, folder = hf_ast
    model = convert_ast(folder, audio_frames=36)  # (36 - 16) // 10 + 1 = 3 time patches of 5
    pos = hf.audio_spectrogram_transformer.embeddings.position_embeddings.detach()[:, 2:]
    grid = pos.reshape(1, 2, 5, 32)[:, :, 1:4]  # (1, f, t, D): AST keeps t = 1..3
    want = grid.permute(0, 2, 1, 3).reshape(1, 6, 32)  # time-major
    torch.testing.assert_close(model.embed["audio"].pos_grid.detach(), want)


def test_init_audio_stream_of_an_av_model(hf_ast):
    _, folder = hf_ast
    cfg = ModelConfig(
        num_classes=4, width=32, depth=2, num_heads=4, mlp_ratio=2.0, image_size=16,
        patch_size=8, num_frames=2, audio_frames=64, mel_bins=32, audio_patch_size=16,
        audio_patch_stride=16, fusion_layer=1, n_bottlenecks=2,
    )  # fmt: skip
    model = MBT(cfg)
    ast = load_ast(folder)
    missing = init_audio_from_ast(model, ast)
    assert any(m.startswith("embed.video.") for m in missing) and "bottleneck" in missing
    assert not any(".blocks.audio." in m or m.startswith("embed.audio.") for m in missing)
    torch.testing.assert_close(model.embed["audio"].prefix.cls_token.detach(), ast.sd["cls_token"])
    assert model.embed["audio"].pos_grid.shape == (1, 4 * 2, 32)  # resized to 4 x 2 in 2-D
    with torch.no_grad():
        out = model(video=torch.randn(1, 2, 3, 16, 16), audio=torch.randn(1, 64, 32))
    assert torch.isfinite(out).all()


def test_not_an_ast_checkpoint(tmp_path):
    path = tmp_path / "x.pth"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="AST"):
        load_ast(path)


def test_unreadable_variants_are_errors_naming_the_file(hf_ast, tmp_path):
    hf, folder = hf_ast
    with pytest.raises(FileNotFoundError, match="no model.safetensors or pytorch_model.bin"):
        load_ast(tmp_path)
    weights = next(p for p in folder.iterdir() if p.name != "config.json")
    alone = tmp_path / "alone" / weights.name
    alone.parent.mkdir()
    alone.write_bytes(weights.read_bytes())  # HF weights without their config.json
    with pytest.raises(ValueError, match=r"alone.*need .*config\.json"):
        load_ast(alone)
    path = tmp_path / "original.pth"
    torch.save(_original_layout(hf), path)
    # 48 mel bins would give (48 - 16) // 10 + 1 = 4 frequency patches: 10 positions do not fit.
    with pytest.raises(ValueError, match=r"original\.pth: pos_embed: 10 positions do not fit 4"):
        load_ast(path, mel_bins=48)
