"""E2E-tier fixtures: a project directory per test (see e2e_support.Project), torn down with
every daemon it started killed."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from e2e_support import E2E_DIR, TASK_MODULE, Project, e2e_project


@pytest.fixture(scope="session")
def e2e_tasks() -> ModuleType:
    """The task module, imported once in this process (it registers into the default registry)."""
    if TASK_MODULE not in sys.modules:
        sys.path.insert(0, str(E2E_DIR))
        try:
            importlib.import_module(TASK_MODULE)
        finally:
            sys.path.remove(str(E2E_DIR))
    return sys.modules[TASK_MODULE]


@pytest.fixture
def project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, e2e_tasks: ModuleType
) -> Iterator[Project]:
    monkeypatch.delenv("KEYQ_CONFIG", raising=False)
    p = e2e_project(tmp_path)
    try:
        yield p
    finally:
        p.cleanup()
