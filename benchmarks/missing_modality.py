"""Missing modality, measured (issue 10.5): a fused model trained with modality dropout, with one
input removed, against the model trained on the other input alone.

    python benchmarks/missing_modality.py                 # seeds 0 1, 2 jobs: ~8 min on 2 cores
    python benchmarks/missing_modality.py --dropout 0.3

On the additive ``cycle`` demo classes each modality carries half the answer: the best possible
accuracy from one modality alone is 50 % (``mbt/data/demo.py``). Per seed it trains

- ``configs/demo.yaml`` with ``train.modality_dropout`` (that fraction of training clips loses
  one modality, picked at random), and without it (the demo's own model);
- ``configs/demo_audio.yaml`` and ``configs/demo_video.yaml`` (one stream each);

and evaluates each best checkpoint on the validation split (48 clips, 2 temporal views). "audio
removed" runs the fused model on the video stream alone (the audio stream is not run at all).
Prints a table and writes ``benchmarks/ablation/missing_modality.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from mbt.config import load_config
from mbt.demo import demo_data, with_cache
from mbt.training.evaluate import evaluate_run
from mbt.training.loop import train

OUT = Path(__file__).resolve().parent / "ablation" / "missing_modality.json"
# run -> (preset, overrides); {p}: --dropout
RUNS = {
    "fused, dropout": ("demo", ["train.modality_dropout={p}"]),
    "fused, no dropout": ("demo", []),
    "audio only": ("demo_audio", []),
    "video only": ("demo_video", []),
}
ROWS = [  # (row, run, evaluation variant)
    ("all inputs: fused model, dropout", "fused, dropout", "av"),
    ("audio removed: fused model, dropout", "fused, dropout", "video_only"),
    ("audio removed: fused model, no dropout", "fused, no dropout", "video_only"),
    ("audio removed: video-only model", "video only", "av"),
    ("video removed: fused model, dropout", "fused, dropout", "audio_only"),
    ("video removed: fused model, no dropout", "fused, no dropout", "audio_only"),
    ("video removed: audio-only model", "audio only", "av"),
]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--dropout", type=float, default=0.5)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--work", default="runs/missing_modality")
    args = ap.parse_args(argv)
    work = Path(args.work)
    data = demo_data(work / "data", 0)
    with_cache(load_config("demo"), data, work / "cache")
    jobs = [(run, seed, args.dropout, work) for run in RUNS for seed in args.seeds]
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        results = dict(
            zip([(r, s) for r, s, _, _ in jobs], pool.map(_train_star, jobs), strict=True)
        )
    table = {}
    for row, run, variant in ROWS:
        acc = [100 * results[run, s][variant] for s in args.seeds]
        table[row] = {"mean": statistics.fmean(acc), "per_seed": acc}
    print(f"modality dropout {args.dropout}, seeds {args.seeds}, validation top-1 %:")
    for row, t in table.items():
        seeds = " ".join(f"{a:5.1f}" for a in t["per_seed"])
        print(f"  {row:<42} {t['mean']:5.1f}   (per seed: {seeds})")
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(
        json.dumps({"dropout": args.dropout, "seeds": args.seeds, "table": table}, indent=1)
    )
    return table


def _train_star(job: tuple) -> dict[str, float]:
    return train_one(*job)


def train_one(run: str, seed: int, dropout: float, work: Path) -> dict[str, float]:
    """Train one run of :data:`RUNS`; top-1 of every evaluation variant."""
    preset, extra = RUNS[run]
    over = [e.format(p=dropout) for e in extra]
    over += [f"train.seed={seed}", "data.num_workers=0", "train.threads=1", "train.device=cpu"]
    cfg = with_cache(load_config(preset, over), work / "data", work / "cache")
    out = work / "runs" / f"{run.replace(' ', '_').replace(',', '')}_s{seed}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    with open(out / "log.txt", "w") as log, contextlib.redirect_stdout(log):
        train(cfg, work / "data", out / "run")
        ev = evaluate_run(out / "run", write=False)
    return {k: v["top1"] for k, v in ev["results"].items()}


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
