"""The pure core imports no I/O, clock or shell module (STYLE §2 "Enforce it")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

KEYQ = Path(__file__).resolve().parents[2] / "keyq"
CORE = sorted(p.stem for p in (KEYQ / "core").glob("*.py") if p.stem != "__init__")
ALLOWED_KEYQ = {f"keyq.core.{name}" for name in CORE} | {"keyq", "keyq.core", "keyq.errors"}
BANNED = {"anyio", "aiosqlite", "asyncio", "structlog", "sqlite3", "time", "socket"}


def _is_package(name: str) -> bool:
    return KEYQ.parent.joinpath(*name.split(".")).is_dir()


def _imported_modules(source: str, package: str = "keyq.core") -> list[str]:
    """Every module an import statement in ``source`` names, resolved to absolute form."""
    names: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0]
                base = f"{parent}.{base}" if base else parent
            names.append(base)
            # `from keyq.core import engine` imports the module keyq.core.engine
            if _is_package(base):
                names.extend(f"{base}.{alias.name}" for alias in node.names)
    return names


def _violations(source: str) -> list[str]:
    bad = []
    for name in _imported_modules(source):
        top = name.split(".")[0]
        if top in BANNED or (top == "keyq" and name not in ALLOWED_KEYQ):
            bad.append(name)
    return bad


@pytest.mark.parametrize("module", CORE)
def test_core_imports__core_module_is_pure(module: str) -> None:
    """A core module imports no I/O library, no clock and no keyq shell module."""
    path = KEYQ / "core" / f"{module}.py"
    assert path.is_file(), f"core module {path} is missing"
    assert _violations(path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    "source",
    [
        "import time",
        "import asyncio.tasks",
        "from anyio import sleep",
        "import aiosqlite as db",
        "from structlog import get_logger",
        "import sqlite3",
        "import socket",
        "from keyq.daemon import Daemon",
        "from keyq import store",
        "from . import clock",
        "from .cli import app",
        "def f():\n    import time\n    return time.time()",
    ],
)
def test_core_imports__checker_catches_forbidden_import(source: str) -> None:
    """The checker itself flags each forbidden form, including local and relative imports."""
    assert _violations(source) != []


@pytest.mark.parametrize(
    "source",
    [
        "import random\nimport heapq",
        "from keyq.errors import SlotError",
        "from keyq.core.model import RunId",
        "from .states import RunState",
        "from __future__ import annotations",
        "from keyq import errors",
    ],
)
def test_core_imports__checker_allows_core_and_stdlib(source: str) -> None:
    """Core-to-core imports, keyq.errors and pure stdlib modules are allowed."""
    assert _violations(source) == []
