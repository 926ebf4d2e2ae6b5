"""notebooks/quickstart.ipynb runs top to bottom: without data on the demo data, and with a
PJZUF archive given in MBT_DATA through the pjzuf_c101 preset (tiny overrides and tiny local
weights, as tests/test_pjzuf_workflow.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.model.checkpoints import write_ast_pth, write_vit
from tests.test_pjzuf_workflow import TINY, build_archive

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def _execute(tmp_path: Path) -> list:
    """Run the notebook; return the outputs of its code cells (errors fail the test)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def _text(outputs: list) -> str:
    return "".join(
        o.get("text", "") + o.get("data", {}).get("text/plain", "")
        + o.get("data", {}).get("text/markdown", "")
        for o in outputs
    )  # fmt: skip


@pytest.mark.parametrize("data", ["demo", "pjzuf"])
def test_quickstart_notebook_executes(data, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
    monkeypatch.setenv("MBT_WORK", str(tmp_path / "work"))
    if data == "pjzuf":
        vit, ast = tmp_path / "vit.safetensors", tmp_path / "ast.pth"
        write_vit(vit, width=32, depth=2, heads=2, mlp_ratio=2.0, image=32, patch=8)
        write_ast_pth(ast, width=32, depth=2, mlp_ratio=2.0)
        monkeypatch.setenv("MBT_DATA", str(build_archive(tmp_path)))
        overrides = [*TINY, "train.epochs=1", f"model.init={vit}", f"model.audio_init={ast}"]
        monkeypatch.setenv("MBT_OVERRIDES", " ".join(overrides))
    else:
        monkeypatch.delenv("MBT_DATA", raising=False)
        monkeypatch.delenv("MBT_OVERRIDES", raising=False)
    outputs = _execute(tmp_path)
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = _text(outputs)
    assert "| epoch | train_loss | val_loss | train_acc | val_acc |" in text  # the log table
    ranked = 5 if data == "demo" else 3  # top-5 of six demo classes; all 3 classes left here
    assert "true class:" in text and f"\n{ranked:>2}. " in text
    assert f"\n{ranked + 1:>2}. " not in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3  # plot.png and the two attention figures
    if data == "pjzuf":
        assert "archive: unpacked" in text and "layout pjzuf" in text
        assert (tmp_path / "work" / "run" / "config.yaml").read_text().count("pjzufc101") >= 1
