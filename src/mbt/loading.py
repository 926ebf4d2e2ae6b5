"""One model from any source: :func:`load_model`, the way every command and application loads.

It reads

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

Layering: this module sits above the model layer (:mod:`mbt.model.folder`, the files of a model
folder; :mod:`mbt.model.hub`, Hub ids; :class:`~mbt.model.MBT`) and the run folder
(:mod:`mbt.training.rundir`, where a run keeps its checkpoints and what older ones need), and
neither imports it. ``MBT.from_pretrained`` is the model layer's own reader (model folders,
weights files, Hub ids); see :mod:`mbt.model.hub` for why it sends run directories here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mbt.config import DataConfig, RunConfig, replace
from mbt.model.folder import build
from mbt.model.hub import download, is_hub_id
from mbt.model.mbt import MBT
from mbt.training.rundir import describe_folder, resolve_folder


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
    if is_hub_id(source):
        folder = download(str(source), revision)
    else:
        folder = resolve_folder(source, which)
    config, run_config = describe_folder(folder)
    model = build(
        model_cls or MBT, config, folder, source=source, strict=strict,
        config_changes=config_changes,
    )  # fmt: skip
    model.to(torch.device(device)).eval()
    if run_config is not None:
        run_config = replace(run_config, model=model.cfg)
    return LoadedModel(model, config.class_names, config.data or DataConfig(), run_config, folder)
