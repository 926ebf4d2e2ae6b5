"""What a benchmark ran on: the line above every table of ``benchmarks/RESULTS.md``.

The CPU model, its cores, torch's CPU capability (the vector ISA its kernels use), whether bf16
is native (AVX512-BF16 / AMX / Arm BF16: :func:`mbt.runtime.cpu_bf16`), torch's
threads and the load average (a busy machine's timings are not comparable).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

from mbt.runtime import cpu_bf16


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else torch's cpuinfo, else the platform)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    caps = getattr(torch.cpu, "get_capabilities", None)
    name = caps().get("cpu_name") if caps is not None else None
    return str(name or platform.processor() or platform.machine())


def cores() -> int:
    """CPU cores this process may use."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def describe() -> dict[str, Any]:
    """The machine as a dict (also stored beside the numbers)."""
    bf16 = cpu_bf16()
    return {
        "cpu": cpu_name(),
        "cores": cores(),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_native": bf16.native,
        "bf16_features": list(bf16.features),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_avg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def line(info: dict[str, Any] | None = None) -> str:
    """One line: ``Intel Xeon ..., 2 cores, capability AVX512, bf16 native (amx_bf16, ...), ...``"""
    m = info or describe()
    bf16 = f"native ({', '.join(m['bf16_features'])})" if m["bf16_native"] else "not native"
    load = f", load average {m['load_avg']:.1f}" if m.get("load_avg") is not None else ""
    return (
        f"{m['cpu']}, {m['cores']} cores, capability {m['capability']}, bf16 {bf16}, "
        f"{m['threads']} torch threads, torch {m['torch']}{load}"
    )
