"""Checkpoints: one folder per checkpoint, written atomically.

Layout (``run/checkpoints/last/`` and ``run/checkpoints/best/``)::

    model.safetensors   the weights (plain state dict of the unwrapped model)
    state.pt            optimizer, scheduler, scaler, epoch, step, RNG states, best metric,
                        the resolved config dict and the class list

A checkpoint is first written to a hidden temporary folder beside its target, every file is
fsynced, then the folder is renamed into place. A folder cannot be renamed over a non-empty one,
so the old checkpoint is first renamed to ``.<name>.old`` and removed afterwards; a crash in the
gap between the two renames leaves ``.<name>.old``, which :func:`resolve_checkpoint` falls back to.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

WEIGHTS = "model.safetensors"
STATE = "state.pt"


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


def save_checkpoint(directory: str | Path, model: nn.Module, state: dict[str, Any]) -> Path:
    """Write ``model``'s weights and ``state`` to ``directory`` atomically.

    Args:
        directory: the checkpoint folder (created, or replaced as a whole).
        model: the unwrapped model (not DDP / compiled wrappers).
        state: anything ``torch.save`` stores with ``weights_only``-loadable types.

    Returns:
        ``directory`` as a Path.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.tmp"
    old = directory.parent / f".{directory.name}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, tmp / WEIGHTS, metadata={"format": "pt"})
    torch.save(state, tmp / STATE)
    for f in (tmp / WEIGHTS, tmp / STATE, tmp):
        _fsync(f)
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(directory, old)
    os.replace(tmp, directory)
    _fsync(directory.parent)
    shutil.rmtree(old, ignore_errors=True)
    return directory


def resolve_checkpoint(path: str | Path, which: str = "best") -> Path:
    """Find a checkpoint folder from a run directory, a checkpoint folder or a weights file.

    Args:
        path: ``RUN_DIR`` (uses ``RUN_DIR/checkpoints/<which>``), a checkpoint folder, or its
            ``model.safetensors``.
        which: ``best`` or ``last`` when ``path`` is a run directory.

    Raises:
        FileNotFoundError: nothing usable there.
    """
    p = Path(path)
    if p.is_file() and p.name == WEIGHTS:
        p = p.parent
    candidates = [p, p / "checkpoints" / which]
    for c in candidates:
        if (c / WEIGHTS).is_file():
            return c
        old = c.parent / f".{c.name}.old"  # interrupted between the two renames
        if (old / WEIGHTS).is_file():
            return old
    raise FileNotFoundError(
        f"{path}: no checkpoint found (expected {p / 'checkpoints' / which / WEIGHTS} "
        f"or {p / WEIGHTS})"
    )


def load_weights(directory: str | Path, model: nn.Module, strict: bool = True) -> None:
    """Load ``directory/model.safetensors`` into ``model``."""
    path = Path(directory) / WEIGHTS
    try:
        weights = load_file(path)
    except (OSError, SafetensorError) as e:  # truncated / not a safetensors file
        raise ValueError(f"{path}: unreadable checkpoint weights ({e})") from e
    model.load_state_dict(weights, strict=strict)


def load_state(directory: str | Path) -> dict[str, Any]:
    """``directory/state.pt`` (optimizer, scheduler, epoch, RNG, config ...)."""
    path = Path(directory) / STATE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint state file missing")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated / corrupt: RuntimeError, EOFError, struct.error ...
        raise ValueError(f"{path}: unreadable checkpoint state ({e})") from e
