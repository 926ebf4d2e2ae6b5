"""A full disk while a run saves a checkpoint (or its log) or while ``mbt prepare`` writes the
cache: one line, no temporary file left, the previous files intact, and the same command again
(after freeing space) goes on to the same end as a run that never hit it.

The failures are injected where the libraries raise them, in the form measured on a real full
file system (a 1.6 MB tmpfs): ``torch.save`` into a file object raises ``RuntimeError("[enforce
fail ...] unexpected pos ...")`` with the ``OSError(ENOSPC)`` as its context, safetensors raises
``SafetensorError("... No space left on device (os error 28)")``, a plain write ``OSError``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import pathlib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from mbt.cli import main
from mbt.model import folder
from mbt.training.checkpoint import checkpoint_problem, read_state
from tests.reliability.test_kill_at_every_write import _small_data
from tests.training.conftest import TINY
from tests.training.conftest import demo_cache as demo_cache  # a fixture


def _enospc() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


def _full_torch_save(obj, f, *args, **kwargs) -> None:
    """``torch.save`` on a full disk: part of the file, then the RuntimeError."""
    with open(f, "wb") if isinstance(f, (str, Path)) else contextlib.nullcontext(f) as out:
        out.write(b"PK\x03\x04 half a zip")
    try:
        raise _enospc()
    except OSError:
        raise RuntimeError(
            "[enforce fail at inline_container.cc:672] . unexpected pos 576"
        ) from None


def _full_save_file(tensors, filename, metadata=None) -> None:
    """safetensors' ``save_file`` on a full disk."""
    Path(filename).write_bytes(b"\x10\x00\x00\x00")  # a few bytes made it
    raise SafetensorError(
        "Error while serializing: I/O error: No space left on device (os error 28)"
    )


def _full_write_bytes(self: Path, data: bytes) -> None:
    """``Path.write_bytes`` on a full disk: half the data, then ENOSPC."""
    with self.open("wb") as f:
        f.write(data[: len(data) // 2])
    raise _enospc()


# file that fails -> (object, attribute, how it fails, which of its writes fails: epoch 2's)
FAILURES: dict[str, tuple[object, str, Callable, int]] = {
    "model.safetensors": (folder, "save_file", _full_save_file, 3),  # epoch 1: last, best
    "state.pt": (torch, "save", _full_torch_save, 3),
    "training_log.csv": (pathlib.Path, "write_bytes", _full_write_bytes, 2),
}


@pytest.fixture(scope="module")
def straight(demo_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run that never hits a full disk."""
    out = tmp_path_factory.mktemp("straight") / "run"
    assert (
        main(["train", "--config", "demo", *TINY, f"data.cache={demo_cache}", "--out", str(out)])
        == 0
    )
    return out


def _temporaries(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.name.endswith((".tmp", ".old"))]


def _weights(run: Path, which: str) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / which / "model.safetensors")


def _log(run: Path) -> list[list[str]]:
    """epoch, train_loss, val_loss, metric of each row (the rest are wall-clock numbers)."""
    return [row.split(",")[:4] for row in (run / "training_log.csv").read_text().split()]


@pytest.mark.parametrize("name", sorted(FAILURES))
def test_a_run_that_fills_the_disk_stops_in_one_line_and_resumes(
    name, straight, demo_cache, tmp_path, capsys, monkeypatch
):
    owner, attr, failing, nth = FAILURES[name]
    real = getattr(owner, attr)
    calls = []

    def full_at_epoch_2(*args, **kwargs):
        target = str(args[0] if owner is pathlib.Path else args[1])  # the path or file written
        if name in target:
            calls.append(target)
            if len(calls) == nth:
                return failing(*args, **kwargs)
        return real(*args, **kwargs)

    run = tmp_path / "run"
    capsys.readouterr()
    with monkeypatch.context() as m:
        m.setattr(owner, attr, full_at_epoch_2)
        assert (
            main(
                ["train", "--config", "demo", *TINY, f"data.cache={demo_cache}", "--out", str(run)]
            )
            == 2
        )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    written = run / ("checkpoints/last/" if name != "training_log.csv" else "") / name
    assert err.startswith("mbt: error: no space left on ") and f"while writing {written};" in err
    assert err.endswith("is intact"), err
    assert _temporaries(run) == []
    last = run / "checkpoints" / "last"
    assert checkpoint_problem(last) is None  # the previous checkpoint is intact
    assert read_state(last)["epoch"] == (2 if name == "training_log.csv" else 1)

    assert main(["train", "--resume", str(run)]) == 0  # space freed: the run goes on
    for which in ("last", "best"):
        a, b = _weights(straight, which), _weights(run, which)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), which
    assert _log(run) == _log(straight)
    assert _temporaries(run) == []


def test_prepare_that_fills_the_disk_stops_in_one_line_and_goes_on(
    demo_root, tmp_path, capsys, monkeypatch
):
    data = _small_data(demo_root, tmp_path / "data")
    cache = tmp_path / "cache"
    prepare = ["prepare", str(data), *TINY, "--out", str(cache), "--config", "demo"]
    real = pathlib.Path.write_bytes
    clip_writes = []

    def full_from_the_third_clip_file(self: Path, data: bytes):
        if ".jpgs." in self.name or ".npy." in self.name:
            clip_writes.append(self.name)
            if len(clip_writes) >= 3:  # and the disk stays full
                return _full_write_bytes(self, data)
        return real(self, data)

    capsys.readouterr()
    with monkeypatch.context() as m:  # the decoding worker is forked: it inherits this
        m.setattr(pathlib.Path, "write_bytes", full_from_the_third_clip_file)
        assert main(prepare) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert (
        err.startswith("mbt: error: no space left on ") and f"while writing {cache}/clips/" in err
    )
    assert err.endswith("free space and run mbt prepare again to go on"), err
    assert _temporaries(cache) == []
    index = json.loads((cache / "index.json").read_text())
    assert index["failed"] == {}  # a full disk is no fault of a clip: nothing to retry later

    assert main(prepare) == 0  # space freed
    index = json.loads((cache / "index.json").read_text())
    assert len(index["clips"]) == 4 and index["failed"] == {}
