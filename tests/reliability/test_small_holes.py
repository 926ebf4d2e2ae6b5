"""Smaller holes: non-finite config numbers, overrides after options, untrusted pickles, and
``mbt prepare --retry-failed``."""

from __future__ import annotations

import json

import pytest
import torch

from mbt.cli import main
from mbt.config import load_config
from mbt.training.checkpoint import read_state
from tests.reliability.test_kill_at_every_write import _small_data
from tests.training.conftest import TINY


@pytest.mark.parametrize(
    "override",
    [
        "train.lr=.inf", "train.lr=inf", "train.lr=.nan", "train.weight_decay=.inf",
        "train.warmup_epochs=.inf", "train.grad_clip=.inf", "train.mixup_alpha=.inf",
        "model.mlp_ratio=.inf", "data.audio_mean=.nan", "data.audio_std=.inf",
        "data.crop_scale=[0.5, .nan]",
    ],
)  # fmt: skip
def test_non_finite_numbers_are_refused_when_the_config_is_read(override, capsys):
    key = override.split("=")[0]
    with pytest.raises(ValueError, match=f"^{key}: must be a finite number"):
        load_config("demo", [override])
    assert main(["train", "--config", "demo", "--data", ".", override]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mbt: error: {key}: must be a finite number") and err.count("\n") == 1


def test_overrides_may_follow_the_options_of_every_command(demo_root, tmp_path, capsys):
    data = _small_data(demo_root, tmp_path / "data")
    cache = tmp_path / "cache"
    args = ["prepare", str(data), "--out", str(cache), "--config", "demo", "data.resize_short=40"]
    args.append("data.val_fraction=0.4")  # the splits are the cache's: those TINY trains with
    assert main([*args, "--timeout", "60", "model.mel_bins=32"]) == 0
    settings = json.loads((cache / "index.json").read_text())["settings"]
    assert settings["short_side"] == 40 and settings["mel_bins"] == 32
    # train: overrides before, between and after options, applied in command-line order.
    run = tmp_path / "run"
    train = ["train", "model.width=16", "--config", "demo", *TINY, "train.epochs=1"]
    after = [f"data.cache={cache}", "data.resize_short=40", "model.mel_bins=32"]
    assert main([*train, "--out", str(run), *after]) == 0
    saved = load_config(run / "config.yaml")
    assert saved.model.width == 32 and saved.train.epochs == 1  # TINY's width=32 came later
    assert saved.model.mel_bins == 32 and saved.data.cache == str(cache)
    capsys.readouterr()
    with pytest.raises(SystemExit):  # not key=value: argparse's usage error, as before
        main(["prepare", str(data), "--out", str(cache), "stray"])
    assert "unrecognized arguments: stray" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", str(run), "model.width=8"])  # evaluate takes no overrides


class _RunsCode:
    def __reduce__(self):
        return (print, ("this must never be printed",))


def test_an_untrusted_pickle_is_refused_without_advice_to_load_it_anyway(
    tmp_path, demo_root, capsys
):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    torch.save({"epoch": 1, "hook": _RunsCode()}, folder / "state.pt")
    with pytest.raises(ValueError) as info:
        read_state(folder)
    message = str(info.value)
    assert message.startswith(f"{folder / 'state.pt'}: not a trusted checkpoint")
    assert "the Python object print;" in message and "weights_only" not in message
    assert "\n" not in message
    # The same file as ViT weights to start from (model.init): one line, no such advice.
    torch.save({"model": _RunsCode()}, tmp_path / "vit.pth")
    data = _small_data(demo_root, tmp_path / "data")
    args = ["train", "--config", "demo", "--data", str(data), *TINY, "data.val_fraction=0.5"]
    capsys.readouterr()
    assert main([*args, f"model.init={tmp_path / 'vit.pth'}", "--out", str(tmp_path / "r")]) == 2
    out, err = capsys.readouterr()
    assert "not a trusted checkpoint" in err and "weights_only" not in err
    assert err.count("\n") == 1 and "must never be printed" not in out + err


def test_prepare_retry_failed_decodes_the_failed_files_again(demo_root, tmp_path, capsys):
    data = _small_data(demo_root, tmp_path / "data")
    cache = tmp_path / "cache"
    prepare = ["prepare", str(data), "--out", str(cache), "--config", "demo"]
    assert main([*prepare, "--timeout", "0.001"]) == 0  # far too short: every file fails
    failed = json.loads((cache / "index.json").read_text())["failed"]
    assert len(failed) == 4 and all("timed out" in f["reason"] for f in failed.values())
    assert main(prepare) == 0  # unchanged files that failed stay failed (a hang costs time)
    assert len(json.loads((cache / "index.json").read_text())["failed"]) == 4
    assert main([*prepare, "--retry-failed"]) == 0
    index = json.loads((cache / "index.json").read_text())
    assert index["failed"] == {} and len(index["clips"]) == 4
