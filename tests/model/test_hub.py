"""save_pretrained / from_pretrained: model folders, run folders, Hub ids (mocked, offline)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from mbt.config import RunConfig, save_config
from mbt.model import MBT
from mbt.model import hub as hub_mod

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


def test_loads_a_training_run_directory(tmp_path):
    model = _model()
    run = tmp_path / "run"
    best = run / "checkpoints" / "best"
    best.mkdir(parents=True)
    save_config(RunConfig(model=model.cfg), run / "config.yaml")
    (run / "classes.json").write_text(json.dumps(["x", "y", "z"]))
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, best / "model.safetensors"
    )
    video, audio = _inputs(model.cfg)
    for source in (run, best):
        loaded = MBT.from_pretrained(source)
        assert loaded.class_names == ["x", "y", "z"]
        with torch.no_grad():
            torch.testing.assert_close(
                loaded(video=video, audio=audio), model(video=video, audio=audio)
            )


def test_hub_ids_go_through_hf_hub_download(tmp_path, monkeypatch):
    model = _model()
    model.save_pretrained(tmp_path / "repo")
    calls = []

    def fake_download(repo_id, filename, revision=None):
        calls.append((repo_id, filename, revision))
        return str(tmp_path / "repo" / filename)

    import huggingface_hub

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
    assert hub_mod.WEIGHTS == "model.safetensors"
