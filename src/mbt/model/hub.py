"""``save_pretrained`` / ``from_pretrained``, and model folders on the Hugging Face Hub.

``MBT.from_pretrained`` reads what a model alone is made of: a model folder
(:mod:`mbt.model.folder`: ``save_pretrained`` or ``mbt convert`` output, or a training
checkpoint folder, which is one), its ``model.safetensors``, or a Hub id (``org/name``, through
huggingface_hub: its cache and ``HF_HUB_OFFLINE`` apply).

It does not read a training run directory, nor a checkpoint written before checkpoints had a
``config.json``: both need the run's files (``config.yaml``, ``classes.json``, ``state.pt``),
which the model layer does not know. :func:`mbt.loading.load_model` reads those and everything
here; ``from_pretrained`` cannot call it, because ``mbt.loading`` builds an ``MBT`` and so
imports this package (the two would import each other). For such a source the error says to
call ``mbt.load_model(source).model``. This keeps the layering one way: ``model/`` knows model
folders, ``training/`` knows runs, ``mbt.loading`` knows both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import huggingface_hub
import torch
from huggingface_hub.utils import EntryNotFoundError

from mbt.config import DataConfig, ModelConfig
from mbt.model.folder import CONFIG, WEIGHTS, build, model_folder, read_config, write_pretrained

M = TypeVar("M", bound="HubMixin")
_RUN_HINT = "mbt.load_model reads training run directories and older checkpoints"


def is_hub_id(source: str | Path) -> bool:
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


def download(repo: str, revision: str | None) -> Path:
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
        """Build the model from a model folder, a checkpoint folder, its weights or a Hub id.

        Args:
            source: a model folder (``save_pretrained``, ``mbt convert``, a training checkpoint
                folder), its ``model.safetensors``, or a Hub id; for a run directory use
                ``mbt.load_model(source).model`` (see the module docstring).
            revision: Hub revision for repository ids.
            map_location: device of the loaded model.
            strict: every weight must match the model's parameters.
            **config_changes: ModelConfig fields to override (e.g. ``test_with_bottlenecks``);
                they must keep the weight shapes.

        Returns:
            The model in eval mode, with ``class_names`` set when known.

        Raises:
            FileNotFoundError: nothing readable as a model folder there (the message names
                ``mbt.load_model`` for run directories and older checkpoints).
            ValueError: a damaged or malformed folder, or weights that do not fit.
        """
        if is_hub_id(source):
            folder = download(str(source), revision)
        else:
            try:
                folder = model_folder(source)
            except FileNotFoundError as e:
                raise FileNotFoundError(f"{e}; {_RUN_HINT}") from None
        if not (folder / CONFIG).is_file():
            raise FileNotFoundError(f"{folder}: {WEIGHTS} without a {CONFIG}; {_RUN_HINT}")
        config = read_config(folder / CONFIG)
        model = build(
            cls, config, folder, source=source, strict=strict, config_changes=config_changes
        )  # type: ignore[arg-type]
        return model.to(torch.device(map_location)).eval()  # type: ignore[return-value]
