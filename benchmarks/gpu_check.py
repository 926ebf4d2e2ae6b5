"""GPU check of the paper preset: training clips/s, peak memory, share of the bf16 peak, compile,
and whether a prepared cache feeds the step (issue 12.5). Under 8 minutes on one GPU.

    python benchmarks/gpu_check.py                      # on a machine with a CUDA GPU
    python benchmarks/gpu_check.py --device cpu --tiny  # smoke test of this script (seconds)

What it does, in order:

1. **Peak.** The best of several 8192^3 bf16 matmuls (CUDA events): the GPU's measured bf16
   matmul peak, the yardstick for the model (the datasheet number is higher and unreachable).
2. **FLOPs.** One training step of one clip (forward + backward) counted by
   :func:`mbt.model.flops.count_training_flops`: ``torch.utils.flop_counter`` on the ``meta``
   device, where attention decomposes into matmuls, so it is counted once and the flash
   backward's recomputation is not (model FLOPs, as in MFU). Times the batch (it is linear).
3. **The step.** ``mbt_b16_paper`` (MBT-B/16, 8 frames at 224 px + 8 s of audio, bottleneck
   fusion at layer 8; random weights, 101 classes) in bf16 autocast: forward, the preset's
   per-modality loss, backward, SGD step. Everything runs under
   ``sdpa_kernel(SDPBackend.FLASH_ATTENTION)``, so an attention that cannot use the flash kernel
   raises instead of falling back; a profiled forward also checks that every attention call
   ran the flash kernel. The batch is ``--batch`` or the largest of 64, 32, 16 ... that fits.
   Eager first, then ``torch.compile`` (compile time reported apart).
4. **The loader.** A few UCF101-sized clips (320x240, 25 fps, ~7 s, H.264 + AAC, a wav beside:
   ``write_clip`` of ``benchmarks/decode.py``) are prepared with ``mbt prepare``, then read by
   DataLoaders with N workers (training items, random order, copied to the GPU); clips/s beside
   the step's demand. The few clips repeat, so the cache sits in the page cache: this is the
   CPU cost of reading and transforming items, not the disk's or the network's.

Exits with a message (status 2) when ``--device cuda`` and no CUDA device is present.
``main(argv)`` returns the numbers as a dict (``benchmarks/run_all.py`` puts them in
``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import gc
import importlib
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import machine as host  # benchmarks/machine.py
import torch
from timm.layers import Attention
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader, RandomSampler

from mbt.config import RunConfig, load_config, replace
from mbt.data.cache import CachedDataset, prepare
from mbt.data.dataset import collate_skip_failed
from mbt.data.demo import make_demo_data
from mbt.model import MBT
from mbt.model.flops import count_training_flops
from mbt.runtime import autocast, resolve_precision
from mbt.training.engine import training_loss
from mbt.training.optim import build_optimizer

HERE = Path(__file__).resolve().parent
NUM_CLASSES = 101  # UCF101-sized head
# --tiny: the paper preset's recipe on a model small enough for a CPU smoke test.
TINY_MODEL = [
    "model.width=64", "model.depth=2", "model.num_heads=4", "model.fusion_layer=1",
    "model.image_size=32", "model.patch_size=8", "model.num_frames=4",
    "model.audio_frames=128", "model.mel_bins=64", "data.freq_mask_width=8",
    "data.time_mask_width=16",
]  # fmt: skip
FLASH = [SDPBackend.FLASH_ATTENTION]  # the only SDPA backend allowed: others raise
FLASH_OPS = ("_scaled_dot_product_flash_attention",)  # CUDA; the CPU kernel adds "_for_cpu"


# ---------------------------------------------------------------------------------------------
# Machine and peak


def pick_device(name: str) -> torch.device:
    """``cuda`` (this process's GPU) or ``cpu``; exits with a message when CUDA is missing."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "gpu_check: no CUDA device here (torch.cuda.is_available() is False, torch "
            f"{torch.__version__}, CUDA build {torch.version.cuda}); run it on a machine with "
            "an NVIDIA GPU, or `--device cpu --tiny` to smoke-test the script"
        )
    return device


