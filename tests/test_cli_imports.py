"""The command line answers at once: ``--help`` and argument or config errors run without torch,
timm, PyAV, numpy or the data stack (checked from ``python -X importtime``'s list of every module
a process imports, not by timing); ``import mbt`` alone does not import torch either, while the
documented names (``mbt.MBT``, ``mbt.load_audio`` ...) still work."""

from __future__ import annotations

import subprocess
import sys

import pytest

import mbt

HEAVY = (
    "torch", "torchvision", "timm", "av", "numpy", "matplotlib", "safetensors",
    "huggingface_hub", "PIL", "tqdm", "msgpack",
)  # fmt: skip
# All the mbt modules parsing needs: the entry point, the parser, the config and its file writer.
PARSING = {
    "mbt",
    "mbt.__main__",
    "mbt.cli",
    "mbt.commands_model",
    "mbt.config",
    "mbt.errors",
    "mbt.files",
}


def imported_modules(*args: str, cwd=None) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``python -X importtime ARGS``; its result and every module it imported."""
    cmd = [sys.executable, "-X", "importtime", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=cwd)
    names = set()
    other = []
    for line in r.stderr.splitlines():
        if line.startswith("import time:"):
            name = line.rpartition("|")[2].strip()
            if name != "imported package":
                names.add(name)
        else:
            other.append(line)
    r.stderr = "\n".join(other)
    return r, names


def _heavy(names: set[str]) -> list[str]:
    return sorted(n for n in names if n.split(".")[0] in HEAVY)


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["--help"], 0, ""),
        (["train", "--help"], 0, ""),
        (["convert", "scenic", "--help"], 0, ""),
        (["train", "--config", "demo", "train.lr=abc"], 2, "mbt: error: train.lr: expected"),
        (["train", "--config", "demo", "train.nope=1"], 2, "mbt: error: unknown config key(s)"),
        (["train"], 2, "mbt: error: --config CONFIG.yaml"),
        (["prepare", "data", "--out", "c", "--config", "nope.yaml"], 2, "mbt: error: "),
        (["evaluate", "run", "--precision", "fp64"], 2, "invalid choice: 'fp64'"),
    ],
)
def test_help_and_user_errors_import_nothing_heavy(args, status, message, tmp_path):
    r, names = imported_modules("-m", "mbt", *args, cwd=tmp_path)
    assert r.returncode == status, r.stderr
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert not _heavy(names), f"mbt {' '.join(args)} imported {_heavy(names)}"
    ours = {n for n in names if n.split(".")[0] == "mbt"}
    assert ours <= PARSING, sorted(ours - PARSING)


def test_the_check_sees_heavy_imports():
    """The same check on a command that does import torch finds it (so it can fail)."""
    _, names = imported_modules("-c", "import mbt; mbt.MBT")
    assert "torch" in _heavy(names) and "timm" in _heavy(names)


def test_import_mbt_is_light_and_the_documented_names_work():
    _, names = imported_modules("-c", "import mbt; from mbt import load_config, ModelConfig")
    assert not _heavy(names), _heavy(names)
    from mbt.data.audio import load_audio, log_mel
    from mbt.loading import load_model
    from mbt.model import MBT

    assert mbt.MBT is MBT and mbt.load_audio is load_audio and mbt.log_mel is log_mel
    assert mbt.load_model is load_model and mbt.MBTConfig is mbt.ModelConfig
    assert set(mbt.__all__) <= set(dir(mbt))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mbt.nope  # noqa: B018
