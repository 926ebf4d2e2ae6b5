"""The package's layering, read from the source: every import of every module, at module level
and inside functions, and the names ``mbt/__init__.py`` imports on first use.

No two mbt modules import each other (no cycle of any length); ``model/`` and ``data/`` never
import ``training/`` (nor each other); the applications (predict,
explain, export) never import ``mbt.training``. What the command line imports at start-up is
checked by running it (tests/test_cli_imports.py).
"""

from __future__ import annotations

import ast
from pathlib import Path

import mbt

SRC = Path(mbt.__file__).parent
APPLICATIONS = ("mbt.predict", "mbt.explain", "mbt.export")


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _resolve(name: str) -> str | None:
    """The mbt module ``name`` is, or the closest package above it (None: not ours)."""
    while name.startswith("mbt"):
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str) -> set[str]:
    """The mbt modules ``module`` imports anywhere in its source (functions included)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from . import x / from ..a import b
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            # `from mbt.training import checkpoint`: the submodule, when it is one
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names
            ]
        else:
            continue
        found |= {m for m in map(_resolve, targets) if m is not None}
    if module == "mbt":  # PEP 562: imported on first use of the name
        found |= set(mbt._LAZY.values())
    return found - {module}


def import_graph() -> dict[str, set[str]]:
    return {m: imports_of(m) for m in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle ``[a, b, ..., a]`` of ``graph``, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_reader_sees_function_level_and_relative_imports():
    """The checks below can fail: the reader finds imports inside functions, and a cycle."""
    assert "mbt.training.loop" in imports_of("mbt.cli")  # inside _cmd_train only
    assert "mbt.model.folder" in imports_of("mbt.model.hub")
    assert "mbt.model.mbt" in imports_of("mbt")  # the lazy MBT attribute
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_two_modules_import_each_other():
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()) or [])


def test_model_and_data_import_neither_training_nor_each_other():
    graph = import_graph()
    for module, imported in graph.items():
        if module.startswith(("mbt.model", "mbt.data")):
            bad = sorted(m for m in imported if m.startswith("mbt.training"))
            assert not bad, f"{module} imports {bad}"
        for layer, other in (("mbt.model", "mbt.data"), ("mbt.data", "mbt.model")):
            if module.startswith(layer):
                bad = sorted(m for m in imported if m.startswith(other))
                assert not bad, f"{module} imports {bad}"


def test_applications_never_import_training():
    graph = import_graph()
    for module in APPLICATIONS:
        bad = sorted(m for m in graph[module] if m.startswith("mbt.training"))
        assert not bad, f"{module} imports {bad}"
