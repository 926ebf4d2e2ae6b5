"""Evaluate a trained run: multi-view testing, per-modality and fusion-off ablations, eval.json.

Test protocol (official): ``data.test_clips`` evenly spaced temporal views x ``data.test_crops``
spatial crops per clip, logits averaged over the views. Every split is scored four ways for a
two-stream model: audio+video as trained, audio only, video only (the other stream not run at
all), and audio+video with fusion switched off (``fuse=False``, the official
``test_with_bottlenecks=False``).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mbt.config import RunConfig, replace
from mbt.training import checkpoint as ckpt
from mbt.training.distributed import pick_device
from mbt.training.engine import collect_logits
from mbt.training.loop import (
    load_run_config,
    make_loader,
    metric_name,
    open_split,
    scan_data,
)
from mbt.training.metrics import classification_metrics, confusion_matrix, plot_confusion

# name -> forward arguments; "av" is the model as trained.
VARIANTS: dict[str, dict[str, Any]] = {
    "av": {},
    "audio_only": {"video": None},
    "video_only": {"audio": None},
    "av_fusion_off": {"fuse": False},
}
VARIANT_TITLES = {
    "av": "audio+video",
    "audio_only": "audio only",
    "video_only": "video only",
    "av_fusion_off": "audio+video, fusion off",
}


def load_run(
    source: str | Path, which: str = "best", device: str | torch.device = "cpu"
) -> tuple[RunConfig, list[str], nn.Module, Path]:
    """Config, class names and model (eval mode) of a run directory or checkpoint folder.

    Args:
        source: a run directory, a checkpoint folder, or its ``model.safetensors``.
        which: ``best`` or ``last`` for a run directory.
        device: where to put the model.

    Returns:
        ``(cfg, classes, model, checkpoint_dir)``.
    """
    from mbt.model import MBT

    directory = ckpt.resolve_checkpoint(source, which)
    state = ckpt.load_state(directory)
    run_dir = Path(source)
    if (run_dir / "config.yaml").is_file():
        cfg = load_run_config(run_dir)
    else:
        from mbt.training.loop import config_from_state

        cfg = config_from_state(state)
    classes = list(state.get("classes") or [])
    if not classes and (run_dir / "classes.json").is_file():
        classes = json.loads((run_dir / "classes.json").read_text())
    if len(classes) != cfg.model.num_classes:
        raise ValueError(
            f"{source}: {len(classes)} class names for a {cfg.model.num_classes}-class model"
        )
    model = MBT(cfg.model)
    ckpt.load_weights(directory, model)
    model.to(pick_device(str(device)) if isinstance(device, str) else device).eval()
    return cfg, classes, model, directory


def evaluate_run(
    run_dir: str | Path,
    data: str | Path | None = None,
    split: str = "val",
    checkpoint: str = "best",
    batch_size: int | None = None,
    device: str = "auto",
    write: bool = True,
) -> dict[str, Any]:
    """Multi-view evaluation of ``run_dir`` on one split; writes ``eval.json`` and
    ``confusion.png`` into the run directory (``eval_test.json`` ... for the test split).

    Args:
        run_dir: directory written by :func:`mbt.training.loop.train`.
        data: data set folder; default the run's ``data.root``.
        split: ``val`` or ``test``.
        checkpoint: ``best`` or ``last``.
        batch_size: clips per batch (each clip is ``test_clips * test_crops`` views).
        device: ``auto``, ``cpu``, ``cuda`` ...
        write: write the JSON and the confusion image.

    Returns:
        ``{"split", "checkpoint", "epoch", "num_clips", "views", "metric", "results":
        {variant: {"top1", "top5" | "map", "per_class_acc" | "per_class_ap"}}}``.
    """
    if split not in ("val", "test"):
        raise ValueError(f"--split must be val or test, got {split!r}")
    run_dir = Path(run_dir)
    dev = pick_device(device)
    cfg, classes, model, directory = load_run(run_dir, checkpoint, dev)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if data:  # explicit media folder: decode it, even if the run was trained from a cache
        cfg = replace(cfg, data=replace(cfg.data, root=str(data), cache=""))
    index = scan_data(cfg)
    if index is not None:
        print(index.report.format())
    multi_label = cfg.data.multi_label
    views = cfg.data.test_clips
    ds = open_split(cfg, split, index, train=False, views=views, crops=cfg.data.test_crops)
    where = cfg.data.cache or cfg.data.root
    if list(ds.classes) != classes:
        raise ValueError(
            f"{where}: its {len(ds.classes)} classes differ from the run's {len(classes)} classes"
        )
    if len(ds) == 0:
        raise ValueError(f"{where}: the {split} split is empty")
    bs = batch_size or cfg.train.batch_size
    loader = make_loader(ds, bs, None, cfg.data.num_workers, dev)
    variants = VARIANTS if len(cfg.model.modalities) == 2 else {"av": {}}
    start = time.perf_counter()
    logits, labels, _ = collect_logits(
        model, loader, dev, cfg.train.precision, variants, desc=f"evaluate {split}"
    )
    seconds = time.perf_counter() - start
    results = {}
    for name, scores in logits.items():
        m = classification_metrics(scores, labels, multi_label)
        per = "per_class_ap" if multi_label else "per_class_acc"
        m[per] = dict(zip(classes, m[per], strict=True))
        results[name] = m
    state = ckpt.load_state(directory)
    out = {
        "run_dir": str(run_dir),
        "split": split,
        "checkpoint": str(directory),
        "epoch": state.get("epoch"),
        "num_clips": int(labels.shape[0]),
        "views": {"clips": cfg.data.test_clips, "crops": cfg.data.test_crops},
        "modalities": list(cfg.model.modalities),
        "metric": metric_name(cfg, multi_label).removeprefix("val_"),
        "multi_label": multi_label,
        "seconds": seconds,
        "results": results,
    }
    if write and (run_dir / "config.yaml").is_file():
        suffix = "" if split == "val" else f"_{split}"
        (run_dir / f"eval{suffix}.json").write_text(json.dumps(out, indent=1))
        if not multi_label:
            cm = confusion_matrix(logits["av"].argmax(1), labels, len(classes))
            plot_confusion(cm, classes, run_dir / f"confusion{suffix}.png")
    return out


def format_report(result: dict[str, Any]) -> str:
    """The printed table: one row per variant, then per-class scores of the main variant."""
    key = "map" if result["multi_label"] else "top1"
    cols = ["map", "top1"] if result["multi_label"] else ["top1", "top5"]
    lines = [
        f"{result['split']} split: {result['num_clips']} clips, "
        f"{result['views']['clips']} clips x {result['views']['crops']} crops per video, "
        f"checkpoint {result['checkpoint']} (epoch {result['epoch']})",
        f"{'':<26}" + "".join(f"{c:>8}" for c in cols),
    ]
    for name, m in result["results"].items():
        title = (
            VARIANT_TITLES[name]
            if len(result["modalities"]) == 2
            else "+".join(result["modalities"])
        )
        lines.append(f"{title:<26}" + "".join(f"{100 * m[c]:>7.1f}%" for c in cols))
    per_key = "per_class_ap" if result["multi_label"] else "per_class_acc"
    per = result["results"]["av"][per_key]
    if len(per) <= 50:
        lines.append(f"per class ({'AP' if result['multi_label'] else 'accuracy'}):")
        for name, v in per.items():
            lines.append(f"  {name:<28}" + ("   n/a" if math.isnan(v) else f"{100 * v:>6.1f}%"))
    del key
    return "\n".join(lines)
