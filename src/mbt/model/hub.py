"""Model folders: one format written everywhere, one loader that reads every kind of source.

A model folder (written by ``save_pretrained``, by ``mbt convert`` and, with ``state.pt`` beside
it, by every training checkpoint) holds::

    config.json         "model_type": "mbt", every ModelConfig field, and optionally
                        "class_names" (one per output, like HF's id2label), "data" (the
                        DataConfig the model was trained with: preprocessing travels with the
                        weights) and "info" (e.g. conversion provenance)
    model.safetensors   the weights (a plain state dict; loading never unpickles anything)
    state.pt            training checkpoints only: optimizer, scheduler, RNG, epoch, ...
    SHA256SUMS          training checkpoints only: the checksums of the three files above
                        (``sha256sum -c SHA256SUMS`` checks them by hand)

:func:`load_model` is the one way in. It reads

    a run directory       RUN/config.yaml + RUN/checkpoints/<which>/ (or the
                          RUN/checkpoints/.<which>.old left by an interrupted save)
    a checkpoint folder   RUN/checkpoints/best/; one written before checkpoints had a
                          config.json takes its config from the run's config.yaml (or
                          state.pt's "config") and its names from classes.json (or state.pt)
    a model folder        save_pretrained or mbt convert output
    a weights file        model.safetensors inside any of those
    a Hub id              org/name, through huggingface_hub (its cache and HF_HUB_OFFLINE apply)

A folder with ``SHA256SUMS`` is checked before it is used: damaged weights or config (flipped
bytes, a truncated copy) are never loaded. The ``.<name>.old`` copy is used instead, with a
warning, when there is one; otherwise the error names the damaged file. A damaged ``state.pt``
does not stop a model from loading (only training reads it).

This module is part of the model layer: the training side (``training/checkpoint.py``) takes
the file names, the folder resolution and the writer from here, never the reverse.
"""

from __future__ import annotations

import json
import pickle
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import huggingface_hub
import torch
from huggingface_hub.utils import EntryNotFoundError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from mbt.config import DataConfig, ModelConfig, RunConfig, from_dict, load_config, replace, to_dict
from mbt.files import SUMS, atomic_path, damaged_files, write_atomic

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
STATE = "state.pt"  # training checkpoints only
RUN_CONFIG = "config.yaml"  # a run directory's resolved RunConfig
RUN_CLASSES = "classes.json"  # a run directory's class names (a JSON list)
MODEL_TYPE = "mbt"  # marks our config.json among other Hub formats
CHECKSUMS = SUMS  # training checkpoints only: sha256 of config, weights and state
_META_KEYS = ("model_type", "class_names", "data", "info")

M = TypeVar("M", bound="HubMixin")


# ---------------------------------------------------------------------------------------------
# config.json


@dataclass(frozen=True)
class ModelCard:
    """What ``config.json`` says about a model."""

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


def config_from_json(data: dict[str, Any], source: str = CONFIG) -> ModelCard:
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
    return ModelCard(cfg, None if names is None else list(names), data_cfg, data.get("info"))


