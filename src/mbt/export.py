"""Export a trained or converted MBT to ONNX (inputs ``video`` / ``audio``, output ``logits``).

The batch axis is dynamic; everything else is fixed by the model config (frames, image size,
spectrogram frames, mel bins). The graph is the evaluation forward (bottleneck fusion on when
``test_with_bottlenecks``, logits averaged over modalities), traced with the TorchScript-based
exporter (``dynamo=False``), which lowers timm's ``scaled_dot_product_attention`` to plain
MatMul / Softmax nodes.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from mbt.files import atomic_path
from mbt.loading import load_model

DEFAULT_OPSET = 17


class _LogitsOnly(nn.Module):
    """Positional-argument wrapper: ONNX inputs in ``cfg.modalities`` order."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.modalities = tuple(model.cfg.modalities)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.modalities, inputs, strict=True)))  # (B, C)


def example_inputs(cfg, batch: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs of the model's shapes: ``video`` (B, T, 3, H, W), ``audio`` (B, T_a, F)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {
        "video": (batch, cfg.num_frames, 3, cfg.image_size, cfg.image_size),
        "audio": (batch, cfg.audio_frames, cfg.mel_bins),
    }
    return {m: torch.randn(shapes[m], generator=gen) for m in cfg.modalities}


def export_onnx(model: nn.Module, out: str | Path, *, opset: int = DEFAULT_OPSET) -> Path:
    """Write ``model`` (an :class:`mbt.model.MBT`) as an ONNX file with a dynamic batch axis.

    Args:
        model: the model; exported in eval mode on CPU.
        out: the ``.onnx`` path (parent folders are created).
        opset: ONNX opset (>= 14 for the attention ops).

    Returns:
        ``out`` as a Path.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    inputs = example_inputs(model.cfg, batch=2)
    names = list(inputs)
    dynamic = {n: {0: "batch"} for n in [*names, "logits"]}
    with warnings.catch_warnings(), atomic_path(out) as tmp:  # a killed export leaves no half file
        warnings.simplefilter("ignore")  # tracer warnings about shape asserts in the embeds
        torch.onnx.export(
            _LogitsOnly(model),
            tuple(inputs.values()),
            str(tmp),
            input_names=names,
            output_names=["logits"],
            dynamic_axes=dynamic,
            opset_version=opset,
            dynamo=False,
        )
    return out


def export_from_source(
    source: str | Path, out: str | Path, *, opset: int = DEFAULT_OPSET, checkpoint: str = "best"
) -> Path:
    """Load anything :func:`mbt.loading.load_model` reads (run, checkpoint or model folder,
    Hub id) and export it; ``checkpoint`` picks ``best`` or ``last`` of a run directory."""
    return export_onnx(load_model(source, checkpoint).model, out, opset=opset)


def check_onnx(model: nn.Module, path: str | Path, batch: int = 1, seed: int = 0) -> float:
    """Largest absolute difference between onnxruntime and PyTorch logits on random inputs.

    Needs ``onnxruntime`` (an optional dependency, so imported here).
    """
    import onnxruntime as ort

    inputs = example_inputs(model.cfg, batch=batch, seed=seed)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(["logits"], {k: v.numpy() for k, v in inputs.items()})
    with torch.no_grad():
        want = model.eval()(**inputs)
    return float((torch.from_numpy(got) - want).abs().max())
