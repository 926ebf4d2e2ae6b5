"""``mbt demo``: what bottleneck fusion buys, shown on generated data in minutes on a CPU.

Two stages, each on real H.264 / wav files through the whole package (data -> cache -> train ->
evaluate):

1. The additive ``cycle`` classes (:mod:`mbt.data.demo`): ``configs/demo.yaml`` trains a tiny
   MBT from scratch. Each modality alone can reach at most 50 % here, but a sum of a picture
   score and a sound score (late fusion) solves it as well as MBT; this stage teaches the
   streams to find the picture and the sound (``--baselines`` adds the one-stream models).
2. The ``pairing`` classes, an interaction that neither modality alone nor any sum of
   per-modality scores can separate: ``configs/demo_pairing.yaml`` starts from stage 1's model
   and trains MBT, late fusion, audio only and video only with the same recipe; each is
   evaluated at its last epoch, the MBT model also with fusion switched off.

The printed table is the one in the README; ``out/demo.json`` holds the same numbers.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from mbt.config import RunConfig, load_config, replace
from mbt.data.cache import prepare
from mbt.data.demo import make_demo_data
from mbt.files import write_atomic
from mbt.training.evaluate import evaluate_run, format_report
from mbt.training.loop import train

# Stage 1: preset -> (run folder, row title); the one-stream rows with --baselines only
STAGE1_RUNS = {
    "demo": ("run", "MBT (bottleneck fusion)"),
    "demo_audio": ("run_audio", "audio only"),
    "demo_video": ("run_video", "video only"),
}
# Stage 2: run folder -> (row title, overrides of configs/demo_pairing.yaml)
PAIRING_RUNS = {
    "pairing_mbt": ("MBT (bottleneck fusion)", []),
    "pairing_late": ("late fusion", ["model.fusion=late"]),
    "pairing_audio": ("audio only", ["model.modalities=[audio]"]),
    "pairing_video": ("video only", ["model.modalities=[video]"]),
}
PAIRING_DATA = {"classes": "pairing", "clips_per_class": 120, "clips_per_group": 3}


def run_demo(
    out: str | Path = "runs/demo",
    seed: int = 0,
    baselines: bool = False,
    overrides: list[str] | tuple[str, ...] = (),
) -> dict[str, Any]:
    """Both stages (see the module docstring); prints the summary table.

    Layout of ``out``: ``data/`` and ``data_pairing/`` (the generated clips, kept between
    runs), ``cache/``, ``cache_pairing/``, ``run/`` (stage 1), ``pairing_{mbt,late,audio,
    video}/`` (stage 2), ``run_audio/`` and ``run_video/`` with ``baselines``, ``demo.json``.
    Runs are replaced.

    Args:
        out: demo folder.
        seed: demo data seed.
        baselines: also train ``demo_audio`` and ``demo_video`` on the stage-1 classes.
        overrides: ``key=value`` config overrides for every run.

    Returns:
        ``{run: {"title", "top1", "variants", "time_s", "run_dir"}}`` per trained run (also
        written to ``out/demo.json``).
    """
    out = Path(out)
    data = demo_data(out / "data", seed)
    summary: dict[str, Any] = {}
    for preset, (sub, title) in STAGE1_RUNS.items():
        if preset != "demo" and not baselines:
            continue
        cfg = with_cache(load_config(preset, overrides), data, out / "cache")
        summary[sub] = train_and_evaluate(cfg, data, out / sub, title, "best")
    pairing = demo_data(out / "data_pairing", seed, **PAIRING_DATA)
    warm = [f"model.warm_start={out / 'run'}"]  # stage 1's last checkpoint
    for sub, (title, extra) in PAIRING_RUNS.items():
        cfg = load_config("demo_pairing", [*warm, *extra, *overrides])
        cfg = with_cache(cfg, pairing, out / "cache_pairing")
        summary[sub] = train_and_evaluate(cfg, pairing, out / sub, title, "last")
    write_atomic(out / "demo.json", json.dumps(summary, indent=1))
    print(format_summary(summary))
    return summary


def demo_data(folder: Path, seed: int, **kwargs: Any) -> Path:
    """The demo data set in ``folder`` (``kwargs``: :func:`make_demo_data`'s), generated
    unless it is already there."""
    if not (folder / "README.txt").is_file():
        print(f"writing demo data to {folder}")
        make_demo_data(folder, seed=seed, overwrite=True, **kwargs)
    return folder


def with_cache(cfg: RunConfig, data: Path, cache: Path) -> RunConfig:
    """``cfg`` reading the prepared cache (decoded once, on first use, with ``cfg``'s sizes)."""
    if not (cache / "index.json").is_file():
        # Decoding once makes every epoch ~10x cheaper than reading the mp4 / wav files.
        print(f"decoding the demo clips once into {cache}")
        prepare(data, cache, cfg.data, cfg.model, workers=2)
    return replace(cfg, data=replace(cfg.data, cache=str(cache)))


def train_and_evaluate(
    cfg: RunConfig, data: Path, run: Path, title: str, checkpoint: str
) -> dict[str, Any]:
    """Train ``cfg`` into ``run`` (replacing it), evaluate its ``checkpoint``, print the table."""
    shutil.rmtree(run, ignore_errors=True)
    start = time.perf_counter()
    train(cfg, data, run)
    ev = evaluate_run(run, checkpoint=checkpoint)
    print(format_report(ev))
    return {
        "title": title,
        "classes": len(ev["results"]["av"]["per_class_acc"]),
        "checkpoint": f"{checkpoint} (epoch {ev['epoch']})",
        "top1": ev["results"]["av"]["top1"],
        "variants": {k: v["top1"] for k, v in ev["results"].items()},
        "time_s": time.perf_counter() - start,
        "run_dir": str(run),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The README's table: stage 1, then stage 2 with MBT's fusion-off row."""
    lines = ["", "demo summary (validation split, 2 temporal views per clip):"]
    for stage, runs in (
        ("additive classes (cycle)", [k for k in summary if not k.startswith("pairing_")]),
        ("interaction classes (pairing)", [k for k in summary if k.startswith("pairing_")]),
    ):
        if not runs:
            continue
        chance = 100 / summary[runs[0]]["classes"]
        lines.append(f"  {stage}, chance {chance:.1f} %:")
        for k in runs:
            s = summary[k]
            lines.append(
                f"    {s['title']:<30} top-1 {100 * s['top1']:5.1f} %   {s['time_s']:5.0f} s   "
                f"{s['checkpoint']}, {s['run_dir']}"
            )
            off = s["variants"].get("av_fusion_off")
            if k == "pairing_mbt" and off is not None:
                lines.append(f"    {'  same model, fusion off':<30} top-1 {100 * off:5.1f} %")
    return "\n".join(lines)
