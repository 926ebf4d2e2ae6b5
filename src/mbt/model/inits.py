"""The pretrained weights a training run starts from, fetched before anything else.

Three config values name them (all empty = random weights):

- ``model.init``: an ImageNet ViT copied into every stream (:func:`~mbt.model.pretrained.
  init_from_vit`): a timm model name (fetched by timm from the Hugging Face Hub) or a local
  file (timm / HF transformers ``.safetensors`` / ``.pth``, big_vision ``.npz``);
- ``model.audio_init``: an Audio Spectrogram Transformer put into the audio stream after that
  (:func:`~mbt.model.ast.init_audio_from_ast`): an HF transformers AST folder or weights file,
  an original AST ``.pth``, or a Hub id such as ``MIT/ast-finetuned-audioset-10-10-0.4593``.

- ``model.warm_start``: an mbt model folder (:func:`warm_start_state`), copied last: every
  weight whose name and shape match, except the classifier head. This is how a model trained on
  one task starts another (``mbt demo``'s second stage; fine-tuning on new classes). The model
  layer knows model folders only; the training loop passes a ``locate`` that also finds a run's
  last checkpoint (:func:`mbt.training.rundir.resolve_folder`).

With ``init`` and ``audio_init``, the video stream keeps the ViT and the audio stream (blocks,
patch kernel, positions, CLS and distillation tokens) is AST's; the shared final LayerNorm stays
the ViT's, since it normalises both streams' tokens and only one can be copied.

:func:`load_init_weights` reads both at the start of a run, before the data set is scanned, so
a weight file that cannot be reached fails at once, in one line that says what to download and
where to put it; :func:`apply_init` copies them into the freshly built model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub
import timm
import torch
from huggingface_hub.utils import EntryNotFoundError
from safetensors import SafetensorError
from safetensors.torch import load_file

from mbt.config import ModelConfig
from mbt.model.ast import ASTWeights, init_audio_from_ast, load_ast
from mbt.model.folder import WEIGHTS, model_folder
from mbt.model.pretrained import init_from_vit, load_vit_state_dict

AST_FILES = ("model.safetensors", "pytorch_model.bin")  # an HF AST repository's weights
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".npz")


@dataclass
class InitWeights:
    """What :func:`load_init_weights` read: a timm-named ViT state dict and / or AST weights."""

    vit: dict[str, torch.Tensor] | None = None
    ast: ASTWeights | None = None
    vit_source: str = ""
    ast_source: str = ""
    warm: dict[str, torch.Tensor] | None = None
    warm_source: str = ""

    def describe(self) -> str:
        """One line for the run's log: which stream starts from what."""
        parts = []
        if self.vit is not None:
            parts.append(f"ViT {self.vit_source} -> both streams")
        if self.ast is not None:
            parts.append(f"AST {self.ast_source} -> audio stream")
        elif self.ast_source:
            parts.append(f"model.audio_init={self.ast_source} not used: no audio stream")
        if self.warm is not None:
            parts.append(f"warm start from {self.warm_source} (all but the head)")
        return "init: " + ("; ".join(parts) if parts else "random weights")


def load_init_weights(
    cfg: ModelConfig, locate: Callable[[str], Path] = model_folder
) -> InitWeights:
    """Read the weights ``model.init``, ``model.audio_init`` and ``model.warm_start`` name
    (nothing for empty values); ``locate`` finds the model folder ``model.warm_start`` names.

    Raises:
        FileNotFoundError: a local file that does not exist, or a name that cannot be fetched
            (offline, unknown): the message says what to download and where to put it.
        ValueError: a file that is not a ViT / AST checkpoint.
    """
    weights = InitWeights(vit_source=cfg.init, ast_source=cfg.audio_init)
    if cfg.init:
        weights.vit = _load_vit(cfg.init)
    if cfg.audio_init and "audio" in cfg.modalities:
        weights.ast = _load_ast(cfg.audio_init)
    if cfg.warm_start:
        folder = _warm_folder(cfg.warm_start, locate)
        weights.warm, weights.warm_source = warm_start_state(folder), str(folder)
    return weights


def apply_init(model: torch.nn.Module, weights: InitWeights) -> None:
    """Copy ``weights`` into ``model``: the ViT into every stream, then AST into the audio one.

    Raises:
        ValueError: a checkpoint whose width, depth or patch size does not fit the model.
    """
    if weights.vit is not None:
        init_from_vit(model, weights.vit)
    if weights.ast is not None:
        try:
            init_audio_from_ast(model, weights.ast, final_norm=weights.vit is None)
        except ValueError as e:
            raise ValueError(f"model.audio_init={weights.ast_source}: {e}") from None
    if weights.warm is not None:
        copy_matching(model, weights.warm, weights.warm_source)


# ---------------------------------------------------------------------------------------------
# model.warm_start: another mbt model


def _warm_folder(source: str, locate: Callable[[str], Path]) -> Path:
    """The model folder ``source`` names, found by ``locate``, or a FileNotFoundError naming
    ``model.warm_start``."""
    try:
        return locate(source)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"model.warm_start={source}: {e}") from None


