"""Progress bars for people, clean logs for files.

A tqdm bar redraws itself with carriage returns; in a terminal that is one line that moves, but
in a log file (CI, ``nohup``, ``> train.log``) every redraw is kept, thousands per epoch. So a bar
is shown only when stderr is a terminal; otherwise the caller's one summary line per epoch (or
per run) is the whole record.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


def interactive() -> bool:
    """Whether stderr is a terminal (where tqdm draws its bars)."""
    return sys.stderr.isatty()


def progress_bar(*, disable: bool = False, **kwargs: Any) -> tqdm:
    """A ``tqdm`` bar that is silently disabled when stderr is not a terminal.

    Args:
        disable: turn the bar off regardless (e.g. on processes other than rank 0).
        **kwargs: passed to ``tqdm`` (``total``, ``desc``, ``unit`` ...).
    """
    return tqdm(disable=disable or not interactive(), dynamic_ncols=True, **kwargs)


def write(message: str) -> None:
    """Print a line without breaking an active bar (``tqdm.write``; plain print otherwise)."""
    tqdm.write(message)
