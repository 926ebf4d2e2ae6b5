"""Held-out validation: whole groups, never straddling train and val."""

from __future__ import annotations

from collections import Counter

from mbt.config import DataConfig
from mbt.data.layouts import Clip, scan
from mbt.data.layouts.base import Candidate
from mbt.data.layouts.split import hold_out, split
from tests.data.layouts.files import groups, make_video, ucf_stem


def test_one_clip_without_a_group_keeps_the_split_group_aware(tmp_path):
    root = tmp_path / "d"
    for cls in ("Jump", "Run"):
        for g in range(1, 6):
            for c in (1, 2):
                make_video(root / f"video/{cls}/{ucf_stem(cls, g, c)}.mp4", audio=True)
    make_video(root / "video/Run/extra_take.mp4", audio=True)  # no g<gg> in its name
    for seed in range(4):
        index = scan(root, DataConfig(val_fraction=0.2, split_seed=seed))
        assert index.val and index.train
        train, val = groups(index.train) - {None}, groups(index.val) - {None}
        assert not train & val, seed


def test_without_groups_each_class_gives_its_share():
    clips = [
        Clip(None, None, (k,), f"{k}-{i}") for k, n in ((0, 10), (1, 4), (2, 1)) for i in range(n)
    ]
    val = hold_out(clips, 0.2, seed=0)
    per_class = Counter(int(key.split("-")[0]) for key in val)
    assert per_class == {0: 2, 1: 1}  # round(0.2 * n), at least one; a lone clip stays in train
    assert hold_out(clips, 0.2, seed=0) == val and hold_out(clips, 0.2, seed=1) != val


def test_declared_splits_win():
    cands = [
        Candidate(None, None, ("a",), k, split=s)
        for k, s in (("x", "train"), ("y", "val"), ("z", "test"), ("w", None))
    ]
    clips = {c.key: Clip(None, None, (0,), c.key) for c in cands}
    out = split(cands, clips, DataConfig(val_fraction=0.5))
    assert [[c.key for c in out[s]] for s in ("train", "val", "test")] == [["w", "x"], ["y"], ["z"]]


def test_ungrouped_names_beside_grouped_ones_keep_every_class_in_both_splits():
    # The case: one class named UCF-style (groups), the other not (each clip its own
    # group). Drawn from one pool, the ungrouped clips could fill the validation share alone
    # and leave the grouped class without a validation clip.
    clips = [
        Clip(None, None, (0,), f"jump-g{g}-c{c}", group=f"g{g:02d}")
        for g in (1, 2, 3)
        for c in (1, 2)
    ]
    clips += [Clip(None, None, (1,), f"run-take{i}") for i in range(6)]
    for seed in range(20):
        val = hold_out(clips, 0.2, seed)
        per_class = Counter(c.labels[0] for c in clips if c.key in val)
        assert per_class == {0: 2, 1: 1}, (seed, sorted(val))  # round(0.2 * 6) = 1 at least
        held_groups = {c.group for c in clips if c.key in val and c.group}
        assert all(c.key in val for c in clips if c.group in held_groups), seed  # whole groups
