"""Collective helpers of :mod:`mbt.training.distributed`."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as tdist

from mbt.training import distributed as dist


@pytest.mark.gpu  # NCCL needs a CUDA device
def test_all_reduce_sum_of_a_cpu_tensor_under_nccl(tmp_path):
    """The loop sums CPU tensors (loss totals, the non-finite flag); NCCL only reduces CUDA
    tensors, so a multi-GPU run must not fail on them."""
    torch.cuda.set_device(0)
    store = tdist.FileStore(str(tmp_path / "store"), 1)
    tdist.init_process_group("nccl", store=store, rank=0, world_size=1)
    try:
        t = torch.tensor([1.5, 2.0, 3.0], dtype=torch.float64)
        out = dist.all_reduce_sum(t)
        assert out is t and out.device.type == "cpu"
        torch.testing.assert_close(out, torch.tensor([1.5, 2.0, 3.0], dtype=torch.float64))
    finally:
        dist.cleanup()
