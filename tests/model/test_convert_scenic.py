"""Scenic (Flax msgpack) MBT checkpoints -> MBT: tensor placement and forward parity.

The checkpoints are written here in the official layout (REFERENCE.md section 7) from a random
tiny MBT by an inverse writer that shares no code with the converter, and the converted model is
compared with an independent numpy implementation of the official forward (flax semantics:
channels-last patch convs, einsum attention over (D, heads, head_dim) kernels, tanh GELU,
bottleneck fusion, token classifier averaged over modalities).
"""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest
import torch

from mbt.config import ModelConfig
from mbt.model import MBT
from mbt.model.scenic import convert_scenic, read_flax_msgpack

CFG = ModelConfig(
    num_classes=5, width=32, depth=3, num_heads=4, mlp_ratio=2.0, image_size=16, patch_size=8,
    num_frames=4, tubelet_size=2, video_pos_embed="joint", audio_frames=32, mel_bins=16,
    audio_patch_size=8, audio_patch_stride=8, fusion_layer=1, n_bottlenecks=2,
)  # fmt: skip
CHANNEL_SPLIT = np.array([0.2, 0.3, 0.5])  # the 3 tiled-channel kernels sum to ours


# ---------------------------------------------------------------------------------------------
# Writing the official layout


def _pack(tree: dict) -> bytes:
    def default(obj):
        if isinstance(obj, np.ndarray):
            payload = msgpack.packb((obj.shape, obj.dtype.name, obj.tobytes()), use_bin_type=True)
            return msgpack.ExtType(1, payload)
        raise TypeError(type(obj))

    return msgpack.packb(tree, default=default, use_bin_type=True)


def _put(tree: dict, path: str, value: np.ndarray) -> None:
    *parents, leaf = path.split("/")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = np.ascontiguousarray(value, dtype=np.float32)


def random_model(cfg: ModelConfig = CFG, seed: int = 0) -> MBT:
    torch.manual_seed(seed)
    model = MBT(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0, 0.15)
    return model.eval()


def to_flax(model: MBT, scheme: str = "new") -> dict:
    """MBT state dict -> the official flax parameter tree (nested dicts)."""
    sd = {k: v.double().numpy() for k, v in model.state_dict().items()}
    cfg = model.cfg
    d, h = cfg.width, cfg.num_heads
    ln1, attn, ln2, mlp = {
        "new": ("LayerNorm_0", "MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0"),
        "old": ("LayerNorm_0", "MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3"),
    }[scheme]
    tree: dict = {}
    _put(tree, "cls", sd["embed.video.prefix.cls_token"])
    _put(tree, "clsspectrogram", sd["embed.audio.prefix.cls_token"])
    _put(tree, "bottleneck", sd["bottleneck"])
    _put(tree, "embedding/kernel", sd["embed.video.proj.weight"].transpose(2, 3, 4, 1, 0))
    _put(tree, "embedding/bias", sd["embed.video.proj.bias"])
    k = sd["embed.audio.proj.weight"][:, 0].transpose(1, 2, 0)  # (h, w, D)
    _put(tree, "embedding_spectrogram/kernel", k[:, :, None] * CHANNEL_SPLIT[:, None])
    _put(tree, "embedding_spectrogram/bias", sd["embed.audio.proj.bias"])
    for m, sfx in (("video", ""), ("audio", "_spectrogram")):
        pos = np.concatenate([sd[f"embed.{m}.prefix.pos"], sd[f"embed.{m}.pos_grid"]], axis=1)
        _put(tree, f"Transformer/posembed_input{sfx}/pos_embedding", pos)
        for layer in range(cfg.depth):
            src, dst = f"layers.{layer}.blocks.{m}.", f"Transformer/encoderblock_{layer}{sfx}/"
            _put(tree, dst + f"{ln1}/scale", sd[src + "norm1.weight"])
            _put(tree, dst + f"{ln1}/bias", sd[src + "norm1.bias"])
            _put(tree, dst + f"{ln2}/scale", sd[src + "norm2.weight"])
            _put(tree, dst + f"{ln2}/bias", sd[src + "norm2.bias"])
            w, b = sd[src + "attn.qkv.weight"], sd[src + "attn.qkv.bias"]
            for i, name in enumerate(("query", "key", "value")):
                _put(
                    tree, dst + f"{attn}/{name}/kernel", w[i * d : (i + 1) * d].T.reshape(d, h, -1)
                )
                _put(tree, dst + f"{attn}/{name}/bias", b[i * d : (i + 1) * d].reshape(h, -1))
            _put(tree, dst + f"{attn}/out/kernel", sd[src + "attn.proj.weight"].T.reshape(h, -1, d))
            _put(tree, dst + f"{attn}/out/bias", sd[src + "attn.proj.bias"])
            for i, fc in enumerate(("fc1", "fc2")):
                _put(tree, dst + f"{mlp}/Dense_{i}/kernel", sd[src + f"mlp.{fc}.weight"].T)
                _put(tree, dst + f"{mlp}/Dense_{i}/bias", sd[src + f"mlp.{fc}.bias"])
    _put(tree, "Transformer/encoder_norm/scale", sd["norm.weight"])
    _put(tree, "Transformer/encoder_norm/bias", sd["norm.bias"])
    _put(tree, "output_projection/kernel", sd["head.weight"].T)
    _put(tree, "output_projection/bias", sd["head.bias"])
    return tree


