"""CLI-tier fixtures: a task module imported once per session, and a project directory with a
keyq.toml to run `keyq` commands in through typer's CliRunner."""

from __future__ import annotations

import importlib
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from keyq.cli import app

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


@dataclass
class Project:
    """A directory with keyq.toml, the current directory while the test runs."""

    root: Path
    config: Path
    module: str
    runner: CliRunner

    @property
    def database(self) -> Path:
        return self.root / "keyq.db"

    def run(self, *args: str, config: bool = True, app_module: bool = False) -> Result:
        """Invoke `keyq ARGS` (with --config, and --app for commands that import tasks)."""
        argv = list(args)
        if config:
            argv += ["--config", str(self.config)]
        if app_module:
            argv += ["--app", self.module]
        return self.runner.invoke(app, argv)

    def trigger(self, *args: str) -> Result:
        return self.run("trigger", *args, app_module=True)

    def trigger_id(self, *args: str) -> str:
        result = self.trigger(*args)
        assert result.exit_code == 0, result.stderr
        return result.stdout.strip()

    def rows(self, where: str = "1", *params: Any) -> list[dict[str, Any]]:
        """The runs table as an independent sqlite3 connection sees it."""
        if not self.database.exists():
            return []
        conn = sqlite3.connect(self.database)
        conn.row_factory = sqlite3.Row
        try:
            found = conn.execute(f"SELECT * FROM runs WHERE {where} ORDER BY seq", params)
            return [dict(r) for r in found.fetchall()]
        finally:
            conn.close()


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, task_module: str) -> Project:
    config = tmp_path / "keyq.toml"
    config.write_text(CONFIG)
    monkeypatch.delenv("KEYQ_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # undo the CLI's cwd insertion
    return Project(tmp_path, config, task_module, CliRunner())
