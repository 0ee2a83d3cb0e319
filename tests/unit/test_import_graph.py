"""keyq's modules import each other in layers that only point down, with no cycle.

core <- base <- store <- shell <- daemon <- client <- cli <- the package's face. Every
import counts: at module level, inside functions and under ``if TYPE_CHECKING`` alike, since
a lazy import is still a dependency (and was how the last cycle hid).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

KEYQ = Path(__file__).resolve().parents[2] / "keyq"

# Lowest first. A module is in the first layer one of whose prefixes it has.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("keyq.core", "keyq.errors")),
    (
        "base",
        (
            "keyq.clock",
            "keyq.ids",
            "keyq.config",
            "keyq.current",
            "keyq.results",
            "keyq.registry",
            "keyq.triggers",
            "keyq.logs",
            "keyq.eventloop",
            "keyq.replies",
            "keyq.cadence",
            "keyq.schedules",
        ),
    ),
    ("store", ("keyq.store",)),
    ("shell", ("keyq.handoff", "keyq.channel", "keyq.producer", "keyq.context")),
    ("daemon", ("keyq.daemon",)),
    ("client", ("keyq.client",)),
    ("cli", ("keyq.cli",)),
    ("face", ("keyq.__main__", "keyq")),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(KEYQ.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(KEYQ.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> Iterator[str]:
    """Every keyq module that ``name`` imports, anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0]
                base = f"{parent}.{base}" if base else parent
            # `from keyq import handoff` imports the module keyq.handoff, not the package's
            # face; `from keyq.store.db import QUERIES` imports keyq.store.db.
            submodules = [f"{base}.{alias.name}" for alias in node.names]
            targets = [m for m in submodules if m in known] or [base]
        else:
            continue
        yield from (t for t in targets if t in known and t != name)


def layer_of(name: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{name} is in no layer: add it to LAYERS")


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: set(imports_of(name, path, known)) for name, path in found.items()}


def reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = list(edges.get(start, ()))
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(edges.get(node, ()))
    return seen


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every group of modules that reach each other (a strongly connected component of
    more than one), sorted: a few dozen modules, so the square walk is fine."""
    reach = {node: reachable(edges, node) for node in edges}
    groups = {
        tuple(sorted(m for m in reach[node] if node in reach[m]))
        for node in edges
        if node in reach[node]
    }
    return sorted(list(group) for group in groups)


def test_import_graph__no_module_is_in_a_cycle() -> None:
    """No two keyq modules import each other, however indirectly or lazily."""
    assert cycles(graph()) == []


def test_import_graph__every_import_points_down_or_across() -> None:
    """An import never reaches a higher layer: the core knows no shell, the store no daemon,
    the daemon no client."""
    upward = [
        f"{name} ({LAYERS[layer_of(name)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for name, targets in graph().items()
        for target in sorted(targets)
        if layer_of(target) > layer_of(name)
    ]
    assert upward == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("def f():\n    from keyq.daemon import daemon\n", {"keyq.daemon.daemon"}),
        ("if TYPE_CHECKING:\n    import keyq.client\n", {"keyq.client"}),
        ("from . import db\n", {"keyq.store.db"}),
        ("from ..core.engine import Engine\n", {"keyq.core.engine"}),
    ],
)
def test_import_graph__the_reader_sees_lazy_and_relative_imports(
    tmp_path: Path, source: str, expected: set[str]
) -> None:
    """The checker itself finds imports in functions, under TYPE_CHECKING, and relative ones."""
    path = tmp_path / "probe.py"
    path.write_text(source)
    known = set(modules())
    assert set(imports_of("keyq.store.probe", path, known)) == expected


def test_import_graph__cycles_are_found() -> None:
    """The cycle finder reports a loop of three and ignores a chain."""
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [["a", "b", "c"]]
