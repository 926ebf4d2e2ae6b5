"""Where the bottleneck tokens attend: the paper's attention figures for one clip.

At every bottleneck-fusion layer each stream runs ``Block_m([x_m, z])``; the rows of that
block's attention whose queries are the bottleneck tokens ``z`` show what each modality passes
into the bottleneck. timm's attention calls ``scaled_dot_product_attention``, which returns no
weights, so a forward hook captures each fusion block's normed input (the output of ``norm1``)
and the weights are recomputed, ``softmax(q k^T / sqrt(d))``, from the block's own ``qkv``
projection. The model is not modified.

Shape vocabulary: L fusion layers, B batch, h heads, N_b bottlenecks, P prefix tokens,
N_m tokens of modality m; video grid (T', H', W'), audio grid (t, f).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure  # not pyplot: leaves the caller's backend alone

from mbt.data.clip import clip_inputs_from_file
from mbt.files import atomic_path
from mbt.loading import load_model
from mbt.model.fusion import BottleneckFusion


def _attention_rows(attn: torch.nn.Module, x: torch.Tensor, n_queries: int) -> torch.Tensor:
    """Softmax weights of the last ``n_queries`` tokens over all tokens: (B, h, n_queries, N)."""
    b, n, d = x.shape
    h = attn.num_heads
    qkv = attn.qkv(x).reshape(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)  # (3, B, h, N, hd)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])  # Identity unless qk_norm
    logits = (q[:, :, n - n_queries :] * attn.scale) @ k.transpose(-2, -1)  # (B, h, N_b, N)
    return logits.softmax(-1)


@torch.no_grad()
def bottleneck_attention(
    model: torch.nn.Module, video: torch.Tensor | None = None, audio: torch.Tensor | None = None
) -> dict[str, Any]:
    """Attention of the bottleneck tokens over each modality's tokens, at every fusion layer.

    Args:
        model: an :class:`mbt.model.MBT` with ``fusion="bottleneck"``.
        video: (B, T, 3, H, W) model-ready frames, or None.
        audio: (B, T_a, F) model-ready log-mel, or None.

    Returns:
        ``layers``: the fusion layer indices (L of them); ``logits``: (B, C);
        ``weights[m]``: raw head-wise rows (L, B, h, N_b, P + N_m + N_b), each summing to 1;
        ``maps[m]``: the weight on modality m's patch tokens, averaged over heads and
        bottleneck queries and laid out on its grid: video (L, B, T', H', W'),
        audio (L, B, t, f) (time, frequency).

    Raises:
        ValueError: the model has no bottleneck fusion layers.
    """
    layers = _fusion_layers(model)
    logits, captured = _capture_attention_inputs(model, layers, video, audio)
    n_b = model.cfg.num_bottleneck_tokens
    weights: dict[str, torch.Tensor] = {}
    maps: dict[str, torch.Tensor] = {}
    for m in model.cfg.modalities:
        if (layers[0], m) not in captured:
            continue  # modality not given
        rows = [
            _attention_rows(model.layers[i].blocks[m].attn, captured[(i, m)], n_b) for i in layers
        ]
        weights[m] = torch.stack(rows)  # (L, B, h, N_b, P + N_m + N_b)
        maps[m] = _patch_map(model.embed[m], weights[m])  # (L, B, *grid)
    return {"layers": layers, "logits": logits, "weights": weights, "maps": maps}


def _fusion_layers(model: torch.nn.Module) -> list[int]:
    """Indices of the bottleneck-fusion layers; a ValueError when there are none."""
    layers = [i for i, layer in enumerate(model.layers) if isinstance(layer, BottleneckFusion)]
    if not layers:
        raise ValueError(
            "explain needs bottleneck fusion layers (model.fusion='bottleneck', two modalities, "
            f"fusion_layer < depth); this model is fusion={model.cfg.fusion!r} with "
            f"modalities {list(model.cfg.modalities)}"
        )
    return layers


def _capture_attention_inputs(
    model: torch.nn.Module,
    layers: list[int],
    video: torch.Tensor | None,
    audio: torch.Tensor | None,
) -> tuple[torch.Tensor, dict[tuple[int, str], torch.Tensor]]:
    """Run the fused forward in eval mode; return its logits (B, C) and, per (layer, modality),
    the normed input of that block's attention (B, N_m + N_b, D)."""
    captured: dict[tuple[int, str], torch.Tensor] = {}
    handles = []
    for i in layers:
        for m, block in model.layers[i].blocks.items():

            def hook(_mod, _inp, out, key=(i, m)):
                captured[key] = out  # (B, N_m + N_b, D): normed input of the attention

            handles.append(block.norm1.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        logits = model(video=video, audio=audio, fuse=True)  # (B, C)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return logits, captured


def _patch_map(embed: torch.nn.Module, weights: torch.Tensor) -> torch.Tensor:
    """(L, B, h, N_b, P + N_m + N_b) rows -> (L, B, *grid): weight on each patch token,
    averaged over heads and bottleneck queries."""
    p, n = embed.prefix.num_prefix, embed.num_tokens
    patch = weights[..., p : p + n].mean(dim=(2, 3))  # (L, B, N_m)
    return patch.reshape(*patch.shape[:2], *embed.grid)  # (L, B, *grid)


# ---------------------------------------------------------------------------------------------
# Figures


def _upsample(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(a, b) heat map -> (H, W), bilinear, scaled to [0, 1]."""
    g = F.interpolate(grid[None, None].float(), size=size, mode="bilinear", align_corners=False)
    g = g[0, 0]
    return (g - g.min()) / (g.max() - g.min()).clamp_min(1e-12)


def plot_attention(
    result: dict[str, Any],
    out_dir: str | Path,
    *,
    frames: torch.Tensor | None = None,
    spectrogram: torch.Tensor | None = None,
    tubelet: int = 1,
    per_layer: bool = False,
    index: int = 0,
    title: str = "",
) -> list[Path]:
    """Save the paper-style figures of :func:`bottleneck_attention` for clip ``index``.

    Args:
        result: the output of :func:`bottleneck_attention`.
        out_dir: folder for the PNG files (created).
        frames: (T, H, W, 3) float in [0, 1], the sampled frames to overlay; None: heat maps only.
        spectrogram: (T_a, F) log-mel to draw under the audio heat map.
        tubelet: frames per tubelet (a video grid step covers this many frames).
        per_layer: one figure per fusion layer as well as the mean over layers.
        index: which clip of the batch.
        title: figure title prefix (e.g. the predicted class).

    Returns:
        The written files: ``video_attention[_layer<l>].png``, ``audio_attention[...].png``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    views = [("", slice(None))]
    if per_layer:
        views += [(f"_layer{i}", slice(j, j + 1)) for j, i in enumerate(result["layers"])]
    written = []
    for suffix, sel in views:
        label = f"{title} bottleneck attention, fusion layers {result['layers'][sel]}".strip()
        if "video" in result["maps"]:
            att = result["maps"]["video"][sel, index].mean(0)  # (T', H', W'): layers averaged
            fig = _video_figure(att, frames, tubelet, label)
            written.append(_save(fig, out / f"video_attention{suffix}.png"))
        if "audio" in result["maps"]:
            att = result["maps"]["audio"][sel, index].mean(0)  # (t, f): layers averaged
            fig = _audio_figure(att, spectrogram, label)
            written.append(_save(fig, out / f"audio_attention{suffix}.png"))
    return written


def _video_figure(
    att: torch.Tensor, frames: torch.Tensor | None, tubelet: int, label: str
) -> Figure:
    """One panel per frame: the (T', H', W') map of its tubelet over the frame (or alone)."""
    n = frames.shape[0] if frames is not None else att.shape[0] * tubelet
    fig = Figure(figsize=(2 * n, 2.3))
    axes = fig.subplots(1, n, squeeze=False)
    for t, ax in enumerate(axes[0]):
        size = frames.shape[1:3] if frames is not None else att.shape[1:]
        heat = _upsample(att[min(t // tubelet, att.shape[0] - 1)], tuple(size))  # (H, W)
        if frames is not None:
            ax.imshow(frames[t].clamp(0, 1).numpy())
            ax.imshow(heat.numpy(), cmap="jet", alpha=0.45)
        else:
            ax.imshow(heat.numpy(), cmap="jet")
        ax.set_axis_off()
        ax.set_title(f"frame {t}", fontsize=8)
    fig.suptitle(label, fontsize=9)
    return fig


def _audio_figure(att: torch.Tensor, spectrogram: torch.Tensor | None, label: str) -> Figure:
    """The (t, f) map over the (T_a, F) log-mel (time across, mel bins up), or alone."""
    fig = Figure(figsize=(7, 3))
    ax = fig.subplots()
    if spectrogram is not None:
        size = tuple(spectrogram.shape)  # (T_a, F)
        ax.imshow(spectrogram.T.numpy(), origin="lower", aspect="auto", cmap="gray")
        ax.imshow(_upsample(att, size).T.numpy(), origin="lower", aspect="auto",
                  cmap="jet", alpha=0.45)  # fmt: skip
        ax.set_xlabel("time frame (10 ms)")
        ax.set_ylabel("mel bin")
    else:
        ax.imshow(att.T.numpy(), origin="lower", aspect="auto", cmap="jet")
        ax.set_xlabel("time patch")
        ax.set_ylabel("frequency patch")
    ax.set_title(label, fontsize=9)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:  # the format comes from the real name, not the temporary one
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=100, bbox_inches="tight")
    return path


# ---------------------------------------------------------------------------------------------
# From files


def explain_clip(
    source: str | Path,
    video: str | Path,
    audio: str | Path | None = None,
    out_dir: str | Path = "explain",
    *,
    per_layer: bool = False,
    checkpoint: str = "best",
) -> dict[str, Any]:
    """Run a model on one clip and save its bottleneck-attention figures.

    Args:
        source: anything :func:`mbt.loading.load_model` reads (a run directory, checkpoint
            or model folder, Hub id); the clip is preprocessed with the model's data config.
        video: the clip's video file.
        audio: a separate sound file (default: the video's own audio track).
        out_dir: where to write the PNG files.
        per_layer: also write one figure per fusion layer.
        checkpoint: ``best`` or ``last`` when ``source`` is a run directory.

    Returns:
        ``files`` (written paths), ``prediction`` (top class name or index), ``probabilities``,
        ``layers``.
    """
    loaded = load_model(source, checkpoint)
    model = loaded.model
    # One centred view, centre crop (V = 1): the evaluation front-end of mbt.data.clip.
    inputs = clip_inputs_from_file(video, audio, model.cfg, loaded.data)
    result = bottleneck_attention(model, inputs["video"], inputs["audio"])
    probs = result["logits"].softmax(-1)[0]
    top = int(probs.argmax())
    name = loaded.class_names[top] if loaded.class_names else str(top)
    files = plot_attention(
        result, out_dir, frames=_first(inputs["frames"]), spectrogram=_first(inputs["fbank"]),
        tubelet=model.cfg.tubelet_size, per_layer=per_layer, title=f"predicted: {name} |",
    )  # fmt: skip
    return {
        "files": [str(f) for f in files],
        "prediction": name,
        "probabilities": probs.tolist(),
        "layers": result["layers"],
    }


def _first(views: torch.Tensor | None) -> torch.Tensor | None:
    """The first view of (V, ...) pictures or spectrograms, for drawing."""
    return None if views is None else views[0]
