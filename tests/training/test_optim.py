"""Parameter groups and the per-step schedule."""

import math

import pytest
import torch
from torch import nn

from mbt.config import TrainConfig
from mbt.model import MBT
from mbt.training.optim import build_optimizer, build_scheduler, lr_factor, param_groups

from ..conftest import tiny_model_config


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.pos_embed = nn.Parameter(torch.zeros(1, 3, 4))
        self.proj = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.frozen = nn.Parameter(torch.zeros(4, 4), requires_grad=False)

    def no_weight_decay(self):
        return {"cls_token", "pos_embed"}


def test_weight_decay_only_on_weights():
    groups = param_groups(_Net(), 0.05)
    by_wd = {g["weight_decay"]: set(g["names"]) for g in groups}
    assert by_wd[0.05] == {"proj.weight"}
    assert by_wd[0.0] == {"cls_token", "pos_embed", "proj.bias", "norm.weight", "norm.bias"}


def test_weight_decay_groups_of_the_real_model():
    model = MBT(tiny_model_config())
    groups = {g["weight_decay"]: g["names"] for g in param_groups(model, 0.1)}
    decayed = groups[0.1]
    params = dict(model.named_parameters())
    assert all(params[n].ndim >= 2 for n in decayed)
    assert not any("token" in n or "pos" in n or n == "bottleneck" for n in decayed)
    assert any(n.endswith("qkv.weight") for n in decayed)
    assert len(decayed) + len(groups[0.0]) == len(params)


@pytest.mark.parametrize(
    "name,cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)]
)
def test_build_optimizer(name, cls):
    opt = build_optimizer(_Net(), TrainConfig(optimizer=name, lr=0.5, momentum=0.9))
    assert isinstance(opt, cls) and opt.param_groups[0]["lr"] == 0.5


def test_warmup_cosine_per_step():
    cfg = TrainConfig(optimizer="sgd", lr=1.0, schedule="cosine", warmup_epochs=2.5, epochs=10)
    opt = build_optimizer(_Net(), cfg)
    sched = build_scheduler(opt, cfg, steps_per_epoch=4)  # 40 steps, warm-up 10
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # linear ramp
    assert lrs[10] == pytest.approx(1.0)  # cosine starts at the peak
    assert lrs[25] == pytest.approx(0.5 * (1 + math.cos(math.pi * 15 / 30)))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))  # monotone decay
    assert lr_factor(40, 40, 10, "cosine") == pytest.approx(0.0)
    assert lr_factor(5, 40, 0, "constant") == 1.0
