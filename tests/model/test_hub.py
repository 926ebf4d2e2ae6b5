"""save_pretrained / from_pretrained / load_model: model folders, run folders, checkpoints,
Hub ids (mocked, offline), and the layer rule (the model package imports neither data nor
training)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import huggingface_hub
import pytest
import torch
from safetensors.torch import save_file

import mbt.model
from mbt.config import DataConfig, RunConfig, save_config
from mbt.model import MBT
from mbt.model import hub as hub_mod
from mbt.model.hub import load_model

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


def test_load_model_gives_names_data_and_folder(tmp_path):
    model = _model()
    data = DataConfig(test_clips=2, normalization="imagenet")
    model.save_pretrained(tmp_path / "m", class_names=["a", "b", "c"], data=data)
    loaded = load_model(tmp_path / "m" / "model.safetensors")
    assert loaded.class_names == ["a", "b", "c"] and loaded.model.class_names == ["a", "b", "c"]
    assert loaded.data == data and loaded.run_config is None
    assert loaded.folder == tmp_path / "m" and not loaded.model.training
    # Without a data config the defaults apply.
    model.save_pretrained(tmp_path / "plain")
    assert load_model(tmp_path / "plain").data == DataConfig()
    with pytest.raises(ValueError, match="best or last"):
        load_model(tmp_path / "m", which="final")


def test_run_directory_with_model_folder_checkpoints(tmp_path):
    model = _model()
    run = tmp_path / "run"
    cfg = RunConfig(model=model.cfg, data=DataConfig(root="/data/x", test_clips=3))
    for which in ("best", "last"):
        model.save_pretrained(
            run / "checkpoints" / which, class_names=["x", "y", "z"], data=cfg.data
        )
    save_config(cfg, run / "config.yaml")
    loaded = load_model(run, "last")
    assert loaded.folder == run / "checkpoints" / "last"
    assert loaded.run_config == cfg and loaded.data == cfg.data
    # A save interrupted between its two renames leaves .best.old: that one is read.
    (run / "checkpoints" / "best").rename(run / "checkpoints" / ".best.old")
    assert load_model(run).folder == run / "checkpoints" / ".best.old"
    assert load_model(run).run_config == cfg  # still known to be inside the run


def test_class_names_must_fit_the_head(tmp_path):
    model = _model()
    run = tmp_path / "run"
    (run / "checkpoints" / "best").mkdir(parents=True)
    save_config(RunConfig(model=model.cfg), run / "config.yaml")
    (run / "classes.json").write_text(json.dumps(["x", "y"]))
    model.save_pretrained(run / "checkpoints" / "best")
    with pytest.raises(ValueError, match="2 class names for a 3-class model"):
        load_model(run)


def test_weights_that_do_not_fit_are_one_line_errors(tmp_path):
    _model().save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**data, "width": 32, "num_heads": 2}))
    with pytest.raises(ValueError, match="weights do not fit the config") as e:
        load_model(tmp_path)
    assert "\n" not in str(e.value)


def test_hub_failures_are_file_not_found_errors(monkeypatch):
    def offline(repo_id, filename, revision=None):
        raise huggingface_hub.utils.LocalEntryNotFoundError("offline and not in the cache")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(FileNotFoundError, match="someone/nothing: no such local folder.*offline"):
        load_model("someone/nothing")


def test_the_model_package_imports_neither_data_nor_training():
    for path in Path(mbt.model.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                assert not name.startswith(("mbt.data", "mbt.training")), f"{path.name}: {name}"


def test_a_missing_path_under_a_local_folder_is_not_sent_to_the_hub(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("asked the Hub for a local path")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(FileNotFoundError, match="runs/typo: neither a model directory"):
        load_model("runs/typo")
