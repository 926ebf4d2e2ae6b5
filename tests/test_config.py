"""Configuration: defaults, YAML + CLI overrides, validation errors that name the field."""

from __future__ import annotations

import pytest

from mbt.config import (
    ModelConfig,
    RunConfig,
    from_dict,
    load_config,
    parse_override,
    replace,
    save_config,
    to_dict,
)


def test_overrides_apply_last_and_are_typed(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.1\n  epochs: 3\nmodel:\n  fusion_layer: 4\n")
    cfg = load_config(path, ["train.lr=1e-3", "model.modalities=[audio]", "data.hflip=false"])
    assert cfg.train.lr == 0.001 and cfg.train.epochs == 3
    assert cfg.model.fusion_layer == 4 and cfg.model.modalities == ("audio",)
    assert cfg.data.hflip is False
    assert isinstance(cfg.train.lr, float)


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(None, ["model.width=96", "model.num_heads=4", "data.crop_scale=[0.5, 1.0]"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    assert from_dict(RunConfig, to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=1", "unknown config key.*train.lrr"),
        ("modell.width=3", "unknown config key.*modell"),
        ("train.epochs=2.5", "train.epochs: expected an integer"),
        ("train.compile=yes please", "train.compile: expected true/false"),
        ("model.fusion=early", r"model.fusion: must be one of"),
        ("model.fusion_layer=13", r"model.fusion_layer: must be in \[0, depth=12\]"),
        ("model.num_heads=5", "model.num_heads: must divide width 768"),
        ("train.lr=-1", "train.lr: must be > 0"),
        ("train.early_stopping_watch=acc", r"train.early_stopping_watch: must be one of \['both'"),
        (
            "train.early_stopping_min_delta=1",
            r"train.early_stopping_min_delta: must be in \[0, 1\)",
        ),
        ("train.early_stopping_min_delta=-0.1", "train.early_stopping_min_delta: must be in"),
        (
            "train.early_stopping_loss_min_delta=-1",
            "train.early_stopping_loss_min_delta: must be >=",
        ),
        ("model.modalities=[video, video]", "model.modalities: must be distinct"),
        ("train.lr", "expected key.sub=value"),
    ],
)
def test_bad_values_are_errors_naming_the_field(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, [override])


def test_presets_and_derived_sizes():
    paper = ModelConfig()  # the defaults are the paper's MBT-B/16
    assert paper.video_grid == (8, 14, 14)  # 8 x 196 = 1568 tokens
    assert paper.audio_grid == (50, 8)  # 400 tokens for 800 x 128
    assert load_config("mbt_b16_paper").model == replace(
        paper, drop_path_rate=0.3, init="vit_base_patch16_224.augreg_in21k"
    )
    ast = ModelConfig(audio_frames=1024, audio_patch_stride=10)
    assert ast.audio_grid == (101, 12)  # AST's 1212 overlapping patches
    released = load_config("mbt_b16x2").model
    assert released.video_grid == (16, 14, 14)  # 3136 tokens
    assert released.num_bottleneck_tokens == 5  # B = 4, +1 with the token classifier
    tiny = load_config("demo").model
    assert tiny.fusion_start == 2
    assert replace(tiny, fusion="late").fusion_start == 4
    assert replace(tiny, modalities=("audio",)).fusion_start == 4


def test_base_chains_merge_section_by_section(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.yaml").write_text("base: demo\ntrain:\n  epochs: 3\n")
    (tmp_path / "sub" / "b.yaml").write_text(
        "base: ../a.yaml\nmodel:\n  modalities: [audio]\ntrain:\n  lr: 0.01\n"
    )
    cfg = load_config(tmp_path / "sub" / "b.yaml", ["train.seed=7"])
    demo = load_config("demo")
    assert cfg.model == replace(demo.model, modalities=("audio",))
    assert cfg.data == demo.data
    assert cfg.train == replace(demo.train, epochs=3, lr=0.01, seed=7)
    # The shipped baselines are the demo with one stream.
    assert load_config("demo_audio") == replace(
        demo, model=replace(demo.model, modalities=("audio",))
    )


def test_base_errors_name_the_file(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: nope\n")
    with pytest.raises(ValueError, match="b.yaml: base nope: no such config file or preset"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ValueError, match=r"base cycle a.yaml -> b.yaml -> a.yaml"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: [demo]\n")
    with pytest.raises(ValueError, match="c.yaml: base must be a preset name"):
        load_config(tmp_path / "c.yaml")


def test_a_saved_config_is_flat(tmp_path):
    cfg = load_config("demo_video")
    save_config(cfg, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert "base" not in text and "modalities:\n  - video" in text
    assert load_config(tmp_path / "config.yaml") == cfg


def test_parse_override_nests():
    assert parse_override("a.b.c=3") == {"a": {"b": {"c": 3}}}
