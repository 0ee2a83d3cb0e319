"""The one project helper of every tier: a directory with keyq.toml and keyq.db, and each
way a user drives keyq there.

- ``run`` / ``trigger``: the `keyq` CLI in this process, through typer's CliRunner;
- ``cli``: `python -m keyq ...` as a subprocess;
- ``start_daemon``: `keyq serve` as a subprocess (:class:`DaemonProcess`), killed at cleanup
  if a test left it running;
- ``client``: a keyq.Client on the same database, closed at cleanup;
- ``rows``: the runs table as an independent sqlite3 connection sees it.

Waiting is always for an observable condition with a deadline (``wait_until``), never a bare
sleep.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

import keyq
from keyq.cli import app as cli_app
from keyq.store.instance import socket_path

POLL_S = 0.02
SERVE = (sys.executable, "-m", "keyq", "serve")

#: keyq.toml of a project; ``{grace}`` and ``{extra}`` are filled by write_config.
DAEMON_CONFIG = """database = "keyq.db"
shutdown_grace = "{grace}"

[log]
level = "info"
format = "json"
{extra}"""


def wait_until(
    predicate: Callable[[], object], timeout: float, what: str | Callable[[], str]
) -> None:
    """Poll ``predicate`` every 20 ms until it is truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            message = what() if callable(what) else what
            pytest.fail(f"not true after {timeout} s: {message}")
        time.sleep(POLL_S)


def _limit_fds(count: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))


@dataclass
class Project:
    """A directory with keyq.toml and keyq.db; ``app`` is the task module (--app), found by
    subprocesses on ``import_path``."""

    root: Path
    app: str
    import_path: tuple[Path, ...] = ()
    template: str = DAEMON_CONFIG
    grace: str = "5s"
    daemons: list[DaemonProcess] = field(default_factory=list)
    clients: list[keyq.Client] = field(default_factory=list)
    runner: CliRunner = field(default_factory=CliRunner)

    @property
    def config(self) -> Path:
        return self.root / "keyq.toml"

    @property
    def database(self) -> Path:
        return self.root / "keyq.db"

    def write_config(self, extra: str = "") -> None:
        text = self.template.format(grace=self.grace, extra=extra)
        tmp = self.config.with_suffix(".toml.tmp")
        tmp.write_text(text)
        tmp.replace(self.config)  # a reload never reads a half-written file

    def env(self) -> dict[str, str]:
        """The environment of keyq subprocesses: the task module importable, no stray config."""
        env = {k: v for k, v in os.environ.items() if k != "KEYQ_CONFIG"}
        paths = [*map(str, self.import_path), env.get("PYTHONPATH")]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
        return env

    # --- the CLI, in this process ------------------------------------------------------------

    def run(self, *args: str, config: bool = True, app: bool = False) -> Result:
        """Invoke `keyq ARGS` (with --config, and --app for commands that import tasks)."""
        argv = list(args)
        if config:
            argv += ["--config", str(self.config)]
        if app:
            argv += ["--app", self.app]
        return self.runner.invoke(cli_app, argv)

    def trigger(self, *args: str) -> Result:
        return self.run("trigger", *args, app=True)

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

    # --- processes ----------------------------------------------------------------------------

    def cli(
        self, *args: str, app: bool = False, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """`python -m keyq ARGS --config keyq.toml [--app MODULE]` in a subprocess."""
        argv = [sys.executable, "-m", "keyq", *args, "--config", str(self.config)]
        if app:
            argv += ["--app", self.app]
        return subprocess.run(
            argv,
            cwd=self.root,
            env=self.env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start_daemon(
        self, *, ready: bool = True, config: Path | None = None, max_fds: int | None = None
    ) -> DaemonProcess:
        """`keyq serve` on this project (or on ``config``); waits until it serves."""
        name = f"daemon-{len(self.daemons) + 1}"
        daemon = DaemonProcess(self, name, config, max_fds)
        self.daemons.append(daemon)
        return daemon.wait_ready() if ready else daemon

    def client(self) -> keyq.Client:
        client = keyq.Client(self.config)
        self.clients.append(client)
        return client

    def cleanup(self) -> None:
        for client in self.clients:
            client.close()
        for daemon in self.daemons:
            daemon.cleanup()


class DaemonProcess:
    """`python -m keyq serve --config ... --app MODULE`, logging JSON to a file in the project.

    ``max_fds`` starts it with that RLIMIT_NOFILE (the file-descriptor limit).
    """

    def __init__(
        self, project: Project, name: str, config: Path | None = None, max_fds: int | None = None
    ) -> None:
        self.project = project
        self.log_path = project.root / f"{name}.log"
        config = config if config is not None else project.config
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [*SERVE, "--config", str(config), "--app", project.app],
                cwd=project.root,
                env=project.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=None if max_fds is None else (lambda: _limit_fds(max_fds)),
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_lines(self) -> list[dict[str, Any]]:
        """The JSON log events written so far (lines that are not JSON are skipped)."""
        events = []
        for line in self.log_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
        return events

    def events(self) -> list[str]:
        return [e.get("event", "") for e in self.log_lines()]

    def describe(self) -> str:
        return f"daemon pid {self.pid}, exit {self.proc.poll()}, log:\n{self.log_text()[-4000:]}"

    def wait_ready(self, timeout: float = 15.0) -> DaemonProcess:
        """Until it logged daemon_started and its control socket exists (or fail if it exited).

        Readiness is read from the log, not by probing the instance lock: a probe that takes
        the lock while the daemon starts would make the daemon refuse to start.
        """
        sock = socket_path(self.project.database)

        def ready() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"the daemon exited during start-up: {self.describe()}")
            return "daemon_started" in self.events() and sock.exists()

        wait_until(ready, timeout, self.describe)
        return self

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the daemon did not exit within {timeout} s: {self.describe()}")

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM, then wait for the exit; returns the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def hup(self) -> None:
        self.proc.send_signal(signal.SIGHUP)

    def kill9(self) -> None:
        self.proc.kill()  # SIGKILL
        self.proc.wait(10)

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