def write_checkpoint(path, params: dict, root: str) -> None:
    if root == "params":  # current scenic TrainState
        state = {"global_step": 7, "opt_state": {"0": {"mu": params}}, "params": params}
    else:  # old flax.optim checkpoints
        state = {"optimizer": {"target": params, "state": {"step": 7}}, "rng": np.zeros(2)}
    path.write_bytes(_pack(state))


# ---------------------------------------------------------------------------------------------
# The official forward in numpy


def _ln(x, p):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-6) * p["scale"] + p["bias"]


def _gelu(x):  # flax.linen.gelu default: approximate=True
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _mha(x, p):
    q, k, v = (
        np.einsum("nld,dhk->nlhk", x, p[n]["kernel"]) + p[n]["bias"]
        for n in ("query", "key", "value")
    )
    logits = np.einsum("nqhk,nlhk->nhql", q / np.sqrt(q.shape[-1]), k)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    y = np.einsum("nhql,nlhk->nqhk", w, v)
    return np.einsum("nqhk,hkd->nqd", y, p["out"]["kernel"]) + p["out"]["bias"]


def _block(x, p):
    names = sorted(p)  # LayerNorm_a < LayerNorm_b < MlpBlock < MultiHead... in both schemes
    ln1, ln2, mlp, attn = names
    x = x + _mha(_ln(x, p[ln1]), p[attn])
    y = _ln(x, p[ln2])
    y = _gelu(y @ p[mlp]["Dense_0"]["kernel"] + p[mlp]["Dense_0"]["bias"])
    return x + y @ p[mlp]["Dense_1"]["kernel"] + p[mlp]["Dense_1"]["bias"]


