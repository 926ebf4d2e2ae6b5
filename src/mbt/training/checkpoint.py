"""Checkpoints: one folder per checkpoint, written atomically, with checksums.

Layout (``run/checkpoints/last/`` and ``run/checkpoints/best/``): a model folder, as
``save_pretrained`` writes it (so every command and ``MBT.from_pretrained`` read it alone), plus
the training state and the checksums of all three::

    config.json         the model config, the class names and the run's data config
    model.safetensors   the weights (plain state dict of the unwrapped model)
    state.pt            optimizer, scheduler, scaler, epoch, step, RNG states, best metric,
                        the resolved config dict and the class list
    SHA256SUMS          sha256 of the three files (``sha256sum -c SHA256SUMS`` reads it)

A checkpoint is first written to a hidden temporary folder beside its target, every file is
fsynced, then the folder is renamed into place. A folder cannot be renamed over a non-empty one,
so the old checkpoint is first renamed to ``.<name>.old`` and removed afterwards; a crash in the
gap between the two renames leaves ``.<name>.old``, which
:func:`mbt.training.rundir.resolve_folder` falls back to.
A full disk removes the temporary folder and raises a one-line ``DiskFullError``; the previous
checkpoint is untouched.

Which copy a resumed run starts from (:func:`resume_point`): ``last``; if it is missing or
damaged, ``.last.old`` (an interrupted save); else ``best``, an earlier epoch with its complete
state, from which the run replays the epochs after it exactly.

The model folder's two files and their writer are :mod:`mbt.model.folder`'s (the model layer
never imports training); ``state.pt``, the checksums over all three and the ``.old`` copies are
this module's. Where a run keeps its checkpoints is :mod:`mbt.training.rundir`'s.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mbt.config import DataConfig, from_dict
from mbt.files import SUMS, DiskFullError, atomic_path, damaged_files, fsync_dir, write_checksums
from mbt.model.folder import CONFIG, WEIGHTS, write_pretrained
from mbt.model.safe_load import torch_load

STATE = "state.pt"  # optimizer, scheduler, RNG, RunState ...: what only training reads
FILES = (CONFIG, WEIGHTS, STATE)  # what a training checkpoint holds (and SHA256SUMS covers)
FULL = "the previous checkpoint is intact"  # the end of a disk-full message


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


def read_state(folder: str | Path) -> dict[str, Any]:
    """A training checkpoint's ``state.pt`` (optimizer, scheduler, epoch, RNG, config ...).

    Read with ``weights_only=True``: tensors and plain containers, never code.

    Raises:
        FileNotFoundError: no ``state.pt``.
        ValueError: a truncated, corrupt or untrusted file, or one that differs from the
            folder's ``SHA256SUMS``.
    """
    path = Path(folder) / STATE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint state file missing")
    if damaged_files(folder, (STATE,)):
        raise ValueError(f"{path}: damaged checkpoint state (it differs from {SUMS})")
    try:
        return torch_load(path)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    except Exception as e:  # truncated / corrupt: RuntimeError, EOFError, struct.error ...
        raise ValueError(f"{path}: unreadable checkpoint state ({e})") from e


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

    Raises:
        DiskFullError: no space left; the temporary folder is gone, the previous checkpoint
            in ``directory`` is intact.
    """
    directory = Path(directory)
    if class_names is None:
        class_names = state.get("classes")
    if data is None and "config" in state:
        data = from_dict(DataConfig, state["config"]["data"], prefix="data.")

    def write(tmp: Path) -> None:
        write_pretrained(model, tmp, class_names=class_names, data=data)
        # Into a file object: on a full disk torch.save's RuntimeError then carries the OSError
        # (ENOSPC) as its context; saving to a path, it says only "unexpected pos".
        with atomic_path(tmp / STATE) as path, open(path, "wb") as f:
            torch.save(state, f)

    return _install(directory, write)


def copy_checkpoint(source: str | Path, directory: str | Path) -> Path:
    """Copy the checkpoint folder ``source`` to ``directory`` (replaced atomically, as
    :func:`save_checkpoint` does)."""
    source = Path(source)

    def write(tmp: Path) -> None:
        tmp.mkdir()
        for name in FILES:
            if (source / name).is_file():
                with atomic_path(tmp / name) as f:
                    shutil.copyfile(source / name, f)

    return _install(Path(directory), write)


def _install(directory: Path, write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` fills a temporary folder beside ``directory``; its checksums are added,
    then it replaces ``directory`` (old folder renamed to ``.<name>.old``, removed last)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.tmp"
    old = directory.parent / f".{directory.name}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
        write_checksums(tmp, [n for n in FILES if (tmp / n).is_file()])
        fsync_dir(tmp)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, DiskFullError):  # name the checkpoint's file, not the temporary one
            raise DiskFullError(directory / e.path.name, FULL) from None
        raise
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(directory, old)
    os.replace(tmp, directory)
    fsync_dir(directory.parent)
    shutil.rmtree(old, ignore_errors=True)
    return directory


# ---------------------------------------------------------------------------------------------
# Which checkpoint to resume from


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint a resumed run starts from, and why it is not ``last`` (if it is not)."""

    folder: Path
    notes: tuple[str, ...] = ()  # one line per copy passed over (missing or damaged)


def checkpoint_problem(folder: Path) -> str | None:
    """Why the training checkpoint ``folder`` cannot be resumed from (None: it can)."""
    if not (folder / WEIGHTS).is_file():
        return "missing"
    if not (folder / SUMS).is_file():  # written before checksums: can it be read at all?
        try:
            read_state(folder)
        except (FileNotFoundError, ValueError) as e:
            return str(e)
        return None
    gone = [n for n in FILES if not (folder / n).is_file()]
    if gone:
        return f"incomplete (no {', '.join(gone)})"
    bad = damaged_files(folder, FILES)
    return f"damaged ({', '.join(bad)} differs from {SUMS})" if bad else None


def checkpoint_epoch(folder: Path) -> int | None:
    """The epoch a training checkpoint was written after (None: no readable intact state)."""
    try:
        return int(read_state(folder)["epoch"])
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        return None


def resume_point(checkpoints: Path) -> ResumePoint | None:
    """The first intact one of ``last``, ``.last.old`` and ``best`` in ``checkpoints``.

    Returns:
        None when none of them exists (nothing to resume).

    Raises:
        ValueError: they exist but every one is damaged.
    """
    notes = []
    for name in ("last", ".last.old", "best"):
        folder = checkpoints / name
        why = checkpoint_problem(folder)
        if why is None:
            return ResumePoint(folder, tuple(notes))
        if why != "missing" or name == "last":
            notes.append(f"{folder}: {why}")
    if all(n.endswith(": missing") for n in notes):
        return None
    raise ValueError(f"no intact checkpoint to resume from: {'; '.join(notes)}")
