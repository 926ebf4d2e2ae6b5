"""model.init + model.audio_init: both streams from pretrained files, fetched before the data,
and one-line errors that say what to download where."""

from __future__ import annotations

import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub.errors import LocalEntryNotFoundError

from mbt.config import ModelConfig
from mbt.model import MBT
from mbt.model.inits import apply_init, load_init_weights
from tests.model.checkpoints import write_ast_pth, write_vit

from ..conftest import tiny_model_config

SIZE = dict(width=32, depth=2, num_heads=2, mlp_ratio=2.0)


def tiny_cfg(**changes) -> ModelConfig:
    """The demo's 32 px model, 2 layers of width 32, with AST's overlapping audio patches."""
    return tiny_model_config(
        **SIZE, fusion_layer=1, audio_patch_size=16, audio_patch_stride=10, audio_dist_token=True,
        **changes,
    )  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("weights")
    write_vit(
        root / "vit.safetensors", width=32, depth=2, heads=2, mlp_ratio=2.0, image=32, patch=8
    )
    write_ast_pth(root / "ast.pth", width=32, depth=2, mlp_ratio=2.0)
    return {"vit": root / "vit.safetensors", "ast": root / "ast.pth"}


def _streams_equal(model: MBT, vit: dict, ast: dict) -> None:
    """Video blocks are the ViT's, audio blocks and tokens AST's, the final norm the ViT's."""
    for i, layer in enumerate(model.layers):
        for name, p in layer.blocks["video"].named_parameters():
            assert torch.equal(p, vit[f"blocks.{i}.{name}"]), name
        for name, p in layer.blocks["audio"].named_parameters():
            assert torch.equal(p, ast[f"module.v.blocks.{i}.{name}"]), name
    audio = model.embed["audio"]
    tokens = torch.cat([ast["module.v.cls_token"], ast["module.v.dist_token"]], dim=1)
    assert torch.equal(audio.prefix.cls_token, tokens)
    kernel = ast["module.v.patch_embed.proj.weight"].transpose(-1, -2)  # (F, T) -> (T, F)
    assert torch.equal(audio.proj.weight, kernel)
    assert torch.equal(model.norm.weight, vit["norm.weight"])


def test_both_streams_start_from_their_files(files):
    cfg = tiny_cfg(init=str(files["vit"]), audio_init=str(files["ast"]))
    weights = load_init_weights(cfg)
    model = MBT(cfg)
    apply_init(model, weights)
    vit = load_init_weights(tiny_cfg(init=str(files["vit"]))).vit
    _streams_equal(model, vit, torch.load(files["ast"], weights_only=True))
    assert "ViT" in weights.describe() and "AST" in weights.describe()
    with torch.no_grad():
        out = model(video=torch.randn(1, 4, 3, 32, 32), audio=torch.randn(1, 128, 64))
    assert torch.isfinite(out).all()


def test_audio_init_alone_also_sets_the_final_norm(files):
    model = MBT(tiny_cfg())
    apply_init(model, load_init_weights(tiny_cfg(audio_init=str(files["ast"]))))
    ast = torch.load(files["ast"], weights_only=True)
    assert torch.equal(model.norm.weight, ast["module.v.norm.weight"])


def test_empty_values_are_random_weights_and_no_audio_stream_ignores_audio_init(files):
    assert load_init_weights(tiny_cfg(init="", audio_init="")).describe() == "init: random weights"
    video_only = tiny_cfg(modalities=("video",), audio_init=str(files["ast"]))
    weights = load_init_weights(video_only)
    assert weights.ast is None and "not used: no audio stream" in weights.describe()


def test_a_hub_id_is_fetched_into_the_hub_cache(files, tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    config = transformers.ASTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_length=64, num_mel_bins=128, num_labels=3,
    )  # fmt: skip
    transformers.ASTForAudioClassification(config).save_pretrained(tmp_path / "hub" / "snapshot")
    asked = []

    def fake_download(repo, filename, **kwargs):  # the Hub cache, without a network
        asked.append((repo, filename))
        path = tmp_path / "hub" / "snapshot" / filename
        if not path.is_file():
            raise huggingface_hub.utils.EntryNotFoundError(f"{filename} not in {repo}")
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    weights = load_init_weights(tiny_cfg(audio_init="MIT/ast-tiny"))
    assert weights.ast is not None and weights.ast.width == 32
    assert asked[0] == ("MIT/ast-tiny", "config.json")


def test_unreachable_weights_say_what_to_download_and_where(files, tmp_path, monkeypatch):
    def offline(repo, filename, **kwargs):
        raise LocalEntryNotFoundError("Cannot find the requested files in the local cache. More.")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(FileNotFoundError) as e:
        load_init_weights(tiny_cfg(audio_init="MIT/ast-finetuned-audioset-10-10-0.4593"))
    msg = str(e.value)
    assert "\n" not in msg and "Cannot find the requested files in the local cache;" in msg
    assert "`hf download MIT/ast-finetuned-audioset-10-10-0.4593 --local-dir " in msg
    assert "model.audio_init=weights/ast-finetuned-audioset-10-10-0.4593" in msg

    missing = "weights/vit_base_patch16_224.augreg_in21k/model.safetensors"
    with pytest.raises(FileNotFoundError) as e:
        load_init_weights(tiny_cfg(init=missing))
    msg = str(e.value)
    assert msg.startswith(f"model.init={missing}: no such file;") and "\n" not in msg
    assert "`hf download timm/vit_base_patch16_224.augreg_in21k model.safetensors" in msg
    with pytest.raises(FileNotFoundError, match=r"audio_init=nope/ast\.pth: no such file"):
        load_init_weights(tiny_cfg(audio_init="nope/ast.pth"))


def test_weights_that_do_not_fit_name_the_setting(files, tmp_path):
    bad = tmp_path / "wide.pth"
    write_ast_pth(bad, width=64, depth=2, mlp_ratio=2.0)
    with pytest.raises(ValueError, match=r"model.audio_init=.*wide.pth: AST is width 64"):
        apply_init(MBT(tiny_cfg()), load_init_weights(tiny_cfg(audio_init=str(bad))))
    shutil.copy(files["vit"], tmp_path / "not_ast.pth")
    with pytest.raises(ValueError, match="not_ast.pth: cannot read AST weights|AST"):
        load_init_weights(tiny_cfg(audio_init=str(tmp_path / "not_ast.pth")))