def machine(device: torch.device) -> dict[str, Any]:
    """What the numbers come from: the GPU (name, memory, compute capability, CUDA) and the
    host CPU (benchmarks/machine.py)."""
    out: dict[str, Any] = {"gpu": None, "cuda": torch.version.cuda}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out |= {
            "gpu": props.name,
            "gpu_memory_gb": round(props.total_memory / 1e9, 1),
            "compute_capability": f"{props.major}.{props.minor}",
        }
    return out | {"host": host.describe()}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one ``fn()`` (the GPU's work included)."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, reps: int) -> float:
    """Best FLOP/s of an ``n x n`` by ``n x n`` matmul in ``dtype`` on ``device``."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    for _ in range(3):  # warm-up: clocks up, kernels chosen
        torch.mm(a, b)
    best = min(timed(lambda: torch.mm(a, b), device) for _ in range(reps))
    return 2 * n**3 / best


# ---------------------------------------------------------------------------------------------
# The model and its step


def preset(tiny: bool) -> RunConfig:
    """``mbt_b16_paper`` with random weights and a 101-class head (tiny: a small model)."""
    overrides = ["model.init=", "model.audio_init=", f"model.num_classes={NUM_CLASSES}"]
    return load_config("mbt_b16_paper", overrides + (TINY_MODEL if tiny else []))


def random_batch(cfg: RunConfig, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Normalised video (B, T, 3, S, S), log-mel (B, T_a, F) and labels (B,) on ``device``."""
    m = cfg.model
    return {
        "video": torch.randn(batch, m.num_frames, 3, m.image_size, m.image_size, device=device),
        "audio": torch.randn(batch, m.audio_frames, m.mel_bins, device=device),
        "label": torch.randint(m.num_classes, (batch,), device=device),
    }


@dataclass
class TrainStep:
    """The preset's training step on a fixed batch: autocast forward, per-modality loss,
    backward, optimizer step (the loop's ``train_step`` without data movement and mixup)."""

    cfg: RunConfig
    net: torch.nn.Module  # the model, or its compiled wrapper
    optimizer: torch.optim.Optimizer
    precision: str
    batch: dict[str, torch.Tensor]

    def __call__(self) -> torch.Tensor:
        device = self.batch["video"].device
        targets = torch.nn.functional.one_hot(self.batch["label"], self.cfg.model.num_classes)
        with sdpa_kernel(FLASH), autocast(device, self.precision):
            per = self.net(video=self.batch["video"], audio=self.batch["audio"], per_modality=True)
        loss = training_loss(per, targets.float(), False, self.cfg.train.per_modality_loss)
        loss.backward()  # flash forward -> flash backward
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()


def build_step(cfg: RunConfig, batch: int, device: torch.device, precision: str) -> TrainStep:
    torch.manual_seed(0)
    model = MBT(cfg.model).to(device).train()
    optimizer = build_optimizer(model, cfg.train)
    return TrainStep(cfg, model, optimizer, precision, random_batch(cfg, batch, device))


def check_flash(step: TrainStep) -> int:
    """Profile one step: every attention module call must have run a flash kernel (forward);
    returns the number of flash calls. Raises if a call took another path."""
    calls = []
    hooks = [
        m.register_forward_hook(lambda *_: calls.append(1))
        for m in step.net.modules()
        if isinstance(m, Attention)
    ]
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            step()
    finally:
        for h in hooks:
            h.remove()
    flash = sum(
        e.count
        for e in prof.key_averages()
        if any(op in e.key for op in FLASH_OPS) and "backward" not in e.key
    )
    if not calls or flash < len(calls):
        raise RuntimeError(
            f"flash attention check failed: {len(calls)} attention calls, {flash} flash kernels "
            "(timm's fused attention off? set TIMM_FUSED_ATTN=1)"
        )
    return flash


# ---------------------------------------------------------------------------------------------
# Training throughput


def fit_batch(cfg: RunConfig, device: torch.device, precision: str, start: int) -> int:
    """The largest of ``start``, ``start / 2`` ... whose training step fits in memory."""
    batch = start
    while batch >= 1:
        try:
            step = build_step(cfg, batch, device, precision)
            step()
            step()  # the second step holds the optimizer state too
            return batch
        except torch.OutOfMemoryError:
            print(f"  batch {batch}: out of memory, halving")
            batch //= 2
        finally:
            step = None
            gc.collect()  # the failed step's tensors, before the next try allocates
            if device.type == "cuda":
                torch.cuda.empty_cache()
    raise RuntimeError("not even one clip fits in memory")


def measure_training(
    step: TrainStep, warmup: int, steps: int, device: torch.device
) -> dict[str, float]:
    """Seconds per step (median of ``steps`` after ``warmup``; the first step apart), peak
    memory (GB, CUDA only), clips/s."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    first = timed(step, device)
    for _ in range(max(warmup - 1, 0)):
        step()
    times = sorted(timed(step, device) for _ in range(steps))
    median = times[len(times) // 2]
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else math.nan
    batch = step.batch["video"].shape[0]
    return {"first_step_s": first, "step_s": median, "clips_per_s": batch / median, "peak_gb": peak}


def training(args: argparse.Namespace, cfg: RunConfig, device: torch.device) -> dict[str, Any]:
    """The matmul peak, the flash check, then eager and compiled steps at the fitted batch."""
    precision = resolve_precision("bf16" if device.type == "cuda" else "auto", device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    peak = matmul_peak(device, dtype, args.peak_n, 10)
    print(f"{precision} matmul peak ({args.peak_n}^3): {peak / 1e12:.1f} TFLOP/s")
    flops = count_training_flops(cfg.model)
    flash = check_flash(build_step(cfg, 1, device, precision))  # fails fast, before the fit
    batch = args.batch or fit_batch(cfg, device, precision, args.max_batch)
    print(f"batch {batch}: {flops / 1e9:,.1f} GFLOP per clip per step (forward + backward); "
          f"flash attention on all {flash} attention calls")  # fmt: skip
    out: dict[str, Any] = {"precision": precision, "peak_tflops": peak / 1e12, "batch": batch,
                           "step_gflop_per_clip": flops / 1e9, "flash_calls": flash}  # fmt: skip
    step = build_step(cfg, batch, device, precision)
    modes = {"eager": step}
    if args.compile:
        compiled = torch.compile(step.net)
        modes["compiled"] = TrainStep(cfg, compiled, step.optimizer, precision, step.batch)
    for name, s in modes.items():
        out[name] = measure_mode(name, s, args, flops * batch / peak)
    return out


def measure_mode(
    name: str, step: TrainStep, args: argparse.Namespace, peak_seconds: float
) -> dict[str, Any]:
    """:func:`measure_training` of one mode, printed; a failure (compile) becomes an entry.

    Args:
        peak_seconds: the step's FLOPs at the measured matmul peak (so MFU = that / step time).
    """
    try:
        r = measure_training(step, args.warmup, args.steps, step.batch["video"].device)
    except Exception as e:  # a compile failure must not hide the eager numbers
        print(f"{name}: failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
        return {"error": f"{type(e).__name__}: {e}"[:1000]}
    r["mfu"] = peak_seconds / r["step_s"]
    print(f"{name:8s}: {r['clips_per_s']:7.1f} clips/s, {1e3 * r['step_s']:7.1f} ms/step, "
          f"{100 * r['mfu']:5.1f} % of the matmul peak, peak memory {r['peak_gb']:.1f} GB, "
          f"first step {r['first_step_s']:.1f} s")  # fmt: skip
    return r


# ---------------------------------------------------------------------------------------------
# Loader throughput


def ucf_clips(folder: Path, n: int, workers: int) -> Path | None:
    """``n`` UCF101-sized clips (``benchmarks/decode.py``'s ``write_clip``) and a
    ``manifest.csv`` over them; None when that script is not in this checkout."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    try:
        write_clip = importlib.import_module("decode").write_clip
    except (ImportError, AttributeError) as e:
        print(f"loader: no UCF101-sized clip generator ({e}); using the demo clips")
        return None
    folder.mkdir(parents=True, exist_ok=True)
    with concurrent.futures.ProcessPoolExecutor(max(1, workers)) as pool:
        jobs = [
            pool.submit(write_clip, folder, f"ucf_{k:02d}", 6.5 + 0.1 * k, 250, seed=k)
            for k in range(n)
        ]
        clips = [j.result() for j in jobs]
    with open(folder / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "audio", "split"])
        for k, c in enumerate(clips):
            w.writerow([Path(c.video).name, f"class{k % 2}", Path(c.audio).name, "train"])
    return folder


def source_data(args: argparse.Namespace, tmp: Path, cfg: RunConfig) -> tuple[Path, RunConfig]:
    """The clips to prepare: ``--data``, the demo clips (``--tiny``) or UCF101-sized clips."""
    if args.data:
        return Path(args.data), cfg
    root = None if args.tiny else ucf_clips(tmp / "data", args.clips, args.cpu_workers)
    if root is None:  # 64x48 demo clips: the loader's code path, not UCF101's cost
        return make_demo_data(tmp / "data", clips_per_class=2, clips_per_group=1), cfg
    data = replace(cfg.data, layout="csv", manifest="manifest.csv")
    return root, replace(cfg, data=data)


def loader_rate(ds, batch: int, workers: int, seconds: float, device: torch.device) -> float:
    """Clips/s a DataLoader with ``workers`` processes delivers to ``device``, in steady state.

    The clock starts after the batches the workers can have ready before the first one is taken
    (``prefetch_factor`` = 2 each, plus one): those were made during the start-up and would
    inflate the rate.
    """
    sampler = RandomSampler(ds, replacement=True, num_samples=10**6)
    loader = DataLoader(
        ds, batch_size=batch, sampler=sampler, num_workers=workers,
        collate_fn=collate_skip_failed, pin_memory=device.type == "cuda",
    )  # fmt: skip
    skip = 2 * workers + 1
    clips, t0 = 0, 0.0
    for i, b in enumerate(loader):
        _ = {k: v.to(device, non_blocking=True) for k, v in b.items() if torch.is_tensor(v)}
        if i < skip:
            synchronize(device)
            t0 = time.perf_counter()
            continue
        clips += len(b["label"])
        if time.perf_counter() - t0 > seconds and i >= skip + 2:
            break
    synchronize(device)
    rate = clips / (time.perf_counter() - t0)
    del loader
    return rate


def loading(
    args: argparse.Namespace, cfg: RunConfig, device: torch.device, demand: float
) -> dict[str, Any]:
    """Prepare the clips, then clips/s of the cache for each worker count."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        root, cfg = source_data(args, Path(tmp), cfg)
        made = time.perf_counter() - t0
        cache = Path(tmp) / "cache"
        t0 = time.perf_counter()
        prepare(root, cache, cfg.data, cfg.model, workers=args.cpu_workers, progress=False)
        prepared = time.perf_counter() - t0
        ds = CachedDataset(cache, "train", cfg.model, cfg.data, train=True)
        size = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
        print(f"loader: {len(ds)} clips made in {made:.0f} s, prepared in {prepared:.0f} s, "
              f"cache {size / len(ds) / 1e6:.2f} MB/clip")  # fmt: skip
        rates = {}
        for n in args.workers:
            rates[n] = loader_rate(ds, args.loader_batch, n, args.loader_seconds, device)
            print(f"  {n:2d} workers: {rates[n]:7.1f} clips/s"
                  f"{f' ({rates[n] / demand:.2f}x the step)' if demand else ''}")  # fmt: skip
    best = max(rates.values(), default=0.0)
    if demand:
        enough = min((n for n, r in rates.items() if r >= demand), default=None)
        print(f"  the step needs {demand:.0f} clips/s: "
              + (f"{enough} workers keep up" if enough else
                 f"no worker count measured keeps up (best {best:.0f} clips/s)"))  # fmt: skip
    return {"clips": len(ds), "cache_mb_per_clip": size / len(ds) / 1e6, "prepare_s": prepared,
            "clips_per_s": rates, "step_demand": demand}  # fmt: skip


# ---------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    cores = host.cores()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (smoke test)")
    ap.add_argument("--tiny", action="store_true", help="a small model and the demo clips")
    ap.add_argument("--batch", type=int, default=0, help="clips per step; 0 = the largest fit")
    ap.add_argument("--max-batch", type=int, default=64, help="first batch tried by the fit")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10, help="timed steps (median)")
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--peak-n", type=int, default=8192, help="matmul size of the peak")
    ap.add_argument("--data", help="a data set folder to prepare instead of generated clips")
    ap.add_argument("--clips", type=int, default=16, help="UCF101-sized clips to generate")
    ap.add_argument("--workers", default=",".join(str(n) for n in _powers(cores)),
                    help="loader worker counts to measure, comma-separated")  # fmt: skip
    ap.add_argument("--loader-batch", type=int, default=32)
    ap.add_argument("--loader-seconds", type=float, default=8.0, help="per worker count")
    ap.add_argument("--no-loader", dest="loader", action="store_false")
    args = ap.parse_args(argv)
    args.workers = [int(n) for n in str(args.workers).split(",") if n.strip()]
    args.cpu_workers = cores
    if args.tiny:  # seconds on a CPU: small matmuls, few steps, short loader runs
        args.peak_n = min(args.peak_n, 512)
        args.max_batch, args.warmup, args.steps = min(args.max_batch, 2), 1, 2
        args.loader_batch, args.loader_seconds = 4, min(args.loader_seconds, 0.5)
    return args


def _powers(cores: int) -> list[int]:
    """1, 2, 4 ... up to the cores (and the cores themselves)."""
    out = [1]
    while out[-1] * 2 <= cores:
        out.append(out[-1] * 2)
    return out + ([cores] if out[-1] != cores else [])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the check, print the numbers, return them."""
    args = parse_args(argv)
    device = pick_device(args.device)
    start = time.perf_counter()
    cfg = preset(args.tiny)
    result: dict[str, Any] = {"machine": machine(device), "tiny": args.tiny}
    m = result["machine"]
    gpu = (
        f"{m['gpu']} ({m['gpu_memory_gb']} GB, sm {m['compute_capability']})"
        if m["gpu"]
        else "none"
    )
    print(f"gpu_check: GPU {gpu}, CUDA {m['cuda']}; host {host.line(m['host'])}")
    result["training"] = training(args, cfg, device)
    t = result["training"]
    demand = max((t[m]["clips_per_s"] for m in ("eager", "compiled") if "step_s" in t.get(m, {})),
                 default=0.0)  # fmt: skip
    if args.loader:
        try:
            result["loader"] = loading(args, cfg, device, demand)
        except Exception as e:  # keep the training numbers whatever the data side does
            print(f"loader: failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
            result["loader"] = {"error": f"{type(e).__name__}: {e}"[:1000]}
    result["seconds"] = time.perf_counter() - start
    print(f"gpu_check done in {result['seconds']:.0f} s")
    return result


if __name__ == "__main__":
    main()
