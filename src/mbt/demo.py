"""``mbt demo``: generated demo data -> cache -> train ``configs/demo.yaml`` -> evaluate.

The demo data (:mod:`mbt.data.demo`) is built so that each modality alone can reach at most
50 % while audio and video together decide every clip; ``--baselines`` trains the one-stream
presets beside the fused model to show exactly that.
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
from mbt.training.evaluate import evaluate_run, format_report
from mbt.training.loop import train

BASELINES = {"demo_audio": "run_audio", "demo_video": "run_video"}  # preset -> run folder


def run_demo(
    out: str | Path = "runs/demo",
    seed: int = 0,
    baselines: bool = False,
    overrides: list[str] | tuple[str, ...] = (),
) -> dict[str, Any]:
    """Demo data -> cache -> train -> evaluate, for ``demo`` (and the one-stream baselines).

    Layout of ``out``: ``data/`` (the generated clips, kept between runs), ``cache/``, ``run/``
    (and ``run_audio/``, ``run_video/`` with ``baselines``), ``demo.json``. Runs are replaced.

    Args:
        out: demo folder.
        seed: demo data seed.
        baselines: also train ``demo_audio`` and ``demo_video`` (each modality alone cannot
            exceed 50 % on this data; the fused model should reach >= 90 %).
        overrides: ``key=value`` config overrides for every run.

    Returns:
        ``{preset: {"val_acc_best", "eval_top1", "time_s", "run_dir"}}`` per trained preset
        (also written to ``out/demo.json``).
    """
    out = Path(out)
    data = demo_data(out / "data", seed)
    runs = {"demo": "run"} | (BASELINES if baselines else {})
    summary: dict[str, Any] = {}
    for preset, sub in runs.items():
        cfg = with_cache(load_config(preset, overrides), data, out / "cache")
        summary[preset] = train_and_evaluate(cfg, data, out / sub)
    (out / "demo.json").write_text(json.dumps(summary, indent=1))
    print(format_summary(summary))
    return summary


def demo_data(folder: Path, seed: int) -> Path:
    """The demo data set in ``folder``, generated unless it is already there."""
    if not (folder / "README.txt").is_file():
        print(f"writing demo data to {folder}")
        make_demo_data(folder, seed=seed, overwrite=True)
    return folder


def with_cache(cfg: RunConfig, data: Path, cache: Path) -> RunConfig:
    """``cfg`` reading the prepared cache (decoded once, on first use, with ``cfg``'s sizes)."""
    if not (cache / "index.json").is_file():
        # Decoding once makes every epoch ~10x cheaper than reading the mp4 / wav files.
        print(f"decoding the demo clips once into {cache}")
        prepare(data, cache, cfg.data, cfg.model, workers=2)
    return replace(cfg, data=replace(cfg.data, cache=str(cache)))


def train_and_evaluate(cfg: RunConfig, data: Path, run: Path) -> dict[str, Any]:
    """Train ``cfg`` into ``run`` (replacing it), evaluate its best checkpoint, print the table."""
    shutil.rmtree(run, ignore_errors=True)
    start = time.perf_counter()
    s = train(cfg, data, run)
    ev = evaluate_run(run)
    print(format_report(ev))
    return {
        "val_acc_best": s["best_metric"],
        "eval_top1": ev["results"]["av"]["top1"],
        "time_s": time.perf_counter() - start,
        "run_dir": str(run),
    }


def format_summary(summary: dict[str, Any]) -> str:
    lines = ["", "demo summary (validation, multi-view):"]
    for preset, s in summary.items():
        lines.append(
            f"  {preset:<12} top-1 {100 * s['eval_top1']:5.1f}%   {s['time_s']:6.1f}s   "
            f"{s['run_dir']}"
        )
    return "\n".join(lines)
