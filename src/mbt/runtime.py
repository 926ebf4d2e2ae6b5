"""Where a model runs and in what precision: used alike by training and by inference.

:func:`pick_device` turns ``train.device`` / ``--device`` into a device; :func:`autocast` runs a
forward in the resolved precision; :func:`resolve_precision` resolves ``train.precision`` /
``--precision`` for this machine, :func:`inference_precision` does so for ``predict`` and
``evaluate`` (the flag, else the run's setting). Applications (predict, explain, export) take
these from here, never from ``training/``.

``auto`` (the default precision) picks what the hardware does natively::

    CUDA device with native bf16 (compute capability >= 8, or ROCm)      -> bf16
    CPU with native bf16 (x86 AVX512-BF16 or AMX-BF16, Arm BF16)          -> bf16
    anything else (older GPUs, AVX2-only or plain AVX-512 CPUs)           -> fp32

Older GPUs get fp32 rather than fp16: fp16 trains with a loss scaler and can overflow, so it is
an explicit choice (``train.precision=fp16``, CUDA only).

An explicit ``bf16`` on a CPU without native bf16 runs as asked but warns once, with the cost
measured by a ~10 ms matmul probe on this machine: such CPUs convert every bf16 matmul, and on
an AVX2-only host a bf16 ``mm`` ran at 0.7 GFLOP/s against ~100 in fp32.

``torch.backends.cpu.get_cpu_capability()`` names the vector ISA only (``AVX512`` also on CPUs
without bf16), so the CPU's features are read from ``torch.cpu.get_capabilities()`` (torch >=
2.9), else torch's private ``torch.cpu._is_avx512_bf16_supported`` /
``_is_amx_tile_supported``, else the flags in ``/proc/cpuinfo``.
"""

from __future__ import annotations

import contextlib
import functools
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from mbt.config import PRECISIONS

__all__ = [
    "PRECISIONS", "autocast", "cpu_bf16", "describe", "inference_precision", "pick_device",
    "resolve_precision",
]  # fmt: skip
# CPU features that make bf16 matmuls native: x86 AVX512-BF16 (Cooper Lake, Zen 4+) and AMX
# (Sapphire Rapids+); Arm's BF16 extension (Graviton 3, Neoverse V1/N2+) and SVE-BF16.
BF16_FEATURES = frozenset({"avx512_bf16", "amx_bf16", "bf16", "sve_bf16"})
CPUINFO = Path("/proc/cpuinfo")

_warned_emulated = False  # the emulated-bf16 warning is shown once per process


# ---------------------------------------------------------------------------------------------
# Device and autocast


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> this process's CUDA device if there is one, else CPU."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device={name}: CUDA is not available on this machine")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def autocast(device: torch.device, precision: str):
    """bf16 autocast (CPU and GPU), fp16 autocast (GPU), or nothing for fp32.

    ``precision`` is resolved for the machine (:func:`resolve_precision`), never ``auto``.
    """
    assert precision in ("fp32", "bf16", "fp16"), f"unresolved precision {precision!r}"
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Precision


@dataclass(frozen=True)
class CpuBf16:
    """Whether this CPU does bf16 matmuls natively, and how that was found out."""

    native: bool
    features: tuple[str, ...]  # the bf16 features found, e.g. ("amx_bf16", "avx512_bf16")
    source: str  # "torch.cpu.get_capabilities", "torch.cpu._is_*", "/proc/cpuinfo" or "none"


@functools.cache
def cpu_bf16() -> CpuBf16:
    """Native bf16 support of this CPU (cached: the hardware does not change)."""
    for source, read in (
        ("torch.cpu.get_capabilities", _features_from_capabilities),
        ("torch.cpu._is_*", _features_from_private_helpers),
        (str(CPUINFO), _features_from_cpuinfo),
    ):
        features = read()
        if features is not None:
            found = tuple(sorted(features & BF16_FEATURES))
            return CpuBf16(bool(found), found, source)
    return CpuBf16(False, (), "none")


def _features_from_capabilities() -> set[str] | None:
    """The true flags of ``torch.cpu.get_capabilities()`` (public since torch 2.9)."""
    get = getattr(torch.cpu, "get_capabilities", None)
    if get is None:
        return None
    try:
        return {k for k, v in get().items() if v is True}
    except Exception:  # a torch build whose cpuinfo cannot read this CPU: try the next source
        return None


def _features_from_private_helpers() -> set[str] | None:
    """x86 only: torch's private helpers (they may move between versions, hence the guard)."""
    avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if avx512_bf16 is None or amx is None or platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    # AMX tiles come with AMX-BF16 on every CPU that has them (Sapphire Rapids and later).
    return {name for name, has in (("avx512_bf16", avx512_bf16()), ("amx_bf16", amx())) if has}


