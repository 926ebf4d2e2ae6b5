"""ONNX export: dynamic batch, onnxruntime agrees with PyTorch."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from mbt.cli import main  # noqa: E402
from mbt.export import check_onnx, export_from_source, export_onnx  # noqa: E402
from mbt.model import MBT  # noqa: E402
from mbt.training.checkpoint import save_checkpoint  # noqa: E402

from .conftest import tiny_model_config  # noqa: E402


def _model(**changes) -> MBT:
    torch.manual_seed(0)
    model = MBT(tiny_model_config(num_classes=3, **changes))
    with torch.no_grad():
        model.head.weight.normal_()  # zero-initialised heads would make every check pass
    return model.eval()


def test_av_model_matches_onnxruntime_at_batch_1_and_3(tmp_path):
    import onnx

    model = _model()
    model.save_pretrained(tmp_path / "model")
    path = export_from_source(tmp_path / "model", tmp_path / "mbt.onnx")
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["video", "audio"]
    assert [o.name for o in graph.output] == ["logits"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    for batch in (1, 3):
        assert check_onnx(model, path, batch=batch, seed=batch) < 1e-4


def test_audio_only_model_exports(tmp_path):
    model = _model(modalities=("audio",), audio_dist_token=True)
    path = export_onnx(model, tmp_path / "audio.onnx", opset=17)
    assert check_onnx(model, path, batch=2) < 1e-4


def test_cli_exports_a_training_checkpoint_folder(tmp_path, capsys):
    model = _model()
    best = save_checkpoint(tmp_path / "run" / "checkpoints" / "best", model, {"epoch": 1})
    out = tmp_path / "best.onnx"
    assert main(["export", "onnx", str(best), str(out), "--check"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "max |onnxruntime - torch|" in printed
    assert check_onnx(model, out, batch=2) < 1e-4
