"""The runtime: ``train.precision=auto`` and the checks around bf16, with the hardware
monkeypatched (a GPU with and without native bf16, a CPU with and without it, each source of the
CPU's flags); autocast; the device choice."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mbt import runtime as P
from mbt.config import TrainConfig, load_config

CPU, CUDA = torch.device("cpu"), torch.device("cuda:0")

X86_CPUINFO = """processor\t: 0
model name\t: Some CPU
flags\t\t: fpu sse2 avx2 avx512f {extra}
"""
ARM_CPUINFO = """processor\t: 0
Features\t: fp asimd {extra}
CPU implementer\t: 0x41
"""


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    """No cached CPU answer and no warning shown yet, in and after each test."""
    detect = P.cpu_bf16  # tests may replace it; clear the real one's cache afterwards
    detect.cache_clear()
    monkeypatch.setattr(P, "_warned_emulated", False)
    yield
    detect.cache_clear()


def _cpu(monkeypatch, native: bool) -> None:
    features = ("amx_bf16",) if native else ()
    monkeypatch.setattr(P, "cpu_bf16", lambda: P.CpuBf16(native, features, "test"))


def _gpu(monkeypatch, major: int) -> None:
    props = SimpleNamespace(major=major)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    monkeypatch.setattr(torch.version, "hip", None)


def test_auto_is_the_default_and_a_config_value():
    assert TrainConfig().precision == "auto"
    assert load_config("mbt_b16_paper").train.precision == "auto"
    assert load_config("pjzuf_c101").train.precision == "auto"
    with pytest.raises(ValueError, match="train.precision"):
        TrainConfig(precision="int8")


@pytest.mark.parametrize(
    ("device", "gpu_major", "cpu_native", "want"),
    [
        (CUDA, 9, False, "bf16"),  # H100 on any host
        (CUDA, 8, False, "bf16"),  # A100
        (CUDA, 7, True, "fp32"),  # V100: no native bf16, and auto never picks fp16
        (CPU, 9, True, "bf16"),  # AVX512-BF16 / AMX CPU
        (CPU, 9, False, "fp32"),  # AVX2-only CPU, even on a machine with a GPU
    ],
)
def test_auto_resolves_per_device(monkeypatch, device, gpu_major, cpu_native, want):
    _gpu(monkeypatch, gpu_major)
    _cpu(monkeypatch, cpu_native)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto never warns
        assert P.resolve_precision("auto", device) == want


def test_explicit_settings_are_kept_and_fp16_needs_cuda(monkeypatch):
    _gpu(monkeypatch, 7)
    _cpu(monkeypatch, True)
    assert P.resolve_precision("fp32", CUDA) == "fp32"
    assert P.resolve_precision("fp16", CUDA) == "fp16"
    assert P.resolve_precision("bf16", CPU) == "bf16"
    with pytest.raises(ValueError, match=r"train.precision=fp16 needs a CUDA device"):
        P.resolve_precision("fp16", CPU)
    with pytest.raises(ValueError, match=r"--precision: must be one of"):
        P.resolve_precision("half", CPU, "--precision")


def test_explicit_bf16_on_a_cpu_without_it_warns_once_with_the_measured_cost(monkeypatch):
    _cpu(monkeypatch, False)
    calls = []

    def probe():
        calls.append(1)
        return 98.0, 0.7  # the AVX2-only EPYC

    monkeypatch.setattr(P, "probe_bf16_cost", probe)
    with pytest.warns(RuntimeWarning) as record:
        assert P.resolve_precision("bf16", CPU) == "bf16"
        assert P.resolve_precision("bf16", CPU) == "bf16"
        P.inference_precision("fp32", "bf16", CPU)
    assert len(record) == 1 and len(calls) == 1
    text = str(record[0].message)
    assert "train.precision=bf16" in text and "0.7 GFLOP/s against 98.0" in text
    assert "~140x slower" in text and "auto or fp32" in text


def test_explicit_bf16_where_native_does_not_warn(monkeypatch):
    _cpu(monkeypatch, True)
    monkeypatch.setattr(P, "probe_bf16_cost", lambda: pytest.fail("no probe where native"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert P.resolve_precision("bf16", CPU) == "bf16"


def test_inference_uses_the_flag_else_the_runs_setting(monkeypatch):
    _cpu(monkeypatch, True)
    assert P.inference_precision("fp32", None, CPU) == "fp32"  # the run's explicit choice
    assert P.inference_precision("auto", None, CPU) == "bf16"  # resolved for this machine
    assert P.inference_precision("fp32", "auto", CPU) == "bf16"  # the flag wins
    # fp16 was the GPU's training setting: a CPU runs auto instead of failing.
    assert P.inference_precision("fp16", None, CPU) == "bf16"
    with pytest.raises(ValueError, match=r"--precision=fp16 needs a CUDA device"):
        P.inference_precision("fp32", "fp16", CPU)
    _cpu(monkeypatch, False)
    assert P.inference_precision("fp16", None, CPU) == "fp32"


def test_cpu_flags_from_cpuinfo_text():
    assert P.cpuinfo_flags(X86_CPUINFO.format(extra="avx512_bf16 amx_tile amx_bf16")) >= {
        "avx512_bf16", "amx_bf16",
    }  # fmt: skip
    assert "bf16" in P.cpuinfo_flags(ARM_CPUINFO.format(extra="sve bf16 i8mm"))
    assert P.cpuinfo_flags("processor\t: 0\n") is None


@pytest.mark.parametrize(
    ("text", "native", "features"),
    [
        (
            X86_CPUINFO.format(extra="avx512_bf16 amx_tile amx_bf16"),
            True,
            ("amx_bf16", "avx512_bf16"),
        ),
        (X86_CPUINFO.format(extra="avx512_vnni"), False, ()),  # Ice Lake: AVX-512, no bf16
        (ARM_CPUINFO.format(extra="sve bf16"), True, ("bf16",)),  # Graviton 3
        (ARM_CPUINFO.format(extra="crc32"), False, ()),  # Graviton 2
    ],
)
def test_cpuinfo_is_the_last_fallback(monkeypatch, tmp_path, text, native, features):
    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    (tmp_path / "cpuinfo").write_text(text)
    monkeypatch.setattr(P, "CPUINFO", tmp_path / "cpuinfo")
    got = P.cpu_bf16()
    assert (got.native, got.features) == (native, features)
    assert got.source == str(tmp_path / "cpuinfo")


def test_torch_sources_come_first(monkeypatch):
    caps = {"architecture": "x86_64", "avx512_f": True, "avx512_bf16": False, "amx_bf16": True}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps, raising=False)
    got = P.cpu_bf16()
    assert got == P.CpuBf16(True, ("amx_bf16",), "torch.cpu.get_capabilities")

    P.cpu_bf16.cache_clear()  # an older torch: only the private helpers
    monkeypatch.delattr(torch.cpu, "get_capabilities")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(P.platform, "machine", lambda: "x86_64")
    assert P.cpu_bf16() == P.CpuBf16(False, (), "torch.cpu._is_*")


def test_this_machine_agrees_with_its_cpuinfo():
    """The torch source and /proc/cpuinfo agree here (where Linux has one)."""
    if not Path("/proc/cpuinfo").is_file():
        pytest.skip("no /proc/cpuinfo")
    flags = P.cpuinfo_flags(Path("/proc/cpuinfo").read_text()) or set()
    assert P.cpu_bf16().native == bool(flags & P.BF16_FEATURES)


def test_probe_measures_both_dtypes(monkeypatch):
    fp32, bf16 = P.probe_bf16_cost()
    assert fp32 > 0 and bf16 > 0
    # A run slower than the budget ends the repeats (emulated bf16 can take 50 ms a matmul).
    calls = []
    mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda a, b: calls.append(1) or mm(a, b))
    assert P.matmul_gflops(torch.float32, n=64, reps=5, budget_s=0.0) > 0
    assert len(calls) == 1
    assert P.matmul_gflops(torch.float32, n=64, reps=5, budget_s=10.0) > 0
    assert len(calls) == 6


def test_autocast_refuses_an_unresolved_precision():
    with pytest.raises(AssertionError, match="unresolved"):
        P.autocast(CPU, "auto")
    with P.autocast(CPU, "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with P.autocast(CPU, "fp32"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_pick_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert P.pick_device("auto") == CPU and P.pick_device("cpu") == CPU
    with pytest.raises(ValueError, match=r"train.device=cuda: CUDA is not available"):
        P.pick_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert P.pick_device("auto", local_rank=1) == torch.device("cuda:1")
    assert P.pick_device("cuda", local_rank=2) == torch.device("cuda:2")  # this process's GPU
    assert P.pick_device("cuda:0", local_rank=2) == CUDA  # an explicit index is kept
