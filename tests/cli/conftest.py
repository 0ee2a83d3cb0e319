"""CLI-tier fixtures: a task module imported once per session, and a project directory with a
keyq.toml to run `keyq` commands in through typer's CliRunner."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
from project import Project

#: Imported once per process: keyq.task registers into the global default registry.
TASK_MODULE = "keyq_clitier_tasks"
TASK_SOURCE = """
import keyq

cli_queue = keyq.queue("cli-q", concurrency_limit=2)


@keyq.task(id="cli-echo", queue=cli_queue)
async def echo(payload, ctx):
    return payload


@keyq.task(id="cli-other")
def other(payload, ctx):
    return None
"""

CONFIG = """database = "keyq.db"

[limits]
concurrency = 20
burst_factor = 2.0
"""


@pytest.fixture(scope="session")
def task_module(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The CLI tier's task module, imported once; later `--app` imports find it in sys.modules."""
    if TASK_MODULE not in sys.modules:
        where = tmp_path_factory.mktemp("clitasks")
        (where / f"{TASK_MODULE}.py").write_text(TASK_SOURCE)
        sys.path.insert(0, str(where))
        try:
            importlib.import_module(TASK_MODULE)
        finally:
            sys.path.remove(str(where))
    return TASK_MODULE


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, task_module: str) -> Project:
    monkeypatch.delenv("KEYQ_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # undo the CLI's cwd insertion
    project = Project(tmp_path, task_module, template=CONFIG)
    project.write_config()
    return project
