"""Damaged checkpoint files: found by their checksums, never confident garbage.

Flipped bytes in ``model.safetensors`` (the issue's case: ``mbt predict`` printed ``nan%`` and
exited 0) are a one-line error, or, where an intact copy exists, a warning and that copy. A
damaged ``state.pt`` (only training needs it) blocks neither ``predict`` nor ``evaluate``; a
resumed run whose ``last`` is damaged starts from ``best`` and replays the epochs after it.
Scores that are not finite are an error wherever they come from.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mbt.cli import main
from mbt.loading import load_model
from mbt.training import loop
from mbt.training.checkpoint import checkpoint_problem, read_state
from tests.training.conftest import demo_cache as demo_cache  # a fixture
from tests.training.conftest import tiny_config


@pytest.fixture(scope="module")
def trained(demo_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-epoch run whose best epoch is 1 (so last and best differ)."""
    out = tmp_path_factory.mktemp("damaged") / "run"
    cfg = tiny_config(f"data.cache={demo_cache}", "train.lr=1e-3")
    assert loop.train(cfg, None, out)["best_epoch"] == 1
    return out


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    """A copy of the trained run, to damage."""
    return shutil.copytree(trained, tmp_path / "run")


@pytest.fixture(scope="module")
def clip(demo_root: Path) -> Path:
    return sorted((demo_root / "video").rglob("*.mp4"))[0]


def flip_weights(path: Path) -> None:
    """Set the last 64 bytes (tensor data, past the header) to 0xFF: NaN as float32."""
    data = bytearray(path.read_bytes())
    data[-64:] = b"\xff" * 64
    path.write_bytes(bytes(data))


def cut_in_half(path: Path) -> None:
    """A torn copy."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _predict(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = main(["predict", *args, "--json"])
    out, err = capsys.readouterr()
    return status, out, err


def test_flipped_weight_bytes_are_a_one_line_error_never_nan(run, clip, capsys):
    flip_weights(run / "checkpoints" / "best" / "model.safetensors")
    status, out, err = _predict(capsys, str(run), str(clip))
    assert status == 2 and "nan" not in out.lower(), out
    assert err.count("\n") == 1
    assert err.startswith(f"mbt: error: {run / 'checkpoints' / 'best'}: damaged checkpoint")
    assert "model.safetensors differs from SHA256SUMS" in err
    assert main(["evaluate", str(run)]) == 2
    assert "damaged checkpoint" in capsys.readouterr().err


def test_a_damaged_checkpoint_falls_back_to_its_previous_copy_with_a_warning(run, clip, capsys):
    best = run / "checkpoints" / "best"
    _, want, _ = _predict(capsys, str(run), str(clip))
    shutil.copytree(best, best.parent / ".best.old")  # what an interrupted save leaves
    flip_weights(best / "model.safetensors")
    status, out, err = _predict(capsys, str(run), str(clip))
    assert status == 0 and json.loads(out) == json.loads(want)
    assert err.startswith(f"warning: {best}: damaged checkpoint")
    assert err.strip().endswith(f"using the previous copy {best.parent / '.best.old'}")


def test_a_damaged_state_blocks_neither_predict_nor_evaluate(run, clip, capsys):
    cut_in_half(run / "checkpoints" / "best" / "state.pt")
    status, out, _ = _predict(capsys, str(run), str(clip))
    assert status == 0 and json.loads(out)["predictions"]
    assert main(["evaluate", str(run)]) == 0
    out, err = capsys.readouterr()
    assert "(epoch None)" in out and "state.pt is damaged" in err


def test_resume_with_a_damaged_last_starts_from_best_and_ends_the_same(trained, run, capsys):
    flip_weights(run / "checkpoints" / "last" / "model.safetensors")
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"warning: {run / 'checkpoints' / 'last'}: damaged (model.safetensors" in out
    assert f"resuming from {run / 'checkpoints' / 'best'}" in out
    assert "resuming after epoch 1" in out  # epoch 2 is trained again
    for which in ("last", "best"):
        a = load_file(trained / "checkpoints" / which / "model.safetensors")
        b = load_file(run / "checkpoints" / which / "model.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), which
    log = lambda r: [x.split(",")[:4] for x in (r / "training_log.csv").read_text().split()]  # noqa: E731
    assert log(run) == log(trained)


def test_non_finite_scores_are_an_error_not_a_prediction(trained, run, clip, tmp_path, capsys):
    # A model folder without checksums (save_pretrained, or a checkpoint from before them)
    # whose weights hold a NaN: the checksum cannot catch it, the scores can.
    loaded = load_model(trained)
    with torch.no_grad():
        loaded.model.head.bias[0] = float("nan")
    folder = loaded.model.save_pretrained(tmp_path / "nan-model")
    status, out, err = _predict(capsys, str(folder), str(clip))
    assert status == 2 and "nan" not in out.lower()
    assert err.startswith(f"mbt: error: {folder}: the model gives non-finite scores")
    best = run / "checkpoints" / "best"
    save_file(
        {k: v.contiguous() for k, v in loaded.model.state_dict().items()},
        best / "model.safetensors",
    )
    (best / "SHA256SUMS").unlink()
    assert main(["evaluate", str(run)]) == 2
    assert "non-finite scores (NaN or inf) for 12 of 12 clips" in capsys.readouterr().err


def test_resume_with_a_damaged_best_says_its_epoch_is_lost_and_goes_on(run, capsys):
    best = run / "checkpoints" / "best"
    flip_weights(best / "model.safetensors")
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "train.epochs=3"]) == 0
    out = capsys.readouterr().out
    assert f"warning: {best} is missing or damaged; the best epoch 1 is lost" in out
    assert checkpoint_problem(best) is None  # rebuilt: an intact checkpoint again
    assert read_state(best)["epoch"] in (2, 3)  # epoch 2 stood in for 1; 3 if it did better
