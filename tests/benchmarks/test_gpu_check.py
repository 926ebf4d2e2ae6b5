"""benchmarks/gpu_check.py: it stops with a message where there is no GPU, and its CPU smoke
mode runs every part (peak, FLOPs, flash check, steps, loader) on a tiny model."""

from __future__ import annotations

import gpu_check
import pytest
import torch


def test_no_cuda_device_is_a_clear_exit(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="gpu_check: no CUDA device here"):
        gpu_check.main([])


def test_cpu_smoke_mode_runs_every_part():
    result = gpu_check.main(["--device", "cpu", "--tiny", "--no-compile", "--workers", "1"])
    t = result["training"]
    assert t["peak_tflops"] > 0 and t["batch"] >= 1 and t["step_gflop_per_clip"] > 0
    assert t["flash_calls"] >= 2 * 2  # two streams x two layers of the tiny model
    assert t["eager"]["clips_per_s"] > 0 and 0 < t["eager"]["mfu"] < 1
    assert "compiled" not in t
    loader = result["loader"]
    assert loader["clips"] > 0 and loader["clips_per_s"][1] > 0


def test_the_flash_check_fails_when_attention_is_not_flash(monkeypatch):
    cfg = gpu_check.preset(tiny=True)
    step = gpu_check.build_step(cfg, 1, torch.device("cpu"), "fp32")
    monkeypatch.setattr(gpu_check, "FLASH_OPS", ("no_such_kernel",))
    with pytest.raises(RuntimeError, match="flash attention check failed"):
        gpu_check.check_flash(step)
