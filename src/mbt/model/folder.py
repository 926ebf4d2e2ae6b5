"""A model folder: ``config.json`` + ``model.safetensors``, written and read in one format.

``save_pretrained``, ``mbt convert`` and every training checkpoint write the same two files::

    config.json         "model_type": "mbt", every ModelConfig field, and optionally
                        "class_names" (one per output, like HF's id2label), "data" (the
                        DataConfig the model was trained with: preprocessing travels with the
                        weights) and "info" (e.g. conversion provenance)
    model.safetensors   the weights (a plain state dict; loading never unpickles anything)
    SHA256SUMS          optional: when present, the two files above are checked against it
                        before they are used (``sha256sum -c SHA256SUMS`` checks them by hand)

This module knows these files and nothing of the run that may have written them: run
directories, ``checkpoints/best``, the ``.<name>.old`` copies and ``state.pt`` belong to
:mod:`mbt.training.rundir` and :mod:`mbt.training.checkpoint`, and :func:`mbt.loading.load_model`
reads every kind of source on top of both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from mbt.config import DataConfig, ModelConfig, from_dict, to_dict
from mbt.files import SUMS, atomic_path, damaged_files, write_atomic

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
MODEL_TYPE = "mbt"  # marks our config.json among other Hub formats
_META_KEYS = ("model_type", "class_names", "data", "info")


# ---------------------------------------------------------------------------------------------
# config.json


@dataclass(frozen=True)
class ConfigJson:
    """What a model folder's ``config.json`` says: the model config and what travels with it."""

    cfg: ModelConfig
    class_names: list[str] | None = None
    data: DataConfig | None = None  # None: written without the data config
    info: dict[str, Any] | None = None


def config_to_json(
    cfg: ModelConfig,
    class_names: list[str] | None = None,
    info: dict[str, Any] | None = None,
    data: DataConfig | None = None,
) -> dict[str, Any]:
    """The ``config.json`` dict: ``model_type``, every ModelConfig field, names, data, info.

    Raises:
        ValueError: ``class_names`` does not have one name per output class.
    """
    out: dict[str, Any] = {"model_type": MODEL_TYPE, **to_dict(cfg)}
    if class_names is not None:
        if len(class_names) != cfg.num_classes:
            raise ValueError(
                f"class_names: {len(class_names)} names for num_classes={cfg.num_classes}"
            )
        out["class_names"] = [str(n) for n in class_names]
    if data is not None:
        out["data"] = to_dict(data)
    if info:
        out["info"] = info
    return out


def config_from_json(data: dict[str, Any], source: str = CONFIG) -> ConfigJson:
    """Inverse of :func:`config_to_json`; unknown keys are errors naming ``source``."""
    if data.get("model_type", MODEL_TYPE) != MODEL_TYPE:
        raise ValueError(f"{source}: model_type {data['model_type']!r} is not an MBT model")
    fields = {k: v for k, v in data.items() if k not in _META_KEYS}
    try:
        cfg = from_dict(ModelConfig, fields, prefix="model.")
        data_cfg = from_dict(DataConfig, data["data"], prefix="data.") if "data" in data else None
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None
    names = data.get("class_names")
    return ConfigJson(cfg, None if names is None else list(names), data_cfg, data.get("info"))


def read_config(path: Path) -> ConfigJson:
    """Read and check ``path`` (a ``config.json``)."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return config_from_json(data, str(path))


# ---------------------------------------------------------------------------------------------
# Writing and finding a folder


def write_pretrained(
    model: nn.Module,
    directory: str | Path,
    *,
    class_names: list[str] | None = None,
    data: DataConfig | None = None,
    info: dict[str, Any] | None = None,
) -> list[Path]:
    """Write ``config.json`` and ``model.safetensors`` of ``model`` (which has a ``cfg``), each
    atomically (a temporary name, fsync, rename).

    Returns:
        The two written files.

    Raises:
        DiskFullError: no space left; the files that were there before are intact.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    config = config_to_json(model.cfg, class_names, info, data)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out / WEIGHTS) as tmp:
        save_file(sd, str(tmp), metadata={"format": "pt"})
    write_atomic(out / CONFIG, json.dumps(config, indent=2) + "\n")
    return [out / WEIGHTS, out / CONFIG]


def damaged(folder: Path) -> list[str]:
    """The files of ``folder`` that differ from its ``SHA256SUMS`` ([] without checksums)."""
    return damaged_files(folder, (WEIGHTS, CONFIG))


def model_folder(path: str | Path) -> Path:
    """The model folder ``path`` names (the folder, or its ``model.safetensors``), checked.

    Raises:
        FileNotFoundError: no ``model.safetensors`` there.
        ValueError: the weights or the config differ from the folder's ``SHA256SUMS``.
    """
    p = Path(path).expanduser()
    if p.is_file() and p.name == WEIGHTS:
        p = p.parent
    if not (p / WEIGHTS).is_file():
        raise FileNotFoundError(
            f"{path}: neither a model directory ({CONFIG} + {WEIGHTS}) nor its {WEIGHTS}"
        )
    bad = damaged(p)
    if bad:
        raise ValueError(f"{p}: damaged model folder ({', '.join(bad)} differs from {SUMS})")
    return p


# ---------------------------------------------------------------------------------------------
# Building the model


def load_weights(path: str | Path, model: nn.Module, strict: bool = True) -> None:
    """Load a folder's ``model.safetensors`` (or that file itself) into ``model``.

    Raises:
        ValueError: the file is unreadable, or its tensors do not fit the model.
    """
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS
    try:
        weights = load_file(str(path))
    except (OSError, SafetensorError) as e:  # truncated / not a safetensors file
        raise ValueError(f"{path}: unreadable checkpoint weights ({e})") from e
    try:
        model.load_state_dict(weights, strict=strict)
    except RuntimeError as e:  # missing / unexpected keys, size mismatches: one line for the CLI
        why = " ".join(str(e).split())
        raise ValueError(f"{path}: weights do not fit the config ({why[:400]})") from None


def build(
    model_cls: type[nn.Module],
    config: ConfigJson,
    folder: Path,
    *,
    source: str | Path,
    strict: bool = True,
    config_changes: dict[str, Any] | None = None,
) -> nn.Module:
    """``model_cls(cfg)`` with the weights of ``folder`` and ``class_names`` set (CPU, as built).

    Args:
        config: the model config and class names (``config.json``'s, or what a caller knows
            better, e.g. a run's ``classes.json``).
        source: what the user named, for messages.
        config_changes: ModelConfig fields to override; they must keep the weight shapes.

    Raises:
        ValueError: the class names do not fit the head, or the weights do not fit the config.
    """
    cfg = config.cfg
    if config.class_names is not None and len(config.class_names) != cfg.num_classes:
        raise ValueError(
            f"{source}: {len(config.class_names)} class names for a {cfg.num_classes}-class model"
        )
    if config_changes:
        cfg = from_dict(ModelConfig, {**to_dict(cfg), **config_changes}, prefix="model.")
    model = model_cls(cfg)  # type: ignore[call-arg]
    load_weights(folder / WEIGHTS, model, strict=strict)
    model.class_names = config.class_names
    return model
