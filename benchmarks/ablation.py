"""The paper's fusion ablations on the demo's interaction task (issue 10.3).

    python benchmarks/ablation.py                  # the grid below, seeds 0-4, 2 jobs: 70 runs,
                                                   # 47 min on 2 CPU cores
    python benchmarks/ablation.py --seeds 5 6      # other seeds (finished runs are kept)
    python benchmarks/ablation.py --quick          # smoke run: 2 epochs, 2 points, no files

Protocol, for every grid point and seed (``mbt demo``'s two stages, ``mbt/demo.py``):

1. stage 1 trains the point's architecture on the additive ``cycle`` demo classes
   (``configs/demo.yaml``, 20 epochs, no early stopping);
2. stage 2 starts from stage 1's last checkpoint and trains ``configs/demo_pairing.yaml`` with
   the same architecture on the ``pairing`` classes (only an exchange between the streams can
   solve them), the layers below the fusion layer frozen; evaluated at its last epoch on the
   validation split (144 clips, 2 temporal views), also with fusion switched off.

The seed is the training seed of both stages; the data (seed 0) is generated and cached once.
GFLOPs are one forward pass of one clip of the tiny demo model (``mbt.model.flops``). The
"recipe" rows change one thing of the demo's MBT recipe each (no stage 1, the stage-2 learning
rate, nothing frozen, the official per-modality loss in stage 2) to show what mattered.

Writes ``<work>/ablation.jsonl`` (one row per finished run: a rerun skips those),
``benchmarks/ablation/ablation.csv``, ``benchmarks/ablation/{lf,bottlenecks,regimes,recipe}.png``
and the "Fusion ablations" section of ``benchmarks/RESULTS.md`` (between its ``ablation:begin``
/ ``ablation:end`` markers, after the part ``run_all.py`` writes).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import shutil
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)

from mbt.config import load_config, replace  # noqa: E402
from mbt.demo import PAIRING_DATA, demo_data, with_cache  # noqa: E402
from mbt.model.flops import count_flops  # noqa: E402
from mbt.training.evaluate import evaluate_run  # noqa: E402
from mbt.training.loop import train  # noqa: E402

HERE = Path(__file__).resolve().parent
OUT = HERE / "ablation"
RESULTS = HERE / "RESULTS.md"
BEGIN, END = "<!-- ablation:begin -->", "<!-- ablation:end -->"
DEPTH = 4  # configs/demo.yaml
# Grid point -> model overrides. One point can serve several sweeps.
POINTS = {
    "bottleneck Lf=0 B=4": {"fusion": "bottleneck", "fusion_layer": 0, "n_bottlenecks": 4},
    "bottleneck Lf=1 B=4": {"fusion": "bottleneck", "fusion_layer": 1, "n_bottlenecks": 4},
    "bottleneck Lf=2 B=4": {"fusion": "bottleneck", "fusion_layer": 2, "n_bottlenecks": 4},
    "bottleneck Lf=3 B=4": {"fusion": "bottleneck", "fusion_layer": 3, "n_bottlenecks": 4},
    "bottleneck Lf=2 B=1": {"fusion": "bottleneck", "fusion_layer": 2, "n_bottlenecks": 1},
    "bottleneck Lf=2 B=2": {"fusion": "bottleneck", "fusion_layer": 2, "n_bottlenecks": 2},
    "bottleneck Lf=2 B=8": {"fusion": "bottleneck", "fusion_layer": 2, "n_bottlenecks": 8},
    "vanilla Lf=2": {"fusion": "vanilla", "fusion_layer": 2},
    "shared Lf=2": {"fusion": "shared", "fusion_layer": 2},
    "late": {"fusion": "late", "fusion_layer": 2},  # freezes layers 0-1, as in mbt demo
}
MBT = "bottleneck Lf=2 B=4"  # the demo's model
RECIPES = {  # the demo's MBT with one change to its recipe -> (stage-2 overrides, stage 1?)
    "MBT from scratch (no stage 1)": ([], False),
    "MBT, stage-2 lr 5e-4": (["train.lr=5e-4"], True),
    "MBT, nothing frozen": (["train.freeze=[]"], True),
    "MBT, per-modality loss": (["train.per_modality_loss=true"], True),
}
GRID = [*POINTS, *RECIPES]
SWEEPS = {  # sweep -> (x label, {point: x})
    "lf": ("fusion layer Lf (4 = late fusion)", {
        "bottleneck Lf=0 B=4": 0, "bottleneck Lf=1 B=4": 1, "bottleneck Lf=2 B=4": 2,
        "bottleneck Lf=3 B=4": 3, "late": 4,
    }),
    "bottlenecks": ("bottleneck tokens B (Lf = 2)", {
        "bottleneck Lf=2 B=1": 1, "bottleneck Lf=2 B=2": 2, "bottleneck Lf=2 B=4": 4,
        "bottleneck Lf=2 B=8": 8,
    }),
    "regimes": ("GFLOPs per clip (forward, tiny demo model)", {
        "bottleneck Lf=2 B=4": None, "vanilla Lf=2": None, "shared Lf=2": None, "late": None,
    }),
    "recipe": ("the demo's recipe, one change at a time", {
        MBT: 0, **{name: i + 1 for i, name in enumerate(RECIPES)},
    }),
}  # fmt: skip
QUICK = ["bottleneck Lf=2 B=4", "late"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    work = Path(args.work)
    common = [f"train.threads={args.threads}", "data.num_workers=0", "train.device=cpu"]
    if args.quick:
        common += ["train.epochs=2"]
    cycle, pairing = _data(work)
    done = _finished(work / "ablation.jsonl")
    todo = [
        (name, seed)
        for name in (QUICK if args.quick else GRID)
        for seed in args.seeds
        if (name, seed) not in done or args.quick
    ]
    print(f"{len(done)} runs finished before, {len(todo)} to run ({args.jobs} at a time)")
    jobs = [(name, seed, work, cycle, pairing, common) for name, seed in todo]
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        for row in pool.map(_run_point_star, jobs):
            print(json.dumps(row), flush=True)
            if not args.quick:
                with open(work / "ablation.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
            done[row["point"], row["seed"]] = row
    rows = [done[k] for k in sorted(done, key=lambda k: (GRID.index(k[0]), k[1]))]
    table = summarise(rows)
    print(format_table(table))
    if not args.quick:
        write_outputs(rows, table)
    return {"rows": rows, "table": table}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--work", default="runs/ablation", help="data, caches, runs, ablation.jsonl")
    ap.add_argument("--quick", action="store_true", help="2 epochs, 2 points, no files written")
    return ap.parse_args(argv)


def _data(work: Path) -> tuple[Path, Path]:
    """The demo's two data sets and their caches (made once)."""
    cycle = demo_data(work / "data", 0)
    pairing = demo_data(work / "data_pairing", 0, **PAIRING_DATA)
    with_cache(load_config("demo"), cycle, work / "cache")  # the splits of each stage's preset
    with_cache(load_config("demo_pairing"), pairing, work / "cache_pairing")
    return cycle, pairing


