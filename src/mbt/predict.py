"""Classify one media file with a trained run: raw video (and audio) in, ranked labels out.

The clip goes through the same front-end as evaluation (``AVDataset`` with ``train=False``):
``data.test_clips`` temporal views x ``data.test_crops`` crops, logits averaged over views.
The sound comes from ``--audio`` or else from the video's own track; a video without any sound
is classified from the picture alone (the audio stream is not run), and the result says so.
``--audio`` given to a video-only model is not used, and the result's note says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mbt.training.distributed import pick_device
from mbt.training.evaluate import load_run


def predict(
    source: str | Path,
    video: str | Path,
    audio: str | Path | None = None,
    top_k: int = 5,
    checkpoint: str = "best",
    device: str = "auto",
) -> dict[str, Any]:
    """Ranked class probabilities for one clip.

    Args:
        source: run directory, checkpoint folder, or its ``model.safetensors``.
        video: video file.
        audio: audio file to pair with the video; default: the video's own sound track.
        top_k: how many labels to return.
        checkpoint: ``best`` or ``last`` when ``source`` is a run directory.
        device: ``auto``, ``cpu``, ``cuda`` ...

    Returns:
        ``{"video", "audio", "modalities" (used), "note", "predictions": [{"label",
        "probability"}, ...]}``; probabilities are softmax (single-label) or sigmoid
        (multi-label) of the view-averaged logits.

    Raises:
        MediaError: the file cannot be decoded.
        ValueError: the model needs a modality the clip does not have.
    """
    from mbt.data.dataset import AVDataset
    from mbt.data.layouts import Clip
    from mbt.data.video import MediaError, probe_video

    if top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {top_k}")
    video = Path(video)
    dev = pick_device(device)
    cfg, classes, model, _ = load_run(source, checkpoint, dev)
    modalities = list(cfg.model.modalities)
    if audio is not None and not Path(audio).is_file():
        raise MediaError(f"{audio}: no such file")
    has_audio = audio is not None or probe_video(video).has_audio
    note = ""
    if audio is not None and "audio" not in modalities:
        note = f"--audio {audio} ignored: this model has no audio stream (video only)"
    if not has_audio:
        if modalities == ["audio"]:
            raise ValueError(f"{video}: no audio track, and this model is audio-only")
        if "audio" in modalities:
            note = "no audio track: classified from the video alone"
        modalities = [m for m in modalities if m != "audio"]
    clip = Clip(
        video=video, audio=Path(audio) if audio else None, labels=(0,), key=video.stem,
        has_audio=has_audio,
    )  # fmt: skip
    ds = AVDataset(
        [clip], classes, cfg.model, cfg.data, train=False, views=cfg.data.test_clips,
        crops=cfg.data.test_crops, multi_label=cfg.data.multi_label,
    )  # fmt: skip
    item = ds[0]
    inputs = {}
    for m in modalities:
        x = item[m]
        inputs[m] = (x if x.ndim == (5 if m == "video" else 3) else x[None]).to(dev)  # (V, ...)
    with torch.no_grad():
        logits = model(**inputs).float().mean(0)  # (C,): views averaged
    probs = logits.sigmoid() if cfg.data.multi_label else logits.softmax(-1)
    k = min(top_k, len(classes))
    top = probs.topk(k)
    return {
        "video": str(video),
        "audio": str(audio) if audio else ("own track" if has_audio else None),
        "modalities": modalities,
        "views": cfg.data.test_clips * cfg.data.test_crops,
        "note": note,
        "predictions": [
            {"label": classes[i], "probability": round(p, 6)}
            for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
        ],
    }


def format_prediction(result: dict[str, Any]) -> str:
    """Human-readable ranking."""
    lines = [f"{result['video']} ({' + '.join(result['modalities'])}, {result['views']} views)"]
    if result["note"]:
        lines.append(f"note: {result['note']}")
    for rank, p in enumerate(result["predictions"], 1):
        lines.append(f"{rank:>2}. {p['label']:<30} {100 * p['probability']:6.2f}%")
    return "\n".join(lines)
