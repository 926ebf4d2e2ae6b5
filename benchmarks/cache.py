"""The prepared cache at the paper preset on UCF101-sized clips (issue 12 items 1 and 3).

Generates UCF101-sized clips (``benchmarks/media.py``: 320x240, 25 fps, 6.5-7.5 s, H.264 crf 23
+ AAC in mp4, a 44.1 kHz wav beside) and measures, at the paper preset (8 frames spread over
the clip, RandomResizedCrop 224, 800 x 128 log-mel window, SpecAugment; training items):

- **size**: the cache's MB per clip (frames + float16 log-mel) against the source media
  (mp4 + wav), at the default JPEG quality and a few others;
- **per item**, one process, one torch thread: decoding the media (``AVDataset``) vs reading
  the cache (``CachedDataset``), process CPU ms (steadier than wall time on a shared machine),
  the median of ``--repeats`` passes over the clips;
- **DataLoader** over the cache with 1 and N workers (batch 16, uint8 video as the items carry
  it): wall clips/s, and the workers' CPU ms per item (``RUSAGE_CHILDREN``), i.e. clips/s per
  worker core, the number that does not depend on how busy the machine is;
- **shards**: the same through ``mbt prepare --shards`` (``ShardStream`` + ``ShardLoader``).

    python benchmarks/cache.py [--clips 6] [--gop 250] [--workers 1 2] [--data DIR]

``main(argv) -> dict`` prints the tables and returns the numbers (``benchmarks/run_all.py``);
``markdown(result)`` renders them.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/media.py, machine.py
import machine as host  # noqa: E402
from media import write_dataset  # noqa: E402

from mbt.config import load_config, replace  # noqa: E402
from mbt.data.cache import JPEG_QUALITY, CacheReader, entry_clip, prepare, read_index  # noqa: E402
from mbt.data.dataset import AVDataset, collate_skip_failed  # noqa: E402
from mbt.data.layouts import scan  # noqa: E402
from mbt.data.shards import ShardLoader, ShardStream, write_shards  # noqa: E402

QUALITIES = (75, 85, 90)  # besides the default, for the size table
BATCH = 16


def _dir_mb(folder: Path, suffixes: Sequence[str]) -> float:
    return (
        sum(p.stat().st_size for p in folder.rglob("*") if p.name.endswith(tuple(suffixes))) / 1e6
    )


def per_item_ms(ds: Dataset, repeats: int) -> float:
    """Median process CPU ms per item over ``repeats`` passes (after one warm-up item)."""
    ds[0]
    passes = []
    for _ in range(repeats):
        t0 = time.process_time()
        for i in range(len(ds)):
            ds[i]
        passes.append((time.process_time() - t0) / len(ds))
    return statistics.median(passes) * 1e3


class _Cycle(Dataset):
    """``n`` items cycling through ``ds`` (an epoch long enough to time a loader)."""

    def __init__(self, ds: Dataset, n: int) -> None:
        self.ds, self.n = ds, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        return self.ds[i % len(self.ds)]


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _rate(batches) -> dict[str, float]:
    """Run a loader to its end: wall clips/s, worker CPU ms per item (workers are reaped when
    the loader ends, so their time is in RUSAGE_CHILDREN), main-process CPU ms per item."""
    gc.collect()
    ch0, me0, t0 = _children_cpu(), time.process_time(), time.perf_counter()
    n = sum(len(b["index"]) for b in batches() if b is not None)
    wall = time.perf_counter() - t0
    gc.collect()
    worker = (_children_cpu() - ch0) / n * 1e3
    return {
        "clips": n, "wall_clips_s": n / wall, "worker_cpu_ms": worker,
        "per_worker_core": 1e3 / worker if worker > 0 else float("nan"),
        "main_cpu_ms": (time.process_time() - me0) / n * 1e3,
    }  # fmt: skip


def loader_rate(ds: Dataset, workers: int, items: int) -> dict[str, float]:
    loader = DataLoader(_Cycle(ds, items), batch_size=BATCH, num_workers=workers,
                        collate_fn=collate_skip_failed)  # fmt: skip
    return {"workers": workers, **_rate(lambda: iter(loader))}


def _stream(shards: Path, cfg: Any) -> ShardStream:
    return ShardStream(shards, "train", cfg.model, cfg.data, train=True)


def shard_item_ms(shards: Path, cfg: Any, items: int) -> float:
    """Process CPU ms per item of the stream read in this process (tar + item), whole epochs."""
    stream, n, epoch = _stream(shards, cfg), 0, 0
    next(iter(stream))  # warm-up
    t0 = time.process_time()
    while n < items:
        stream.set_epoch(epoch)
        n += sum(1 for _ in stream)
        epoch += 1
    return (time.process_time() - t0) / n * 1e3


def shard_rate(shards: Path, cfg: Any, workers: int, items: int) -> dict[str, float]:
    """``ShardLoader`` epochs until ``items`` clips were read."""
    stream = _stream(shards, cfg)

    def batches():
        epoch, taken = 0, 0
        while taken < items:
            stream.set_epoch(epoch)
            for b in ShardLoader(stream, BATCH, workers):
                taken += len(b["index"])
                yield b
            epoch += 1

    return {"workers": workers, **_rate(batches)}


def write_long_shards(cache: Path, work: Path, times: int) -> Path:
    """Shards of a training split that lists every clip ``times`` times (a view of the cache:
    its index rewritten, its clip files linked), so that one epoch is long enough to time."""
    view = work / "view"
    view.mkdir()
    (view / "clips").symlink_to(cache / "clips")
    index = read_index(cache)
    keys = [k for s in ("train", "val", "test") for k in index["splits"][s]]
    index["splits"] = {"train": keys * times, "val": [], "test": []}
    (view / "index.json").write_text(json.dumps(index))
    write_shards(view, work / "shards", clips_per_shard=4)
    return work / "shards"


def measure(data: Path, work: Path, workers: Sequence[int], repeats: int, items: int) -> dict:
    """Every number of the module docstring for the clips under ``data``."""
    cfg = load_config("mbt_b16_paper")
    cfg = replace(cfg, data=replace(cfg.data, root=str(data), val_fraction=0.2))
    index = scan(data, cfg.data)
    clips = [c for s in ("train", "val", "test") for c in index.split(s)]
    n = len(clips)
    mp4, wav = _dir_mb(data, (".mp4",)) / n, _dir_mb(data, (".wav",)) / n
    out: dict[str, Any] = {"machine": host.describe(), "clips": n, "mp4_mb": mp4, "wav_mb": wav}
    sizes = {}
    for q in (JPEG_QUALITY, *QUALITIES):
        folder = work / f"cache_q{q}"
        t0 = time.perf_counter()
        prepare(data, folder, cfg.data, cfg.model, workers=2, progress=False, jpeg_quality=q,
                index=index)  # fmt: skip
        sizes[q] = {"mb": _dir_mb(folder / "clips", (".jpgs", ".npy")) / n,
                    "prepare_s": time.perf_counter() - t0}  # fmt: skip
    out["sizes"] = sizes
    cache = work / f"cache_q{JPEG_QUALITY}"
    entries = read_index(cache)
    e = next(iter(entries["clips"].values()))
    out["stored"] = {"fps": e["fps"], "height": e["height"], "width": e["width"]}
    mel = cfg.model.mel_bins
    cached = AVDataset(
        [entry_clip(c.key, entries["clips"][c.key], entries["root"]) for c in clips],
        index.classes, cfg.model, cfg.data, train=True,
        reader=CacheReader(cache, entries["clips"], mel),
    )  # fmt: skip
    raw = AVDataset(clips, index.classes, cfg.model, cfg.data, train=True)
    out["raw_ms"], out["cache_ms"] = per_item_ms(raw, repeats), per_item_ms(cached, repeats)
    out["loader"] = [loader_rate(cached, w, items) for w in workers]
    shards = write_long_shards(cache, work, max(1, 48 // n))
    out["shard_ms"] = shard_item_ms(shards, cfg, items)
    out["shards"] = shard_rate(shards, cfg, 1, items)
    return out


def markdown(r: dict[str, Any]) -> str:
    """The tables of one run (``benchmarks/run_all.py`` writes the machine line above them)."""
    src, st = r["mp4_mb"] + r["wav_mb"], r["stored"]
    lines = [
        f"{r['clips']} UCF101-sized clips (320x240, 25 fps, 6.5-7.5 s, H.264 crf 23 + AAC, wav "
        f"beside): source {src:.2f} MB/clip (mp4 {r['mp4_mb']:.2f}, wav {r['wav_mb']:.2f}). "
        f"Paper preset: frames stored at {st['fps']:g} fps, {st['width']}x{st['height']} (never "
        "upscaled), JPEG 4:2:0, float16 log-mel of the whole track.",
        "",
        "| JPEG quality | cache MB/clip | x source (mp4 + wav) | x mp4 alone | prepare s |",
        "|---|---|---|---|---|",
    ]
    for q, s in sorted(r["sizes"].items()):
        mark = " (default)" if q == JPEG_QUALITY else ""
        lines.append(
            f"| {q}{mark} | {s['mb']:.2f} | {s['mb'] / src:.2f}x | {s['mb'] / r['mp4_mb']:.2f}x "
            f"| {s['prepare_s']:.1f} |"
        )
    lines += [
        "",
        "| per training item, one process | cpu-ms | vs raw |",
        "|---|---|---|",
        f"| decode the media (AVDataset) | {r['raw_ms']:.1f} | 1x |",
        f"| read the cache (CachedDataset) | {r['cache_ms']:.1f} | "
        f"{r['raw_ms'] / r['cache_ms']:.1f}x faster |",
        f"| stream the shards (ShardStream, tar + item) | {r['shard_ms']:.1f} | "
        f"{r['raw_ms'] / r['shard_ms']:.1f}x faster |",
        "",
        f"| DataLoader, batch {BATCH} | workers | clips/s (wall) | worker cpu-ms/item | "
        "clips/s per worker core | main cpu-ms/item |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in [("cache", x) for x in r["loader"]] + [("shards", r["shards"])]:
        lines.append(
            f"| {name} | {row['workers']} | {row['wall_clips_s']:.1f} | "
            f"{row['worker_cpu_ms']:.1f} | {row['per_worker_core']:.0f} | "
            f"{row['main_cpu_ms']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="a data set of clips (default: generate UCF101-sized ones)")
    ap.add_argument("--clips", type=int, default=6, help="clips to generate (2 classes)")
    ap.add_argument("--gop", type=int, default=250, help="keyframe interval of the generated mp4")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--items", type=int, default=192, help="items per loader measurement")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # one loader worker = one core; the same for the one-process items
    with tempfile.TemporaryDirectory(prefix="mbt-cache-bench-") as tmp:
        work = Path(tmp)
        data = Path(args.data) if args.data else None
        if data is None:
            data = write_dataset(work / "data", clips_per_class=max(1, args.clips // 2),
                                 gop=args.gop)  # fmt: skip
        result = measure(data, work, args.workers, args.repeats, args.items)
    print(f"Machine: {host.line(result['machine'])}.\n")
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