def _finished(path: Path) -> dict[tuple[str, int], dict[str, Any]]:
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["point"], r["seed"]): r for r in rows if r["point"] in GRID}


# ---------------------------------------------------------------------------------------------
# one grid point, one seed (runs in a worker process)


def _run_point_star(job: tuple) -> dict[str, Any]:
    return run_point(*job)


def run_point(
    name: str, seed: int, work: Path, cycle: Path, pairing: Path, common: list[str]
) -> dict[str, Any]:
    """Stage 1 then stage 2 of one grid point (see the module docstring); the result row."""
    model = POINTS.get(name, POINTS[MBT])
    extra, warm = RECIPES.get(name, ([], True))
    arch = [f"model.{k}={v}" for k, v in model.items()]
    frozen = ["embed."] + [f"layers.{i}." for i in range(model["fusion_layer"])]
    runs = work / "runs" / f"{name.replace(' ', '_').replace('=', '')}_s{seed}"
    start = time.perf_counter()
    shutil.rmtree(runs, ignore_errors=True)  # an unfinished run of an interrupted grid
    runs.mkdir(parents=True)
    over = [f"train.seed={seed}", *arch]
    # stage 1 has a fixed length here (mbt demo: 40 epochs with early stopping); --quick's
    # train.epochs=2 in common comes last and wins
    cfg1 = load_config("demo", ["train.epochs=20", "train.early_stopping=0", *over, *common])
    over2 = [*over, *common, f"train.freeze={frozen}", *extra]
    if warm:
        over2.append(f"model.warm_start={runs / 'stage1'}")
    cfg2 = load_config("demo_pairing", over2)
    with open(runs / "log.txt", "w") as log, contextlib.redirect_stdout(log):
        s1 = (
            train(with_cache(cfg1, cycle, work / "cache"), cycle, runs / "stage1") if warm else None
        )
        train(with_cache(cfg2, pairing, work / "cache_pairing"), pairing, runs / "stage2")
        ev = evaluate_run(runs / "stage2", checkpoint="last", write=False)
    res = ev["results"]
    return {
        "point": name,
        "seed": seed,
        **model,
        "top1": round(100 * res["av"]["top1"], 2),
        "top1_fusion_off": round(100 * res.get("av_fusion_off", res["av"])["top1"], 2),
        "stage1_top1": round(100 * s1["last_val"]["val_acc"], 2) if s1 else None,
        "gflops": round(count_flops(replace(cfg2.model, num_classes=3)) / 1e9, 4),
        "time_s": round(time.perf_counter() - start, 1),
    }


