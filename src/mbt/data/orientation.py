"""Display orientation: how a player turns a video's stored pixels to show them upright.

Phones store a portrait clip as landscape pixels plus a display matrix (the mp4 / mov track
header's ``tkhd`` matrix; ffprobe shows ``rotation``); every player, and ``ffmpeg`` itself
(its ``autorotate``), shows the clip turned by it. FFmpeg hands the matrix to PyAV on every
decoded frame, as ``DISPLAYMATRIX`` side data (``frame.rotation`` gives only its angle, not
a mirror), so :class:`mbt.data.video.VideoFile` reads it from the first frame it decodes.

The matrix (libavutil/display.h) maps a stored pixel (x, y) to the shown (a x + c y, b x + d y)
plus a translation, with ``(a, b, c, d) = (m[0], m[1], m[3], m[4])`` and y pointing down. For
the eight quarter turns and mirrors, that is a transpose where ``a = d = 0``, then a flip of
the rows and / or columns by the signs: the picture ``ffmpeg`` shows for each of them. A
matrix that is not a quarter turn (a tilt by a few degrees, which ``ffmpeg`` shows rotated on
a black canvas) is not applied: such pixels are kept as stored.
"""

from __future__ import annotations

from dataclasses import dataclass

import av
import numpy as np
from av.sidedata.sidedata import Type

QUARTER_TURN_TOLERANCE = 0.02  # |sin| of ~1 degree: within it, a matrix is a quarter turn


@dataclass(frozen=True)
class Orientation:
    """Stored pixels -> the picture shown: transpose, then flip rows (upside down) and / or
    columns (left-right), in that order."""

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False

    @property
    def name(self) -> str:
        """``upright``, ``rot90`` / ``rot180`` / ``rot270`` (turned counter-clockwise, as
        FFmpeg and ``frame.rotation`` count), ``hflip``, ``vflip``, ``transpose`` or
        ``transverse`` (the cache records it)."""
        return _NAMES[(self.transpose, self.flip_rows, self.flip_cols)]

    def apply(self, image: np.ndarray) -> np.ndarray:
        """(H, W, C) stored -> (H', W', C) shown (W x H after a transpose); a view."""
        x = image.transpose(1, 0, 2) if self.transpose else image  # (W, H, C)
        if self.flip_rows:
            x = x[::-1]
        if self.flip_cols:
            x = x[:, ::-1]
        return x

    def size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) shown of a stored width x height picture."""
        return (height, width) if self.transpose else (width, height)


UPRIGHT = Orientation()
_NAMES = {
    (False, False, False): "upright",
    (True, True, False): "rot90",
    (False, True, True): "rot180",
    (True, False, True): "rot270",
    (False, False, True): "hflip",
    (False, True, False): "vflip",
    (True, False, False): "transpose",
    (True, True, True): "transverse",
}


def from_matrix(matrix: np.ndarray) -> Orientation:
    """The :class:`Orientation` of a display matrix (9 integers, FFmpeg's layout)."""
    a, b, c, d = (float(matrix[i]) for i in (0, 1, 3, 4))  # 16.16 fixed point
    scale = max(abs(a), abs(b), abs(c), abs(d))
    if scale == 0:
        return UPRIGHT  # a degenerate matrix: nothing to show by
    tol = QUARTER_TURN_TOLERANCE * scale
    if abs(b) <= tol and abs(c) <= tol:  # x -> a x, y -> d y
        return Orientation(False, flip_rows=d < 0, flip_cols=a < 0)
    if abs(a) <= tol and abs(d) <= tol:  # x -> c y, y -> b x: rows and columns trade places
        return Orientation(True, flip_rows=b < 0, flip_cols=c < 0)
    return UPRIGHT  # not a quarter turn: not applied (module docstring)


def frame_orientation(frame: av.VideoFrame) -> Orientation:
    """The orientation the frame's ``DISPLAYMATRIX`` side data says; upright without one."""
    data = frame.side_data.get(Type.DISPLAYMATRIX)
    raw = b"" if data is None else bytes(data)
    if len(raw) < 36:
        return UPRIGHT
    return from_matrix(np.frombuffer(raw, dtype=np.int32, count=9))  # 9 int32, native order
