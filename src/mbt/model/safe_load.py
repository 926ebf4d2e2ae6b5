"""Reading PyTorch pickle files (``.pth``, ``.pt``, ``state.pt``) without running their code.

``torch.load`` unpickles, and a pickle may name any Python object to build: a file of unknown
origin (a downloaded ViT or AST ``.pth``, a checkpoint's ``state.pt`` copied from elsewhere) is
read with ``weights_only=True``, which allows tensors and plain containers only.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

_GLOBAL = re.compile(r"GLOBAL (\S+)")  # the object torch's weights-only unpickler refused


def torch_load(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU: tensors and plain containers only.

    A file that needs any other Python object is refused with a ValueError saying it is not a
    trusted checkpoint (PyTorch's own message advises ``weights_only=False``, which would run
    whatever code the file names: the wrong advice for a file of unknown origin). The message
    does not name the file: callers add it.

    Raises:
        ValueError: the file needs Python objects (or is not a pickle at all).
        RuntimeError, OSError, EOFError: truncated or unreadable (torch's own errors).
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = _GLOBAL.search(str(e))
        why = (
            f"it asks to load the Python object {found[1]}"
            if found
            else "it holds more than tensors and plain containers, or is damaged"
        )
        raise ValueError(f"not a trusted checkpoint: {why}; refused") from None
