"""Checkpoints: one folder per checkpoint, written atomically.

Layout (``run/checkpoints/last/`` and ``run/checkpoints/best/``): a model folder, as
``save_pretrained`` writes it (so every command and ``MBT.from_pretrained`` read it alone), plus
the training state::

    config.json         the model config, the class names and the run's data config
    model.safetensors   the weights (plain state dict of the unwrapped model)
    state.pt            optimizer, scheduler, scaler, epoch, step, RNG states, best metric,
                        the resolved config dict and the class list

A checkpoint is first written to a hidden temporary folder beside its target, every file is
fsynced, then the folder is renamed into place. A folder cannot be renamed over a non-empty one,
so the old checkpoint is first renamed to ``.<name>.old`` and removed afterwards; a crash in the
gap between the two renames leaves ``.<name>.old``, which :func:`resolve_checkpoint` falls back to.

The file names, the folder resolution, the config writer and the readers live in
:mod:`mbt.model.hub` (the model layer never imports training); they are re-exported here.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mbt.config import DataConfig, from_dict
from mbt.model.hub import CONFIG, STATE, WEIGHTS, load_weights, write_pretrained
from mbt.model.hub import read_state as load_state
from mbt.model.hub import resolve_folder as resolve_checkpoint

__all__ = [
    "CONFIG", "STATE", "WEIGHTS", "load_state", "load_weights", "resolve_checkpoint",
    "rng_state", "save_checkpoint", "set_rng_state",
]  # fmt: skip


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) generator states, in a form ``torch.load`` reads with
    ``weights_only=True`` (tensors, ints, tuples)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    directory: str | Path,
    model: nn.Module,
    state: dict[str, Any],
    *,
    class_names: list[str] | None = None,
    data: DataConfig | None = None,
) -> Path:
    """Write ``model`` as a model folder plus ``state`` to ``directory``, atomically.

    Args:
        directory: the checkpoint folder (created, or replaced as a whole).
        model: the unwrapped model (not DDP / compiled wrappers), with its ``cfg``.
        state: anything ``torch.save`` stores with ``weights_only``-loadable types.
        class_names: the names written into ``config.json``; default ``state["classes"]``.
        data: the data config written into ``config.json``; default the data part of
            ``state["config"]`` (the resolved run config the training loop stores).

    Returns:
        ``directory`` as a Path.
    """
    directory = Path(directory)
    if class_names is None:
        class_names = state.get("classes")
    if data is None and "config" in state:
        data = from_dict(DataConfig, state["config"]["data"], prefix="data.")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.tmp"
    old = directory.parent / f".{directory.name}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    files = write_pretrained(model, tmp, class_names=class_names, data=data)
    torch.save(state, tmp / STATE)
    for f in (*files, tmp / STATE, tmp):
        _fsync(f)
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(directory, old)
    os.replace(tmp, directory)
    _fsync(directory.parent)
    shutil.rmtree(old, ignore_errors=True)
    return directory