# ---------------------------------------------------------------------------------------------
# summary, CSV, plots, RESULTS.md


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per grid point: mean and std over seeds of top-1 and fusion-off top-1, GFLOPs."""
    table = {}
    for name in GRID:
        mine = [r for r in rows if r["point"] == name]
        if not mine:
            continue
        acc, off = [r["top1"] for r in mine], [r["top1_fusion_off"] for r in mine]
        table[name] = {
            "n": len(mine),
            "mean": statistics.fmean(acc),
            "std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "off_mean": statistics.fmean(off),
            "min": min(acc),
            "gflops": mine[0]["gflops"],
            "stage1": _mean_or_none([r["stage1_top1"] for r in mine]),
        }
    return table


def _mean_or_none(values: list[float | None]) -> float | None:
    return None if None in values else statistics.fmean(values)  # type: ignore[arg-type]


def format_table(table: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| grid point | seeds | top-1 % (mean ± std) | worst seed | fusion off at test | "
        "stage 1 (cycle) | GFLOPs/clip |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, t in table.items():
        stage1 = "none" if t["stage1"] is None else f"{t['stage1']:.1f}"
        lines.append(
            f"| {name} | {t['n']} | {t['mean']:.1f} ± {t['std']:.1f} | {t['min']:.1f} | "
            f"{t['off_mean']:.1f} | {stage1} | {t['gflops']:.4f} |"
        )
    return "\n".join(lines)


def write_outputs(rows: list[dict[str, Any]], table: dict) -> None:
    OUT.mkdir(exist_ok=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(OUT / "ablation.csv", "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        w.writerows(rows)
    for sweep, (xlabel, xs) in SWEEPS.items():
        plot_sweep(sweep, xlabel, xs, rows, OUT / f"{sweep}.png")
    section = markdown(table, sorted({r["seed"] for r in rows}))
    text = RESULTS.read_text() if RESULTS.is_file() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section + "\n"
    RESULTS.write_text(text)
    print(f"wrote {OUT}/ablation.csv, {', '.join(f'{s}.png' for s in SWEEPS)} and {RESULTS}")


def plot_sweep(sweep: str, xlabel: str, xs: dict, rows: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for i, name in enumerate(xs):
        acc = [r["top1"] for r in rows if r["point"] == name]
        if not acc:
            continue
        x = (
            xs[name]
            if xs[name] is not None
            else next(r["gflops"] for r in rows if r["point"] == name)
        )
        ax.scatter([x] * len(acc), acc, s=12, alpha=0.5, color=f"C{i}")
        ax.errorbar(x, statistics.fmean(acc), statistics.stdev(acc) if len(acc) > 1 else 0,
                    fmt="o", color=f"C{i}", capsize=3, label=name)  # fmt: skip
    ax.axhline(100 / 3, color="grey", ls=":", lw=1, label="chance (33.3 %)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("val top-1 % (pairing)")
    ax.set_ylim(0, 105)
    if sweep == "bottlenecks":
        ax.set_xscale("log", base=2)
    if sweep == "recipe":  # categories: one tick per change
        ax.set_xticks(
            list(xs.values()), ["the demo's"] + [n.removeprefix("MBT").strip(" ,") for n in RECIPES]
        )
        ax.tick_params(axis="x", labelsize=6, rotation=20)
    elif sweep == "regimes":  # GFLOPs: a few round ticks
        ax.xaxis.set_major_locator(plt.MaxNLocator(5))
    else:  # one tick per grid value
        ax.set_xticks(sorted(xs.values()), [str(x) for x in sorted(xs.values())])
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(table: dict[str, dict[str, Any]], seeds_run: list[int]) -> str:
    seeds = " ".join(str(s) for s in seeds_run)  # every finished run is in the table
    return f"""{BEGIN}
## Fusion ablations (the demo's pairing task)

Generated by `python benchmarks/ablation.py --seeds {seeds}` (protocol in its docstring: per grid
point and seed, stage 1 on the additive demo classes, then stage 2 on the pairing classes from
stage 1's weights, evaluated at the last epoch on 144 validation clips; chance is 33.3 %).
Per-run rows: `benchmarks/ablation/ablation.csv`.

{format_table(table)}

![accuracy vs Lf](ablation/lf.png) ![accuracy vs B](ablation/bottlenecks.png)
![accuracy vs GFLOPs](ablation/regimes.png) ![the recipe, one change at a time](ablation/recipe.png)
{END}"""


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
