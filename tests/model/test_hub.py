"""save_pretrained / from_pretrained: model folders, checkpoint folders, weights files and Hub
ids (mocked, offline); a run directory is sent to ``mbt.load_model`` (tests/test_loading.py)."""

from __future__ import annotations

import json
import shutil

import huggingface_hub
import pytest
import torch
from safetensors.torch import save_file

from mbt.config import RunConfig, save_config
from mbt.model import MBT
from mbt.model import folder as folder_mod
from mbt.training.checkpoint import save_checkpoint

from ..conftest import tiny_model_config


def _model(**changes) -> MBT:
    torch.manual_seed(0)
    model = MBT(tiny_model_config(num_classes=3, **changes))
    with torch.no_grad():
        model.head.weight.normal_()  # non-zero logits
    return model.eval()


def _inputs(cfg):
    torch.manual_seed(1)
    video = torch.randn(2, cfg.num_frames, 3, cfg.image_size, cfg.image_size)
    return video, torch.randn(2, cfg.audio_frames, cfg.mel_bins)


def test_round_trip_keeps_weights_config_and_class_names(tmp_path):
    model = _model(classifier="gap", fusion="vanilla")
    model.save_pretrained(tmp_path, class_names=["a", "b", "c"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["model_type"] == "mbt" and data["classifier"] == "gap"
    loaded = MBT.from_pretrained(tmp_path)
    assert loaded.cfg == model.cfg and loaded.class_names == ["a", "b", "c"]
    assert not loaded.training
    video, audio = _inputs(model.cfg)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(video=video, audio=audio), model(video=video, audio=audio)
        )


def test_config_changes_and_bad_configs(tmp_path):
    _model().save_pretrained(tmp_path)
    off = MBT.from_pretrained(tmp_path, test_with_bottlenecks=False)
    assert off.cfg.test_with_bottlenecks is False
    data = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**data, "widht": 3}))
    with pytest.raises(ValueError, match="widht"):
        MBT.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="class_names"):
        _model().save_pretrained(tmp_path / "x", class_names=["only one"])


def test_hub_ids_go_through_hf_hub_download(tmp_path, monkeypatch):
    model = _model()
    model.save_pretrained(tmp_path / "repo")
    calls = []

    def fake_download(repo_id, filename, revision=None):
        calls.append((repo_id, filename, revision))
        return str(tmp_path / "repo" / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    loaded = MBT.from_pretrained("someone/mbt-tiny", revision="v1")
    assert {c[1] for c in calls} == {"config.json", "model.safetensors"}
    assert all(c[0] == "someone/mbt-tiny" and c[2] == "v1" for c in calls)
    assert loaded.cfg == model.cfg


def test_missing_paths_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a model directory"):
        MBT.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError):
        MBT.from_pretrained(tmp_path / "nope" / "deeper")
    assert folder_mod.WEIGHTS == "model.safetensors"


def test_a_checkpoint_folder_is_a_model_folder(tmp_path):
    model = _model()
    best = save_checkpoint(
        tmp_path / "run" / "checkpoints" / "best", model, {"epoch": 1, "classes": ["x", "y", "z"]}
    )
    for source in (best, best / "model.safetensors"):
        loaded = MBT.from_pretrained(source)
        assert loaded.class_names == ["x", "y", "z"] and loaded.cfg == model.cfg
        for k, v in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[k], v), k


def test_a_run_directory_or_an_older_checkpoint_names_load_model(tmp_path):
    """What needs the run's files (config.yaml, checkpoints/, state.pt) is mbt.load_model's."""
    model = _model()
    run = tmp_path / "run"
    best = run / "checkpoints" / "best"
    best.mkdir(parents=True)
    save_config(RunConfig(model=model.cfg), run / "config.yaml")
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, best / "model.safetensors"
    )
    with pytest.raises(FileNotFoundError, match="neither a model directory.*mbt.load_model") as e:
        MBT.from_pretrained(run)
    assert "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="without a config.json; mbt.load_model"):
        MBT.from_pretrained(best)  # written before checkpoints had a config.json


def test_a_damaged_model_folder_is_refused(tmp_path):
    best = save_checkpoint(tmp_path / "best", _model(), {"epoch": 1})
    shutil.copytree(best, tmp_path / ".best.old")  # no fallback: .old copies are a run's
    weights = best / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\x00" * 8)
    with pytest.raises(ValueError, match="damaged model folder .model.safetensors differs from"):
        MBT.from_pretrained(best)