def _patches(x, kernel, bias):
    """VALID conv with stride = kernel size over channels-last x, as patch extraction."""
    k = kernel.shape[:-2]
    n, c = x.shape[0], x.shape[-1]
    grid = [s // ks for s, ks in zip(x.shape[1:-1], k, strict=True)]
    shape = [n] + [v for g, ks in zip(grid, k, strict=True) for v in (g, ks)] + [c]
    x = x.reshape(shape)  # (n, g0, k0, g1, k1, ..., c)
    axes = [0, *range(1, 2 * len(k), 2), *range(2, 2 * len(k) + 1, 2), 2 * len(k) + 1]
    x = x.transpose(axes).reshape(n, math.prod(grid), -1)  # (n, L, k0 * k1 * ... * c)
    return x @ kernel.reshape(-1, kernel.shape[-1]) + bias


def official_forward(params, rgb, spec, fusion_layer):
    """rgb (N, T, H, W, 3) in [-1, 1]; spec (N, T_a, F) tiled to 3 channels as the official input."""
    n = rgb.shape[0]
    tr = params["Transformer"]
    x = {
        "rgb": _patches(rgb, params["embedding"]["kernel"], params["embedding"]["bias"]),
        "spectrogram": _patches(
            np.repeat(spec[..., None], 3, -1),
            params["embedding_spectrogram"]["kernel"],
            params["embedding_spectrogram"]["bias"],
        ),
    }
    lengths = {}
    for m, cls, pos in (
        ("rgb", "cls", "posembed_input"),
        ("spectrogram", "clsspectrogram", "posembed_input_spectrogram"),
    ):
        lengths[m] = x[m].shape[1]
        x[m] = np.concatenate([np.tile(params[cls], (n, 1, 1)), x[m]], 1)
        x[m] = x[m] + tr[pos]["pos_embedding"]
    z = np.tile(params["bottleneck"], (n, 1, 1))
    depth = sum(k.startswith("encoderblock_") and not k.endswith("_spectrogram") for k in tr)
    for layer in range(depth):
        blocks = {
            "rgb": tr[f"encoderblock_{layer}"],
            "spectrogram": tr[f"encoderblock_{layer}_spectrogram"],
        }
        if layer < fusion_layer:
            x = {m: _block(t, blocks[m]) for m, t in x.items()}
            continue
        zs = []
        for m in ("rgb", "spectrogram"):
            t = x[m].shape[1]
            out = _block(np.concatenate([x[m], z], 1), blocks[m])
            x[m], _ = out[:, :t], zs.append(out[:, t:])
        z = np.mean(np.stack(zs, -1), -1)
    enc = _ln(np.concatenate([x["rgb"], x["spectrogram"]], 1), tr["encoder_norm"])
    cls_rgb, cls_spec = enc[:, 0], enc[:, 1 + lengths["rgb"]]
    head = params["output_projection"]
    return (
        (cls_rgb @ head["kernel"] + head["bias"]) + (cls_spec @ head["kernel"] + head["bias"])
    ) / 2


def _f64(tree):
    return {k: _f64(v) if isinstance(v, dict) else v.astype(np.float64) for k, v in tree.items()}


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("root", "scheme"), [("params", "new"), ("optimizer/target", "old")])
def test_convert_places_every_tensor_and_matches_official_forward(tmp_path, root, scheme):
    src = random_model()
    params = to_flax(src, scheme)
    ckpt = tmp_path / "checkpoint_7"
    write_checkpoint(ckpt, params, root)

    model = convert_scenic(
        ckpt, tmp_path / "out", fusion_layer=CFG.fusion_layer, audio_frames=32, mel_bins=16,
        image_size=16,
    )  # fmt: skip
    cfg = model.cfg
    assert (cfg.num_frames, cfg.tubelet_size, cfg.patch_size, cfg.width, cfg.depth) == (
        4,
        2,
        8,
        32,
        3,
    )
    assert (cfg.num_heads, cfg.mlp_ratio, cfg.num_classes) == (4, 2.0, 5)
    assert (cfg.n_bottlenecks, cfg.num_bottleneck_tokens, cfg.classifier) == (2, 3, "token")
    assert cfg.gelu_approximate == "tanh" and cfg.video_pos_embed == "joint"
    want = src.state_dict()
    got = model.state_dict()
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-6, msg=k)

    gen = np.random.default_rng(0)
    rgb = gen.uniform(-1, 1, (2, 4, 16, 16, 3))
    spec = gen.normal(size=(2, 32, 16))
    ref = official_forward(_f64(params), rgb, spec, CFG.fusion_layer)
    video = torch.from_numpy(rgb).float().permute(0, 1, 4, 2, 3)  # (B, T, 3, H, W)
    with torch.no_grad():
        logits = model(video=video, audio=torch.from_numpy(spec).float())
    np.testing.assert_allclose(logits.numpy(), ref, atol=1e-4)
    assert np.abs(ref).max() > 0.1  # a non-trivial comparison

    reloaded = MBT.from_pretrained(tmp_path / "out")
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(video=video, audio=torch.from_numpy(spec).float()), logits
        )


def test_exact_gelu_would_differ():
    # The tanh GELU of flax is a real semantic difference, large enough to be caught above.
    x = torch.linspace(-4, 4, 101)
    diff = torch.nn.functional.gelu(x) - torch.nn.functional.gelu(x, approximate="tanh")
    assert diff.abs().max() > 1e-4


def test_wrong_spectrogram_size_is_a_clear_error(tmp_path):
    ckpt = tmp_path / "ckpt"
    write_checkpoint(ckpt, to_flax(random_model()), "params")
    with pytest.raises(ValueError, match=r"spectrogram positions.*--audio-frames 64"):
        convert_scenic(ckpt, fusion_layer=1, audio_frames=64, mel_bins=16, image_size=16)


def test_unknown_keys_are_listed(tmp_path):
    params = to_flax(random_model())
    _put(params, "pre_logits/kernel", np.zeros((32, 32)))
    ckpt = tmp_path / "ckpt"
    write_checkpoint(ckpt, params, "params")
    with pytest.raises(ValueError, match="pre_logits/kernel"):
        convert_scenic(ckpt, fusion_layer=1, audio_frames=32, mel_bins=16, image_size=16)


def test_reader_handles_bfloat16_and_chunked_arrays(tmp_path):
    values = np.array([1.5, -2.0, 0.25], dtype=np.float32)
    bf16 = (values.view(np.uint32) >> 16).astype(np.uint16)  # exact in bfloat16
    tree = {
        "a": msgpack.ExtType(1, msgpack.packb(((3,), "bfloat16", bf16.tobytes()))),
        "b": {
            "__msgpack_chunked_array__": True,
            "shape": {"0": 2, "1": 3},
            "chunks": {"0": np.arange(4.0), "1": np.arange(4.0, 6.0)},
        },
    }
    path = tmp_path / "x.msgpack"
    path.write_bytes(_pack(tree))
    out = read_flax_msgpack(path)
    np.testing.assert_array_equal(out["a"], values)
    np.testing.assert_array_equal(out["b"], np.arange(6.0).reshape(2, 3))
