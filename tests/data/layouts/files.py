"""Tiny media trees for the layout tests: short real files, written at test time."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.data.media import sine, write_audio, write_video

RATE = 16000


def make_video(path: Path, *, audio: bool = False, level: int = 0) -> Path:
    """A 0.5 s, 16x16 clip; ``level`` sets the grey value so files can be told apart."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = np.full((4, 16, 16, 3), level, np.uint8)
    return write_video(path, frames, 8, audio=sine(440, 0.5, RATE) if audio else None)


def make_wav(path: Path, freq: float = 440.0) -> Path:
    """A 0.5 s sine wav."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_audio(path, sine(freq, 0.5, RATE), RATE)


def ucf_stem(cls: str, g: int, c: int) -> str:
    return f"v_{cls}_g{g:02d}_c{c:02d}"


def groups(clips) -> set[str]:
    return {c.group for c in clips}
