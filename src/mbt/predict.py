"""Classify one media file with a trained model: raw video (and audio) in, ranked labels out.

The model comes from :func:`mbt.loading.load_model` (a run directory, a checkpoint folder, a
``save_pretrained`` or converted folder, or a Hub id), with the data config it was trained with.
The clip goes through the same front-end as evaluation (:func:`mbt.data.clip.clip_inputs_from_file`):
``data.test_clips`` temporal views x ``data.test_crops`` crops, logits averaged over views.
The sound comes from ``--audio`` or else from the video's own track; a video without any sound
is classified from the picture alone (the audio stream is not run), and the result says so.
``--audio`` given to a video-only model is not used, and the result's note says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mbt.data.clip import clip_inputs_from_file
from mbt.loading import load_model
from mbt.runtime import autocast, inference_precision, pick_device


# Over 60 lines only with its docstring (each argument, the result's fields); the body is ~35.
def predict(
    source: str | Path,
    video: str | Path,
    audio: str | Path | None = None,
    top_k: int = 5,
    checkpoint: str = "best",
    device: str = "auto",
    precision: str | None = None,
) -> dict[str, Any]:
    """Ranked class probabilities for one clip.

    Args:
        source: anything :func:`mbt.loading.load_model` reads: a run directory, a checkpoint
            folder, a ``save_pretrained`` / converted model folder, its ``model.safetensors``,
            or a Hub id.
        video: video file.
        audio: audio file to pair with the video; default: the video's own sound track.
        top_k: how many labels to return.
        checkpoint: ``best`` or ``last`` when ``source`` is a run directory.
        device: ``auto``, ``cpu``, ``cuda`` ...
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16``; default: the run's
            ``train.precision`` resolved for this machine (``auto`` for a model folder without
            its run), see :func:`mbt.runtime.inference_precision`.

    Returns:
        ``{"video", "audio", "modalities" (used), "views", "precision" (resolved), "note",
        "predictions": [{"label", "probability"}, ...]}``; probabilities are softmax (single-label) or sigmoid
        (multi-label) of the view-averaged logits. A model without class names labels its
        outputs by index (``"0"``, ``"1"`` ...).

    Raises:
        MediaError: a file is missing or cannot be decoded (``NoAudioError``: an audio-only
            model and a clip without sound).
    """
    if top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {top_k}")
    dev = pick_device(device)
    loaded = load_model(source, checkpoint, dev)
    model_cfg, data_cfg = loaded.model.cfg, loaded.data
    classes = loaded.class_names or [str(i) for i in range(model_cfg.num_classes)]
    clip = clip_inputs_from_file(
        video, audio, model_cfg, data_cfg, views=data_cfg.test_clips, crops=data_cfg.test_crops
    )  # video (V, T, 3, S, S), audio (V, T_a, F); None for a stream that does not run
    inputs = {m: clip[m].to(dev) for m in ("video", "audio") if clip[m] is not None}
    setting = loaded.run_config.train.precision if loaded.run_config else "auto"
    prec = inference_precision(setting, precision, dev)
    with torch.no_grad(), autocast(dev, prec):
        logits = loaded.model(**inputs)  # (V, C)
    if not torch.isfinite(logits).all():  # damaged or diverged weights: not a prediction
        raise ValueError(
            f"{loaded.folder}: the model gives non-finite scores (NaN or inf) for {video}; "
            "its weights are damaged or diverged"
        )
    return {
        "video": str(video),
        "audio": str(audio) if audio else ("own track" if clip["has_audio"] else None),
        "modalities": list(inputs),
        "views": data_cfg.test_clips * data_cfg.test_crops,
        "precision": prec,
        "note": _note(audio, clip["has_audio"], model_cfg.modalities),
        "predictions": _rank(logits.float().mean(0), classes, top_k, data_cfg.multi_label),
    }


def _note(audio: str | Path | None, has_audio: bool, modalities: tuple[str, ...]) -> str:
    """What the user should know about the streams that ran ("" when both ran as asked)."""
    if audio is not None and "audio" not in modalities:
        return f"--audio {audio} ignored: this model has no audio stream (video only)"
    if not has_audio and "audio" in modalities:
        return "no audio track: classified from the video alone"
    return ""


def _rank(
    logits: torch.Tensor, classes: list[str], top_k: int, multi_label: bool
) -> list[dict[str, Any]]:
    """The ``top_k`` classes of (C,) logits, most probable first."""
    probs = logits.sigmoid() if multi_label else logits.softmax(-1)
    top = probs.topk(min(top_k, len(classes)))
    return [
        {"label": classes[i], "probability": round(p, 6)}
        for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
    ]


def format_prediction(result: dict[str, Any]) -> str:
    """Human-readable ranking."""
    lines = [f"{result['video']} ({' + '.join(result['modalities'])}, {result['views']} views)"]
    if result["note"]:
        lines.append(f"note: {result['note']}")
    for rank, p in enumerate(result["predictions"], 1):
        lines.append(f"{rank:>2}. {p['label']:<30} {100 * p['probability']:6.2f}%")
    return "\n".join(lines)
