"""Share models: ``save_pretrained`` / ``from_pretrained`` in the Hugging Face Hub layout.

A model directory holds two files::

    config.json         the ModelConfig fields, plus optional "class_names" and "info"
    model.safetensors   the weights (a plain state dict; loading never unpickles anything)

``from_pretrained`` also reads a Hub repository id (``org/name``, through
``huggingface_hub.hf_hub_download``, so the Hub cache and ``HF_HUB_OFFLINE`` apply) and a
training run directory (``RUN/config.yaml``, ``RUN/classes.json`` and the weights of
``RUN/checkpoints/best``; a checkpoint folder inside a run works too).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file, save_file

from mbt.config import ModelConfig, from_dict, load_config, to_dict

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
MODEL_TYPE = "mbt"  # marks our config.json among other Hub formats
_META_KEYS = ("model_type", "class_names", "info")

M = TypeVar("M", bound="HubMixin")


def config_to_json(
    cfg: ModelConfig, class_names: list[str] | None = None, info: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The ``config.json`` dict: ``model_type``, every ModelConfig field, class names, info."""
    out: dict[str, Any] = {"model_type": MODEL_TYPE, **to_dict(cfg)}
    if class_names is not None:
        if len(class_names) != cfg.num_classes:
            raise ValueError(
                f"class_names: {len(class_names)} names for num_classes={cfg.num_classes}"
            )
        out["class_names"] = list(class_names)
    if info:
        out["info"] = info
    return out


def config_from_json(data: dict[str, Any], source: str = CONFIG) -> tuple[ModelConfig, list | None]:
    """Inverse of :func:`config_to_json`; unknown keys are errors."""
    if data.get("model_type", MODEL_TYPE) != MODEL_TYPE:
        raise ValueError(f"{source}: model_type {data['model_type']!r} is not an MBT model")
    fields = {k: v for k, v in data.items() if k not in _META_KEYS}
    try:
        cfg = from_dict(ModelConfig, fields, prefix="model.")
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None
    return cfg, data.get("class_names")


def _read_classes(path: Path) -> list[str] | None:
    if not path.is_file():
        return None
    names = json.loads(path.read_text())
    if not isinstance(names, list):
        raise ValueError(f"{path}: expected a JSON list of class names")
    return [str(n) for n in names]


def _run_dir_of(path: Path) -> Path | None:
    """The run directory holding ``path`` (itself, or ``run/checkpoints/<name>``)."""
    for cand in (path, *path.parents[:3]):
        if (cand / "config.yaml").is_file():
            return cand
    return None


def resolve_source(
    source: str | Path, revision: str | None = None
) -> tuple[dict, Path, list | None]:
    """Locate a model: ``(config.json dict, weights file, class names or None)``.

    Args:
        source: a model directory, a run directory, a checkpoint folder inside a run, or a
            Hub repository id.
        revision: Hub revision (branch, tag or commit) for repository ids.

    Raises:
        FileNotFoundError: a local path that holds no model.
        ValueError: a malformed config.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / CONFIG).is_file() and (path / WEIGHTS).is_file():
            return json.loads((path / CONFIG).read_text()), path / WEIGHTS, None
        run = _run_dir_of(path)
        if run is not None:
            from mbt.training.checkpoint import resolve_checkpoint

            cfg = load_config(run / "config.yaml").model
            weights = resolve_checkpoint(path) / WEIGHTS
            return to_dict(cfg), weights, _read_classes(run / "classes.json")
        raise FileNotFoundError(
            f"{path}: neither a model directory ({CONFIG} + {WEIGHTS}) nor a run directory "
            "(config.yaml + checkpoints/)"
        )
    if path.exists() or str(source).startswith((".", "/", "~")) or str(source).count("/") != 1:
        raise FileNotFoundError(f"{source}: no such model directory (nor a Hub id org/name)")
    from huggingface_hub import hf_hub_download

    repo = str(source)
    config_file = hf_hub_download(repo, CONFIG, revision=revision)
    weights = hf_hub_download(repo, WEIGHTS, revision=revision)
    return json.loads(Path(config_file).read_text()), Path(weights), None


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
        info: dict[str, Any] | None = None,
    ) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``save_directory``.

        Args:
            save_directory: created if missing; existing files of the same names are replaced.
            class_names: one name per output class (default: ``self.class_names``).
            info: free-form JSON metadata stored under ``"info"`` (e.g. conversion provenance).

        Returns:
            ``save_directory`` as a Path; upload it with ``huggingface_hub.upload_folder``.
        """
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        names = class_names if class_names is not None else self.class_names
        config = config_to_json(self.cfg, names, info)
        sd = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(sd, str(out / WEIGHTS), metadata={"format": "pt"})
        (out / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        return out

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
        """Build the model from a model directory, a run directory or a Hub repository id.

        Args:
            source: see :func:`resolve_source`.
            revision: Hub revision for repository ids.
            map_location: device of the loaded weights.
            strict: every weight must match the model's parameters.
            **config_changes: ModelConfig fields to override (e.g. ``test_with_bottlenecks``);
                they must keep the weight shapes.

        Returns:
            The model in eval mode, with ``class_names`` set when known.
        """
        data, weights, classes = resolve_source(source, revision)
        cfg, names = config_from_json(data, str(source))
        if config_changes:
            cfg = from_dict(ModelConfig, {**to_dict(cfg), **config_changes}, prefix="model.")
        model = cls(cfg)  # type: ignore[call-arg]
        sd = load_file(str(weights), device=str(map_location))
        try:
            model.load_state_dict(sd, strict=strict)  # type: ignore[attr-defined]
        except RuntimeError as e:
            raise ValueError(f"{weights}: weights do not fit the config ({e})") from None
        model.class_names = names if names is not None else classes
        return model.eval()  # type: ignore[attr-defined]