def warm_start_state(folder: Path) -> dict[str, torch.Tensor]:
    """The weights of a model folder, without the classifier head (``head.*``)."""
    try:
        state = load_file(str(folder / WEIGHTS))
    except (OSError, SafetensorError) as e:
        raise ValueError(f"model.warm_start={folder}: unreadable weights ({e})") from None
    return {k: v for k, v in state.items() if not k.startswith("head.")}


def copy_matching(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> int:
    """Copy every tensor of ``state`` whose name and shape ``model`` has; return how many.

    A late-fusion model has no bottleneck tokens, a one-stream model only its stream: those
    tensors of a fused source are left out, the rest is copied.

    Raises:
        ValueError: nothing matches (another architecture or width).
    """
    own = model.state_dict()
    take = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not take:
        raise ValueError(
            f"model.warm_start={source}: no weight has the name and shape of this model's "
            f"(width {getattr(model.cfg, 'width', '?')}); was it trained with another config?"
        )
    model.load_state_dict(take, strict=False)
    return len(take)


# ---------------------------------------------------------------------------------------------
# model.init: an ImageNet ViT


def _load_vit(source: str) -> dict[str, torch.Tensor]:
    """A ViT state dict (timm names) from a local file or a timm name, or a one-line error."""
    try:
        return load_vit_state_dict(source)
    except FileNotFoundError:
        raise FileNotFoundError(f"model.init={source}: no such file; {_vit_hint(source)}") from None
    except ValueError as e:
        if Path(source).expanduser().is_file():  # a real file that is not a ViT: no hint helps
            raise
        why = _first_line(str(e.__context__ or e))  # timm's / huggingface_hub's own error
        raise FileNotFoundError(
            f"model.init={source}: cannot get these timm weights ({why}); {_vit_hint(source)}"
        ) from None


def _timm_repo(name: str) -> str | None:
    """The Hub repository of a timm model name's weights (None: not such a name)."""
    try:
        return timm.models.get_pretrained_cfg(name).hf_hub_id or None
    except (AttributeError, RuntimeError, ValueError):  # unknown name: get_pretrained_cfg -> None
        return None


def _vit_hint(source: str) -> str:
    """What to download and where to put it, for a timm name (or a missing file named after
    one, e.g. ``weights/vit_base_patch16_224.augreg_in21k/model.safetensors``)."""
    parts = [p for p in reversed(Path(source).parts) if _timm_repo(p)]
    name = parts[0] if parts else source
    repo = _timm_repo(name)
    if not repo:
        return (
            "give a timm model name (e.g. vit_base_patch16_224.augreg_in21k) or a local ViT "
            "file, or model.init= for random weights"
        )
    local = f"weights/{name}"
    return (
        f"download it where there is a network: `hf download {repo} model.safetensors "
        f"--local-dir {local}`, then set model.init={local}/model.safetensors "
        "(or model.init= for random weights)"
    )


# ---------------------------------------------------------------------------------------------
# model.audio_init: AST


def _load_ast(source: str) -> ASTWeights:
    """AST weights from a local folder / file, or from the Hub for an ``org/name`` id."""
    path = Path(source).expanduser()
    if path.exists():
        return load_ast(path)
    if _looks_like_hub_id(source):
        return load_ast(_fetch_ast(source))
    raise FileNotFoundError(f"model.audio_init={source}: no such file or folder; {_ast_hint()}")


def _looks_like_hub_id(source: str) -> bool:
    """``org/name`` and not a path: no leading ``.``, ``/`` or ``~``, no weights suffix."""
    return (
        source.count("/") == 1
        and not source.startswith((".", "/", "~"))
        and not source.lower().endswith(WEIGHT_SUFFIXES)
    )


def _fetch_ast(repo: str) -> Path:
    """The local folder of an HF AST repository's ``config.json`` and weights (Hub cache)."""
    try:
        config = huggingface_hub.hf_hub_download(repo, "config.json")
        for name in AST_FILES:
            try:
                huggingface_hub.hf_hub_download(repo, name)
                break
            except EntryNotFoundError:
                if name == AST_FILES[-1]:
                    raise
    except (OSError, EntryNotFoundError) as e:  # offline, HTTP errors, no such repository
        why = _first_line(str(e)) or type(e).__name__
        raise FileNotFoundError(f"model.audio_init={repo}: {why}; {_ast_hint(repo)}") from None
    return Path(config).parent


def _ast_hint(repo: str = "MIT/ast-finetuned-audioset-10-10-0.4593") -> str:
    local = f"weights/{repo.rsplit('/', 1)[-1]}"
    return (
        f"download it where there is a network: `hf download {repo} --local-dir {local}`, "
        f"then set model.audio_init={local} (an original AST .pth file works too; "
        "model.audio_init= for random weights)"
    )


def _first_line(text: str) -> str:
    """The first sentence of the first line (huggingface_hub's messages run to paragraphs)."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line.split(". ", 1)[0].rstrip(".")