def read_config(path: Path) -> ModelCard:
    """Read and check ``path`` (a ``config.json``)."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return config_from_json(data, str(path))


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


# ---------------------------------------------------------------------------------------------
# Files of a folder


def resolve_folder(path: str | Path, which: str = "best") -> Path:
    """The folder holding ``model.safetensors``: from a run dir, a model / checkpoint folder,
    or the weights file itself.

    A run directory gives ``checkpoints/<which>``. When a folder is missing, or damaged (its
    weights or config differ from its ``SHA256SUMS``), but the ``.<name>.old`` beside it holds
    intact weights (a save interrupted between its two renames), that one is used, with a
    warning for a damaged folder.

    Raises:
        FileNotFoundError: nothing usable there.
        ValueError: the folder is damaged and there is no intact copy.
    """
    p = Path(path).expanduser()
    if p.is_file() and p.name == WEIGHTS:
        p = p.parent
    for c in (p, p / "checkpoints" / which):
        copies = [d for d in (c, c.parent / f".{c.name}.old") if (d / WEIGHTS).is_file()]
        if copies:
            return _first_intact(copies)
    raise FileNotFoundError(
        f"{path}: neither a model directory ({CONFIG} + {WEIGHTS}) nor a run directory "
        f"({RUN_CONFIG} + checkpoints/{which}/{WEIGHTS})"
    )


def _first_intact(copies: list[Path]) -> Path:
    """The first folder whose weights and config match its checksums (a folder without
    checksums counts as intact); a damaged one is passed over with a warning on stderr."""
    problems = []
    for folder in copies:
        bad = damaged_files(folder, (WEIGHTS, CONFIG))
        if not bad:
            if problems:
                print(f"warning: {problems[0]}; using the previous copy {folder}", file=sys.stderr)
            return folder
        problems.append(f"{folder}: damaged checkpoint ({', '.join(bad)} differs from {SUMS})")
    raise ValueError(f"{problems[0]}; there is no intact copy to fall back to")


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


_GLOBAL = re.compile(r"GLOBAL (\S+)")  # the object torch's weights-only unpickler refused


def torch_load(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU: tensors and plain containers only.

    A file that needs any other Python object is refused with a ValueError saying it is not a
    trusted checkpoint (PyTorch's own message advises ``weights_only=False``, which would run
    whatever code the file names: the wrong advice for a file of unknown origin). The message
    does not name the file: callers add it.

    Raises:
        ValueError: the file needs Python objects (or is not a pickle at all).
        RuntimeError, OSError, EOFError: truncated or unreadable (torch's own errors).
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = _GLOBAL.search(str(e))
        why = (
            f"it asks to load the Python object {found[1]}"
            if found
            else "it holds more than tensors and plain containers, or is damaged"
        )
        raise ValueError(f"not a trusted checkpoint: {why}; refused") from None


def _read_classes(path: Path) -> list[str] | None:
    if not path.is_file():
        return None
    names = json.loads(path.read_text())
    if not isinstance(names, list):
        raise ValueError(f"{path}: expected a JSON list of class names")
    return [str(n) for n in names]


def _run_dir_of(folder: Path) -> Path | None:
    """The run directory of a checkpoint folder ``RUN/checkpoints/<name>``, if it is one."""
    run = folder.parent.parent
    if folder.parent.name == "checkpoints" and (run / RUN_CONFIG).is_file():
        return run
    return None


# ---------------------------------------------------------------------------------------------
# The loader


@dataclass(frozen=True)
class LoadedModel:
    """A model with everything needed to feed it and name its outputs.

    Attributes:
        model: the network, in eval mode, on the requested device.
        class_names: one name per output, or None when the source has none.
        data: the data config the model was trained with (frame sampling, crops, audio
            normalisation, test views ...); ``DataConfig()`` when the source does not say.
        run_config: the training run's config (model part = ``model.cfg``), when the source is
            (inside) a run directory or an old-format checkpoint; else None.
        folder: the folder the weights came from (a Hub id: its local cache folder).
    """

    model: nn.Module
    class_names: list[str] | None
    data: DataConfig
    run_config: RunConfig | None
    folder: Path


def _is_hub_id(source: str | Path) -> bool:
    """``org/name`` that is not a local path. A path whose first part exists here (``runs/x``
    with a ``runs`` folder) is local even when missing: a typo, not a Hub repository."""
    text = str(source)
    path = Path(text).expanduser()
    return (
        not path.exists()
        and not path.parent.exists()
        and not text.startswith((".", "/", "~"))
        and text.count("/") == 1
    )


def _download(repo: str, revision: str | None) -> Path:
    """The local folder of ``config.json`` + ``model.safetensors`` of a Hub repository."""
    try:
        config = huggingface_hub.hf_hub_download(repo, CONFIG, revision=revision)
        weights = huggingface_hub.hf_hub_download(repo, WEIGHTS, revision=revision)
    except (OSError, EntryNotFoundError) as e:  # HTTP, offline, 404
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FileNotFoundError(
            f"{repo}: no such local folder, and no model on the Hub under that id ({why})"
        ) from None
    if Path(config).parent != Path(weights).parent:  # one snapshot folder in the Hub cache
        raise ValueError(f"{repo}: {CONFIG} and {WEIGHTS} came from different folders")
    return Path(weights).parent


def _legacy_card(folder: Path, run: Path | None) -> tuple[ModelCard, RunConfig]:
    """A checkpoint written before checkpoints had a ``config.json``.

    The config comes from the run's ``config.yaml`` (else ``state.pt``'s "config"), the names
    from the run's ``classes.json`` (else ``state.pt``'s "classes").
    """
    run_config = load_config(run / RUN_CONFIG) if run else None
    names = _read_classes(run / RUN_CLASSES) if run else None
    has_state = (folder / STATE).is_file()
    if run_config is None and not has_state:
        raise FileNotFoundError(
            f"{folder}: {WEIGHTS} without a {CONFIG}, a {STATE} or a run directory's "
            f"{RUN_CONFIG} to say which model it is"
        )
    state = read_state(folder) if has_state and (run_config is None or names is None) else {}
    if run_config is None:
        if "config" not in state:
            raise ValueError(f"{folder / STATE}: no 'config' in the checkpoint state")
        run_config = from_dict(RunConfig, state["config"])
    if names is None and state.get("classes"):
        names = [str(n) for n in state["classes"]]
    return ModelCard(run_config.model, names, run_config.data), run_config


def _describe(folder: Path) -> tuple[ModelCard, RunConfig | None]:
    """The model card of a local folder, and the run config when it belongs to a run."""
    run = _run_dir_of(folder)
    if not (folder / CONFIG).is_file():
        return _legacy_card(folder, run)
    card = read_config(folder / CONFIG)
    run_config = load_config(run / RUN_CONFIG) if run else None
    names = card.class_names
    if names is None and run is not None:
        names = _read_classes(run / RUN_CLASSES)
    data = card.data or (run_config.data if run_config else None)
    return ModelCard(card.cfg, names, data, card.info), run_config


def _default_class() -> type[nn.Module]:
    # mbt.model.mbt imports HubMixin from this module, so MBT is imported at call time (a cycle).
    from mbt.model.mbt import MBT

    return MBT


def _build(
    model_cls: type[nn.Module],
    card: ModelCard,
    weights: Path,
    strict: bool,
    config_changes: dict[str, Any] | None,
) -> nn.Module:
    cfg = card.cfg
    if config_changes:
        cfg = from_dict(ModelConfig, {**to_dict(cfg), **config_changes}, prefix="model.")
    model = model_cls(cfg)  # type: ignore[call-arg]
    load_weights(weights, model, strict=strict)
    model.class_names = card.class_names
    return model


def load_model(
    source: str | Path,
    which: str = "best",
    device: str | torch.device = "cpu",
    revision: str | None = None,
    *,
    strict: bool = True,
    config_changes: dict[str, Any] | None = None,
    model_cls: type[nn.Module] | None = None,
) -> LoadedModel:
    """Load a model from a run, a checkpoint, a model folder, a weights file or a Hub id.

    Args:
        source: see the module docstring for every accepted kind.
        which: ``best`` or ``last``: the checkpoint of a run directory.
        device: where to put the model (``cpu``, ``cuda``, ``cuda:1`` ...).
        revision: Hub revision (branch, tag or commit) for repository ids.
        strict: every weight must match the model's parameters.
        config_changes: ModelConfig fields to override (e.g. ``test_with_bottlenecks``);
            they must keep the weight shapes.
        model_cls: the class to build from the config (default :class:`mbt.model.MBT`).

    Returns:
        A :class:`LoadedModel`; ``model.class_names`` is set as well.

    Raises:
        FileNotFoundError: a local path that holds no model.
        ValueError: a malformed config, unreadable files, weights that do not fit, or a
            class-name list of the wrong length.
    """
    if which not in ("best", "last"):
        raise ValueError(f"checkpoint must be best or last, got {which!r}")
    if _is_hub_id(source):
        folder = _download(str(source), revision)
    else:
        folder = resolve_folder(source, which)
    card, run_config = _describe(folder)
    if card.class_names is not None and len(card.class_names) != card.cfg.num_classes:
        raise ValueError(
            f"{source}: {len(card.class_names)} class names for a "
            f"{card.cfg.num_classes}-class model"
        )
    model = _build(model_cls or _default_class(), card, folder / WEIGHTS, strict, config_changes)
    model.to(torch.device(device)).eval()
    if run_config is not None:
        run_config = replace(run_config, model=model.cfg)
    return LoadedModel(model, card.class_names, card.data or DataConfig(), run_config, folder)


class HubMixin:
    """``save_pretrained`` / ``from_pretrained`` for a module built from ``cls(cfg)``.

    The model keeps ``cfg`` (a :class:`ModelConfig`) and, optionally, ``class_names``.
    """

    cfg: ModelConfig
    class_names: list[str] | None = None

    def save_pretrained(
        self,
        save_directory: str | Path,
        *,
        class_names: list[str] | None = None,
        data: DataConfig | None = None,
        info: dict[str, Any] | None = None,
    ) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``save_directory``.

        Args:
            save_directory: created if missing; existing files of the same names are replaced.
            class_names: one name per output class (default: ``self.class_names``).
            data: the data config the model expects its inputs from (stored under ``"data"``,
                so ``mbt predict`` / ``explain`` preprocess clips as in training).
            info: free-form JSON metadata stored under ``"info"`` (e.g. conversion provenance).

        Returns:
            ``save_directory`` as a Path; upload it with ``huggingface_hub.upload_folder``.
        """
        names = class_names if class_names is not None else self.class_names
        write_pretrained(self, save_directory, class_names=names, data=data, info=info)  # type: ignore[arg-type]
        return Path(save_directory)

    @classmethod
    def from_pretrained(
        cls: type[M],
        source: str | Path,
        *,
        revision: str | None = None,
        map_location: str | torch.device = "cpu",
        strict: bool = True,
        **config_changes: Any,
    ) -> M:
        """Build the model from anything :func:`load_model` reads (``load_model(...).model``).

        Args:
            source: a model folder, run directory, checkpoint folder, weights file or Hub id.
            revision: Hub revision for repository ids.
            map_location: device of the loaded model.
            strict: every weight must match the model's parameters.
            **config_changes: ModelConfig fields to override (e.g. ``test_with_bottlenecks``);
                they must keep the weight shapes.

        Returns:
            The model in eval mode, with ``class_names`` set when known.
        """
        loaded = load_model(
            source, device=map_location, revision=revision, strict=strict,
            config_changes=config_changes, model_cls=cls,  # type: ignore[arg-type]
        )  # fmt: skip
        return loaded.model  # type: ignore[return-value]
