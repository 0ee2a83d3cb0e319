"""Every module of keyq reads in one sitting: at most 400 lines, no function over 40.

A module past the limit owns more than one thing; split it along what it owns
(see docs/architecture.md) rather than raise the limit.
"""

from __future__ import annotations

import ast
from pathlib import Path

KEYQ = Path(__file__).resolve().parents[2] / "keyq"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 40


def test_no_module_is_over_400_lines() -> None:
    long = {
        str(path.relative_to(KEYQ)): n
        for path in KEYQ.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_no_function_is_over_40_lines() -> None:
    long: dict[str, int] = {}
    for path in KEYQ.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(KEYQ)}:{node.name}"] = length
    assert long == {}
