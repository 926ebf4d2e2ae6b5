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
import sys
import time
from pathlib import Path
from typing import Any

import torch

from mbt.config import RunConfig, replace
from mbt.data.archive import open_data_path
from mbt.data.loaders import Loader, build_loader, open_source
from mbt.files import write_atomic
from mbt.loading import LoadedModel, load_model
from mbt.runtime import inference_precision, pick_device
from mbt.training.checkpoint import STATE, checkpoint_epoch
from mbt.training.engine import collect_logits
from mbt.training.loop import metric_name
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


# Over 60 lines only with its docstring (each argument, the result's fields); the body is ~35.
def evaluate_run(
    run_dir: str | Path,
    data: str | Path | None = None,
    split: str = "val",
    checkpoint: str = "best",
    batch_size: int | None = None,
    device: str = "auto",
    write: bool = True,
    precision: str | None = None,
) -> dict[str, Any]:
    """Multi-view evaluation of a model on one split; writes ``eval.json`` and
    ``confusion.png`` into the run directory (``eval_test.json`` ... for the test split).

    Args:
        run_dir: a run directory written by :func:`mbt.training.loop.train`, or any other
            source :func:`mbt.loading.load_model` reads (then ``data`` is needed unless the
            model's data config names its data set, and nothing is written).
        data: data set folder; default the run's ``data.root``.
        split: ``val`` or ``test``.
        checkpoint: ``best`` or ``last``.
        batch_size: clips per batch (each clip is ``test_clips * test_crops`` views).
        device: ``auto``, ``cpu``, ``cuda`` ...
        write: write the JSON and the confusion image.
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16``; default: the run's
            ``train.precision`` resolved for this machine (``auto`` for a model folder without
            its run), see :func:`mbt.runtime.inference_precision`.

    Returns:
        ``{"split", "checkpoint", "epoch", "num_clips", "views", "metric", "results":
        {variant: {"top1", "top5" | "map", "per_class_acc" | "per_class_ap"}}}``.
    """
    if split not in ("val", "test"):
        raise ValueError(f"--split must be val or test, got {split!r}")
    run_dir = Path(run_dir)
    dev = pick_device(device)
    loaded = load_model(run_dir, checkpoint, dev)
    cfg = _eval_config(loaded, data)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    loader = _open_eval_split(cfg, split, loaded.class_names, batch_size, dev)
    classes = loader.classes
    variants = VARIANTS if len(cfg.model.modalities) == 2 else {"av": {}}
    prec = inference_precision(cfg.train.precision, precision, dev)
    start = time.perf_counter()
    logits, labels, _ = collect_logits(
        loaded.model, loader, dev, prec, variants, desc=f"evaluate {split}",
        normalization=cfg.data.normalization,
    )  # fmt: skip
    check_finite(logits, loaded.folder)
    out = {
        "run_dir": str(run_dir),
        "split": split,
        "checkpoint": str(loaded.folder),
        "epoch": _epoch_of(loaded.folder),
        "num_clips": int(labels.shape[0]),
        "views": {"clips": cfg.data.test_clips, "crops": cfg.data.test_crops},
        "precision": prec,
        "modalities": list(cfg.model.modalities),
        "metric": metric_name(cfg, cfg.data.multi_label).removeprefix("val_"),
        "multi_label": cfg.data.multi_label,
        "seconds": time.perf_counter() - start,
        "results": _score(logits, labels, classes, cfg.data.multi_label),
    }
    if write and (run_dir / "config.yaml").is_file():
        _write(out, logits["av"], labels, classes, run_dir)
    return out


def _eval_config(loaded: LoadedModel, data: str | Path | None) -> RunConfig:
    """The run's config (or the model's own data config), pointed at ``data`` when given."""
    cfg = loaded.run_config or RunConfig(model=loaded.model.cfg, data=loaded.data)
    if data:  # explicit media folder (or .zip): decode it, even if the run used a cache
        cfg = replace(cfg, data=replace(cfg.data, root=str(open_data_path(data)), cache=""))
    if not cfg.data.root and not cfg.data.cache:
        raise ValueError(f"{loaded.folder}: no data set known for this model; pass --data DIR")
    return cfg


def _open_eval_split(
    cfg: RunConfig,
    split: str,
    class_names: list[str] | None,
    batch_size: int | None,
    device: torch.device,
) -> Loader:
    """The split's multi-view batches (its classes checked against the model's)."""
    source = open_source(cfg.data, cfg.model)
    print(source.describe())
    loader = build_loader(
        source, split, train=False, batch_size=batch_size or cfg.train.batch_size,
        views=cfg.data.test_clips, crops=cfg.data.test_crops, seed=cfg.train.seed,
        pin_memory=device.type == "cuda",
    )  # fmt: skip
    where = cfg.data.cache or cfg.data.root
    classes = loader.classes
    if class_names is not None and classes != class_names:
        raise ValueError(
            f"{where}: its {len(classes)} classes differ from the model's {len(class_names)} "
            "classes"
        )
    if len(classes) != cfg.model.num_classes:  # a model without names: the count must agree
        raise ValueError(
            f"{where}: {len(classes)} classes for a {cfg.model.num_classes}-class model"
        )
    if loader.split_size == 0:
        raise ValueError(f"{where}: the {split} split is empty")
    return loader


def check_finite(logits: dict[str, torch.Tensor], folder: Path) -> None:
    """NaN or inf scores are an error, not a result (damaged or diverged weights would
    otherwise score as a confident ``nan%``)."""
    for name, scores in logits.items():
        bad = int((~torch.isfinite(scores)).any(dim=1).sum())
        if bad:
            raise ValueError(
                f"{folder}: the model gives non-finite scores (NaN or inf) for {bad} of "
                f"{len(scores)} clips ({VARIANT_TITLES[name]}); its weights are damaged or "
                "diverged, no metric computed"
            )


def _epoch_of(folder: Path) -> int | None:
    """The epoch a training checkpoint was written after; None for other model folders, and
    for a damaged ``state.pt`` (the weights and config are all evaluation needs: a warning)."""
    if not (folder / STATE).is_file():
        return None
    epoch = checkpoint_epoch(folder)
    if epoch is None:
        print(f"warning: {folder / STATE} is damaged; the epoch is unknown", file=sys.stderr)
    return epoch


def _score(
    logits: dict[str, torch.Tensor], labels: torch.Tensor, classes: list[str], multi_label: bool
) -> dict[str, dict[str, Any]]:
    """Metrics of every variant, per-class scores keyed by class name."""
    results = {}
    per = "per_class_ap" if multi_label else "per_class_acc"
    for name, scores in logits.items():
        m = classification_metrics(scores, labels, multi_label)
        m[per] = dict(zip(classes, m[per], strict=True))
        results[name] = m
    return results


def _write(
    out: dict[str, Any], logits: torch.Tensor, labels: torch.Tensor, classes: list, run_dir: Path
) -> None:
    """``eval[_<split>].json`` and, single-label, ``confusion[_<split>].png``."""
    suffix = "" if out["split"] == "val" else f"_{out['split']}"
    write_atomic(run_dir / f"eval{suffix}.json", json.dumps(out, indent=1))
    if not out["multi_label"]:
        cm = confusion_matrix(logits.argmax(1), labels, len(classes))
        plot_confusion(cm, classes, run_dir / f"confusion{suffix}.png")


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
