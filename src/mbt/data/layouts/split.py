"""Train / val / test: the data set's own splits where it has them, else a held-out validation
set drawn from the training clips.

Held out by whole groups when clips have groups (UCF-style ``g<gg>``, as the official UCF101
splits: clips of one group share actor and scene, so a split by clip leaks), with
``data.val_fraction`` and ``data.split_seed``; stratified by class either way: each class with
two clips or more gives about its share to validation and keeps at least one clip for
training, whatever its file names (a class of ungrouped names next to UCF-named classes
included). Every draw comes from a generator seeded by (seed, name), so the split depends on
neither file-system order nor on anything else drawn.
"""

from __future__ import annotations

import zlib
from collections import Counter, defaultdict

import numpy as np

from mbt.config import DataConfig
from mbt.data.layouts.base import Candidate, Clip


def split(cands: list[Candidate], clips: dict[str, Clip], cfg: DataConfig) -> dict[str, list[Clip]]:
    """train / val / test lists, each sorted by key."""
    declared = {c.key: c.split for c in cands}
    out: dict[str, list[Clip]] = {"train": [], "val": [], "test": []}
    pool = []
    for key in sorted(clips):
        s = declared[key]
        if s in ("val", "test"):
            out[s].append(clips[key])
        else:
            pool.append(clips[key])
    if out["val"]:  # the data set has its own validation split
        out["train"] = pool
        return out
    val_keys = hold_out(pool, cfg.val_fraction, cfg.split_seed)
    out["train"] = [c for c in pool if c.key not in val_keys]
    out["val"] = [c for c in pool if c.key in val_keys]
    return out


def hold_out(clips: list[Clip], fraction: float, seed: int) -> set[str]:
    """Keys of the validation clips: whole groups if any clip has one (a clip without a group
    is a group of its own, so one odd file name cannot turn off the group split), else per
    class."""
    if len(clips) < 2:
        return set()
    if any(c.group is not None for c in clips):
        chosen = _hold_out_groups(clips, fraction, seed)
        if chosen is not None:
            return chosen
    return _hold_out_per_class(clips, fraction, seed)


def _hold_out_groups(clips: list[Clip], fraction: float, seed: int) -> set[str] | None:
    """Whole groups, stratified by (first) class; None if there is only one group.

    Groups are visited in one seeded order; a group is held out when a class in it is still
    short of its share (``round(fraction * n)``, at least one) and taking it undershoots that
    share less than leaving it, unless it would take the last training clip of a class in it.
    So each class gets about its share, and a class whose clips all share one group stays in
    training.
    """
    group = {c.key: c.group if c.group is not None else f"\0{c.key}" for c in clips}
    members: dict[str, Counter] = defaultdict(Counter)  # group -> clips per class
    for c in clips:
        members[group[c.key]][c.labels[0]] += 1
    if len(members) < 2:
        return None
    total = Counter(c.labels[0] for c in clips)
    target = {k: min(n - 1, max(1, round(fraction * n))) for k, n in total.items() if n >= 2}
    held: Counter = Counter()
    groups = sorted(members)
    chosen = set()
    for i in _seeded(seed, "groups").permutation(len(groups)):
        counts = members[groups[i]]
        wanted = any(
            held[k] == 0 or held[k] + n / 2 < target[k]
            for k, n in counts.items()
            if held[k] < target.get(k, 0)
        )
        if wanted and all(held[k] + n < total[k] for k, n in counts.items()):
            chosen.add(groups[i])
            held.update(counts)
    return {c.key for c in clips if group[c.key] in chosen}


def _hold_out_per_class(clips: list[Clip], fraction: float, seed: int) -> set[str]:
    """Stratified by (first) class: each class gives round(fraction * n) clips, at least one."""
    by_class: dict[int, list[str]] = defaultdict(list)
    for c in clips:
        by_class[c.labels[0]].append(c.key)
    val = set()
    for label, keys in sorted(by_class.items()):
        if len(keys) < 2:
            continue
        k = min(len(keys) - 1, max(1, round(fraction * len(keys))))
        perm = _seeded(seed, f"class{label}").permutation(len(keys))
        val.update(keys[i] for i in perm[:k])
    return val


def _seeded(seed: int, name: str) -> np.random.Generator:
    """A generator for one (seed, name) pair, independent of any other name."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])