def _features_from_cpuinfo() -> set[str] | None:
    """The first ``flags`` (x86) or ``Features`` (Arm) line of ``/proc/cpuinfo``."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return None
    return cpuinfo_flags(text)


def cpuinfo_flags(text: str) -> set[str] | None:
    """The CPU flags in the text of ``/proc/cpuinfo``; None when it has no flags line."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return set(value.split())
    return None


def cuda_bf16(device: torch.device) -> bool:
    """Whether the CUDA device ``device`` does bf16 natively (not torch's emulation check,
    which also says yes on a T4 or V100, where bf16 runs slower than fp32)."""
    if torch.version.hip:
        return True
    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.cuda.get_device_properties(index).major >= 8


def resolve_precision(requested: str, device: torch.device, what: str = "train.precision") -> str:
    """The autocast precision to run: ``fp32``, ``bf16`` or ``fp16``.

    Args:
        requested: ``auto``, ``fp32``, ``bf16`` or ``fp16``.
        device: where the model runs.
        what: the setting's name in messages (``train.precision``, ``--precision``).

    Raises:
        ValueError: an unknown precision, or fp16 on a device other than CUDA.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"{what}: must be one of {list(PRECISIONS)}, got {requested!r}")
    if requested == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if requested == "fp16" and device.type != "cuda":
        raise ValueError(f"{what}=fp16 needs a CUDA device; use auto or bf16 on {device.type}")
    if requested == "bf16" and device.type == "cpu" and not cpu_bf16().native:
        warn_emulated_bf16(what)
    return requested


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 matmuls natively (CUDA and CPU; other devices: no)."""
    if device.type == "cuda":
        return cuda_bf16(device)
    if device.type == "cpu":
        return cpu_bf16().native
    return False


def inference_precision(run_setting: str, flag: str | None, device: torch.device) -> str:
    """The precision of ``predict`` / ``evaluate``: ``--precision`` if given, else the run's
    ``train.precision`` resolved for this machine.

    A run trained in fp16 on a GPU and read on a CPU runs ``auto`` instead: fp16 is a
    GPU-only training setting, not a statement about the model.
    """
    if flag is not None:
        return resolve_precision(flag, device, "--precision")
    if run_setting == "fp16" and device.type != "cuda":
        run_setting = "auto"
    return resolve_precision(run_setting, device, "the run's train.precision")


def describe(requested: str, resolved: str, device: torch.device) -> str:
    """``bf16`` / ``bf16 (auto: CPU with native bf16: amx_bf16, avx512_bf16)`` for the log."""
    if requested != "auto":
        return resolved
    if device.type == "cpu":
        info = cpu_bf16()
        why = f"native bf16: {', '.join(info.features)}" if info.native else "no native bf16"
        return f"{resolved} (auto: CPU, {why})"
    return f"{resolved} (auto: {device.type})"


# ---------------------------------------------------------------------------------------------
# The cost of emulated bf16


def matmul_gflops(dtype: torch.dtype, n: int = 256, reps: int = 3, budget_s: float = 0.05) -> float:
    """Best GFLOP/s of an ``n x n`` by ``n x n`` CPU matmul in ``dtype`` over ``reps`` runs
    (fewer when one run exceeds ``budget_s``: emulated bf16 can be 100x slower)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
        if best > budget_s:
            break
    return 2 * n**3 / best / 1e9


def probe_bf16_cost() -> tuple[float, float]:
    """``(fp32, bf16)`` GFLOP/s of a 256^3 matmul here: about 10 ms where bf16 is native."""
    torch.mm(torch.ones(8, 8), torch.ones(8, 8))  # load the BLAS kernels before timing
    return matmul_gflops(torch.float32), matmul_gflops(torch.bfloat16)


def warn_emulated_bf16(what: str = "train.precision") -> None:
    """Warn (once per process) that bf16 on this CPU is emulated, with the measured cost."""
    global _warned_emulated
    if _warned_emulated:
        return
    _warned_emulated = True
    fp32, bf16 = probe_bf16_cost()
    cost = (
        f"~{fp32 / bf16:.0f}x slower than fp32"
        if bf16 < fp32
        else "no faster than fp32 in this probe"
    )
    warnings.warn(
        f"{what}=bf16 on a CPU without native bf16 (no AVX512-BF16 / AMX / Arm BF16): a bf16 "
        f"matmul ran at {bf16:.1f} GFLOP/s against {fp32:.1f} in fp32 here ({cost}); "
        "use precision auto or fp32",
        RuntimeWarning,
        stacklevel=3,
    )
