"""Training memory of a preset per clip, measured on the CPU: what sizes a GPU batch.

Autograd keeps tensors from the forward pass for the backward pass. This script counts their
bytes (each storage once) during one training forward under the preset's autocast, at batch 1
and batch 2: the difference is what one more clip costs; weights-sized copies (autocast's bf16
weights) do not grow with the batch. Added to that: fp32 weights, gradients and Adam's two
moments (16 bytes a parameter). Not counted: the CUDA context (~0.5 GB), the allocator's slack
and the transient peak inside the backward pass, so leave ~20 % of the GPU free.

The attention kernels matter: a math-path attention saves (B, heads, N, N) probabilities, the
flash / memory-efficient kernels that CUDA picks for these shapes do not. The script reports
whether such a tensor was saved here (then the per-clip number overstates a GPU's).

    python benchmarks/train_memory.py --config pjzuf_c101 --gpu-gb 24
"""

from __future__ import annotations

import argparse
import time

import torch

from mbt.config import load_config
from mbt.model import MBT
from mbt.runtime import autocast


def saved_bytes(model: MBT, batch: int, precision: str) -> tuple[int, bool]:
    """Bytes autograd saves in one training forward of ``batch`` random clips, and whether an
    (N, N) attention matrix was among them."""
    cfg = model.cfg
    video = torch.randn(batch, cfg.num_frames, 3, cfg.image_size, cfg.image_size)
    audio = torch.randn(batch, cfg.audio_frames, cfg.mel_bins)
    storages: dict[int, int] = {}
    square = False

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal square
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        square = square or (t.ndim == 4 and t.shape[-1] == t.shape[-2] and t.shape[-1] > 256)
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with autocast(torch.device("cpu"), precision):
            model(video=video, audio=audio, per_modality=True)
    return sum(storages.values()), square


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="pjzuf_c101")
    parser.add_argument("--gpu-gb", type=float, default=24.0, help="GPU memory to size for")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config(args.config, ["model.init=", "model.audio_init=", *args.overrides])
    # auto is bf16 on the GPUs this sizes for (Ampere and later); fp32 / bf16 / fp16 as set.
    precision = "bf16" if cfg.train.precision == "auto" else cfg.train.precision
    torch.manual_seed(0)
    model = MBT(cfg.model)
    params = sum(p.numel() for p in model.parameters())
    start = time.perf_counter()
    one, square = saved_bytes(model, 1, precision)
    two, _ = saved_bytes(model, 2, precision)
    per_clip = two - one
    fixed = 16 * params + (one - per_clip)  # fp32 weights, grads, Adam m and v; bf16 copies
    usable = 0.8 * args.gpu_gb * 1e9
    fits = int((usable - fixed) // per_clip)
    tokens = model.embed["video"].num_tokens if "video" in model.embed else 0
    audio = model.embed["audio"].num_tokens if "audio" in model.embed else 0
    print(f"config {args.config} ({precision}): {params / 1e6:.1f} M parameters, "
          f"{tokens} video + {audio} audio tokens per clip")  # fmt: skip
    print(f"saved for backward: {per_clip / 1e9:.3f} GB per clip"
          f"{' (math-path attention matrices included)' if square else ''}")  # fmt: skip
    print(f"weights, gradients, Adam state and autocast copies: {fixed / 1e9:.2f} GB")
    print(f"{args.gpu_gb:.0f} GB GPU, 80 % usable: about {fits} clips per step")
    print(f"(measured in {time.perf_counter() - start:.0f} s on the CPU)")


if __name__ == "__main__":
    main()
