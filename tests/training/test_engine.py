"""One training step and one evaluation pass: modality dropout, logits gathered over processes."""

from __future__ import annotations

import torch

from mbt.data.dataset import collate_skip_failed
from mbt.data.loaders import open_source
from mbt.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from mbt.training import engine, loop

from .conftest import tiny_config


def test_drop_modality_zeroes_one_input_per_dropped_clip():
    g = torch.Generator().manual_seed(0)
    inputs = {"video": torch.ones(64, 2, 3, 4, 4), "audio": torch.ones(64, 8, 4)}
    out = engine.drop_modality(inputs, 0.5, g)
    v = out["video"].flatten(1).amax(1)
    a = out["audio"].flatten(1).amax(1)
    assert ((v == 0) & (a == 0)).sum() == 0  # never both
    dropped = (v == 0).sum() + (a == 0).sum()
    assert 16 <= dropped <= 48  # about half of 64
    assert engine.drop_modality({"video": inputs["video"]}, 0.5, g)["video"].equal(inputs["video"])


def test_top1_hits_single_and_multi_label():
    logits = torch.tensor([[0.1, 2.0, 0.3], [3.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # top: 1, 0, 2
    assert engine.top1_hits(logits, torch.tensor([1, 2, 2]), multi_label=False) == 2
    multi_hot = torch.tensor([[0, 1, 1], [0, 1, 0], [1, 0, 1]])  # top is a positive: yes, no, yes
    assert engine.top1_hits(logits, multi_hot, multi_label=True) == 2


def test_collect_logits_on_a_process_without_clips(demo_cache, monkeypatch):
    # The val split is smaller than the world size: this process's shard is empty.
    cfg = tiny_config(f"data.cache={demo_cache}")
    val = open_source(cfg.data, cfg.model).dataset("val", train=False)
    cfg = loop.replace(cfg, model=loop.replace(cfg.model, num_classes=len(val.classes)))
    model = loop.build_model(cfg)
    dev = torch.device("cpu")
    loader = [collate_skip_failed([val[i] for i in range(3)])]
    variants = {"fusion": {}, "video_only": {"audio": None}}
    other = engine.collect_logits(
        model, loader, dev, variants=variants, normalization="inception"
    )  # the other process
    parts = []

    def gather(local):
        parts.append(local)
        return [(other[0], other[1], other[2]), local]

    monkeypatch.setattr(engine.dist, "all_gather_objects", gather)
    logits, labels, idx = engine.collect_logits(
        model, [], dev, variants=variants, normalization="inception"
    )
    assert parts[0][0]["fusion"].shape == (0, len(val.classes))
    for k in variants:
        assert logits[k].equal(other[0][k]), k
    assert labels.equal(other[1])
    assert idx.tolist() == [0, 1, 2]


def test_uint8_video_is_normalised_on_the_device():
    """Items carry uint8 video; the step and evaluation must normalise it (the model never
    sees 0..255)."""
    video = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1, 1).expand(2, 2, 3, 4, 4)
    batch = {"video": video, "audio": torch.zeros(2, 8, 4), "label": torch.zeros(2)}
    dev = torch.device("cpu")
    x = engine.model_inputs(batch, ("video", "audio"), dev, "inception")
    assert x["video"].dtype == torch.float32
    assert x["video"][0].eq(-1).all() and x["video"][1].eq(1).all()
    imagenet = engine.model_inputs(batch, ("video",), dev, "imagenet")["video"]
    assert torch.allclose(
        imagenet[1, 0, :, 0, 0], (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    )

    class Spy(torch.nn.Module):
        cfg = loop.replace(tiny_config().model, num_classes=2)

        def forward(self, video=None, audio=None, **kw):
            Spy.seen = video
            return torch.zeros(video.shape[0], 2)

    engine.collect_logits(Spy(), [{**batch, "index": torch.arange(2)}], dev,
                          normalization="inception")  # fmt: skip
    assert Spy.seen.dtype == torch.float32 and Spy.seen.abs().max() == 1.0
