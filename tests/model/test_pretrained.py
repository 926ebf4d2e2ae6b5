"""Initialisation from ImageNet ViTs: parity with timm and HF, file formats, tensor surgery, cost."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

from mbt.config import ModelConfig
from mbt.model import MBT
from mbt.model.flops import count_flops
from mbt.model.pretrained import inflate_kernel, init_from_vit, load_vit_state_dict, resize_grid

from ..conftest import tiny_model_config


def tiny_vit(seed: int = 0) -> VisionTransformer:
    torch.manual_seed(seed)
    vit = VisionTransformer(
        img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0, num_classes=5
    )
    with torch.no_grad():  # timm zero-inits some tensors; make every one of them count
        for p in vit.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return vit.eval()


def one_frame_late(**kw) -> MBT:
    return MBT(tiny_model_config(num_frames=1, fusion="late", **kw)).eval()


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_one_frame_late_fusion_matches_timm_vit(tmp_path, fmt):
    vit = tiny_vit()
    sd = vit.state_dict()
    path = tmp_path / f"vit.{fmt}"
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, path)
    else:  # a training checkpoint as DataParallel writes it
        torch.save({"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, path)
    model = one_frame_late()
    missing = init_from_vit(model, path)
    assert "head.weight" in missing and "head.bias" in missing  # head not restored
    assert not any(".blocks." in n or n.startswith("norm.") for n in missing)
    img = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = model.forward_features(video=img[:, None])["video"][:, 0]  # normed CLS
        ref = vit.forward_features(img)[:, 0]
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_loaded_checkpoint_round_trips_every_tensor(tmp_path):
    vit = tiny_vit(1)
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, path)
    sd = load_vit_state_dict(path)
    assert set(sd) == set(vit.state_dict())
    for k, v in vit.state_dict().items():
        assert torch.equal(sd[k], v), k
    model = MBT(tiny_model_config(audio_patch_size=8, audio_patch_stride=8))
    init_from_vit(model, path)
    for layer, block in zip(model.layers, vit.blocks, strict=True):
        for stream in layer.blocks.values():
            for (n, p), (_, q) in zip(
                stream.named_parameters(), block.named_parameters(), strict=True
            ):
                assert torch.equal(p, q), n
    # The 1-channel audio kernel is the RGB kernel summed over its input channels.
    w = vit.patch_embed.proj.weight
    assert torch.equal(model.embed["audio"].proj.weight, w.sum(1, keepdim=True))


def test_hf_transformers_vit_checkpoint(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
        image_size=32, patch_size=8, layer_norm_eps=1e-6, hidden_act="gelu",
    )  # fmt: skip
    torch.manual_seed(0)
    hf = transformers.ViTModel(config, add_pooling_layer=False).eval()
    hf.save_pretrained(tmp_path / "hf")
    model = one_frame_late()
    init_from_vit(model, tmp_path / "hf" / "model.safetensors")
    img = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = model.forward_features(video=img[:, None])["video"][:, 0]
        ref = hf(pixel_values=img).last_hidden_state[:, 0]
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_positional_grid_is_resized_in_two_dimensions():
    rows, cols, d = 4, 4, 3
    r = torch.arange(rows, dtype=torch.float32)[:, None].expand(rows, cols)
    pos = torch.stack([r, r, r], -1).reshape(1, rows * cols, d)  # value = row index
    out = resize_grid(pos, (rows, cols), (8, 2)).reshape(8, 2, d)
    # Every output row is constant across columns: rows never mix with columns,
    # which a 1-D resize of the flattened sequence would do.
    assert torch.allclose(out[:, 0], out[:, 1])
    assert out[:, 0, 0].diff().ge(0).all()  # and follows the row index monotonically
    assert torch.equal(resize_grid(pos, (4, 4), (4, 4)), pos)


def test_video_and_audio_grids_resized_for_the_model():
    vit = tiny_vit()
    cfg = tiny_model_config(image_size=48, audio_frames=96, mel_bins=32)  # 6x6, (6, 2) grids
    model = MBT(cfg)
    init_from_vit(model, {k: v for k, v in vit.state_dict().items()})
    grid = vit.pos_embed[:, 1:]
    torch.testing.assert_close(model.embed["video"].pos_spatial, resize_grid(grid, (4, 4), (6, 6)))
    torch.testing.assert_close(model.embed["audio"].pos_grid, resize_grid(grid, (4, 4), (6, 2)))
    assert model.embed["video"].pos_temporal.abs().sum() == 0


@pytest.mark.parametrize("method", ["central", "average"])
def test_tubelet_kernel_inflation(method):
    k = torch.randn(8, 3, 4, 4)
    out = inflate_kernel(k, 3, method)
    assert out.shape == (8, 3, 3, 4, 4)
    frames = torch.randn(1, 3, 1, 4, 4).expand(1, 3, 3, 4, 4)  # a static clip
    # Both inits give a static clip the 2-D kernel's response.
    resp3d = torch.nn.functional.conv3d(frames, out)
    resp2d = torch.nn.functional.conv2d(frames[:, :, 0], k)
    torch.testing.assert_close(resp3d[:, :, 0], resp2d)
    if method == "central":
        assert torch.equal(out[:, :, 1], k) and out[:, :, [0, 2]].abs().sum() == 0


def test_tubelet_model_from_vit_uses_central_frame_and_joint_table():
    vit = tiny_vit()
    cfg = tiny_model_config(tubelet_size=2, video_pos_embed="joint")
    model = MBT(cfg)
    init_from_vit(model, dict(vit.state_dict()))
    w = model.embed["video"].proj.weight
    assert torch.equal(w[:, :, 1], vit.patch_embed.proj.weight) and w[:, :, 0].abs().sum() == 0
    pos = model.embed["video"].pos_grid.reshape(1, 2, 16, 64)
    assert torch.equal(pos[:, 0], pos[:, 1])  # spatial grid tiled over time


def test_mismatches_name_the_key(tmp_path):
    vit = tiny_vit()
    with pytest.raises(ValueError, match=r"blocks\.0\.norm1\.weight: checkpoint shape"):
        init_from_vit(MBT(tiny_model_config(width=32)), dict(vit.state_dict()))
    with pytest.raises(ValueError, match="checkpoint has 4 blocks, model.depth is 2"):
        init_from_vit(MBT(tiny_model_config(depth=2, fusion_layer=1)), dict(vit.state_dict()))
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_vit_state_dict(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pth: cannot read ViT weights"):
        load_vit_state_dict(bad)


def test_bottleneck_fusion_costs_almost_nothing_over_late_fusion():
    """Paper preset: MBT (B=4, Lf=8) <= 2 % over late fusion; vanilla from layer 0 far more.

    Measured numbers are printed by ``benchmarks/fusion_flops.py`` and recorded in the README.
    """
    late = count_flops(ModelConfig(fusion="late"))
    mbt = count_flops(ModelConfig(fusion="bottleneck", fusion_layer=8, n_bottlenecks=4))
    vanilla0 = count_flops(ModelConfig(fusion="vanilla", fusion_layer=0))
    assert late < mbt <= 1.02 * late
    assert vanilla0 > 2.0 * late
