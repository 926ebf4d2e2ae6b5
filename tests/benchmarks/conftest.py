"""The benchmark scripts import each other by module name (``import machine``), as they do when
run as ``python benchmarks/<name>.py``: put their folder on the path."""

from __future__ import annotations

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))
