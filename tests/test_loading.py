"""load_model: run directories (with model-folder checkpoints, or older ones without a
config.json), checkpoint and model folders, weights files and Hub ids (mocked, offline)."""

from __future__ import annotations

import json

import huggingface_hub
import pytest
import torch
from safetensors.torch import save_file

from mbt.config import DataConfig, RunConfig, save_config
from mbt.loading import load_model

from .model.test_hub import _inputs, _model


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
        loaded = load_model(source).model
        assert loaded.class_names == ["x", "y", "z"]
        with torch.no_grad():
            torch.testing.assert_close(
                loaded(video=video, audio=audio), model(video=video, audio=audio)
            )


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


def test_a_missing_path_under_a_local_folder_is_not_sent_to_the_hub(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("asked the Hub for a local path")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(FileNotFoundError, match="runs/typo: neither a model directory"):
        load_model("runs/typo")
