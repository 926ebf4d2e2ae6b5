"""Seconds per training item: decoding the raw media vs reading the `mbt prepare` cache.

Generates the demo data set (or uses DATA), prepares a cache in both frame formats, and times
the same training items read through AVDataset (PyAV decode + resample + log-mel) and through
CachedDataset (uint8 frames / JPEG + float16 log-mel). Same sampling and augmentation code on
both sides; single process, so the numbers are per core.

    python benchmarks/cache_vs_decode.py [--data DATA] [--items 96]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from mbt.config import load_config, replace
from mbt.data.cache import open_dataset, prepare
from mbt.data.demo import make_demo_data


def per_item(dataset, n: int) -> float:
    n = min(n, len(dataset))
    dataset[0]  # warm caches (filterbank, codec libraries)
    start = time.perf_counter()
    for i in range(n):
        dataset[i]
    return (time.perf_counter() - start) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="data set folder (default: generate the demo set)")
    ap.add_argument("--items", type=int, default=96)
    args = ap.parse_args()
    cfg = load_config("demo")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data) if args.data else make_demo_data(Path(tmp) / "data")
        data_cfg = replace(cfg.data, root=str(data))
        raw = per_item(open_dataset(data_cfg, cfg.model, "train", train=True), args.items)
        print(f"raw media decode       {raw * 1e3:8.1f} ms/item")
        for fmt in ("npy", "jpeg"):
            out = Path(tmp) / f"cache_{fmt}"
            t0 = time.perf_counter()
            prepare(data, out, data_cfg, cfg.model, workers=2, progress=False, frame_format=fmt)
            prep = time.perf_counter() - t0
            cached_cfg = replace(data_cfg, cache=str(out))
            cached = per_item(open_dataset(cached_cfg, cfg.model, "train", train=True), args.items)
            size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
            print(
                f"cache ({fmt:4s})           {cached * 1e3:8.1f} ms/item   {raw / cached:5.1f}x faster"
                f"   prepare {prep:5.1f} s, {size:6.1f} MiB"
            )


if __name__ == "__main__":
    main()
