"""E2E-tier helpers: `keyq serve` as a real subprocess on a real SQLite file under tmp_path.

`Project` gives a directory with keyq.toml, a way to start daemons (each one is killed in
teardown if a test left it running), a keyq.Client on the same database for triggering and
reading, and a way to run `python -m keyq ...` in a subprocess.

Waiting is always for an observable condition with a deadline (`wait_until`), never a bare sleep.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

import keyq
from keyq.store.instance import socket_path

E2E_DIR = Path(__file__).resolve().parent
TASK_MODULE = "e2e_tasks"
POLL_S = 0.02
FINAL = ("completed", "failed", "canceled")
SERVE = (sys.executable, "-m", "keyq", "serve")

CONFIG = """database = "keyq.db"
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


def ts(iso: str) -> float:
    """An ISO 8601 UTC time from the run JSON as epoch seconds."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The largest number of [start, end] intervals covering one instant."""
    points = [(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals]
    running = peak = 0
    for _, delta in sorted(points):  # at equal times an end (-1) sorts before a start
        running += delta
        peak = max(peak, running)
    return peak


def _limit_fds(count: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))


def subprocess_env() -> dict[str, str]:
    """The environment of every keyq subprocess: the task module importable, no stray config."""
    env = {k: v for k, v in os.environ.items() if k != "KEYQ_CONFIG"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(E2E_DIR), env.get("PYTHONPATH")]))
    return env


class DaemonProcess:
    """`python -m keyq serve --config ... --app e2e_tasks`, logging JSON to a file in tmp_path.

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
                [*SERVE, "--config", str(config), "--app", TASK_MODULE],
                cwd=project.root,
                env=subprocess_env(),
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


@dataclass
class Project:
    """A directory with keyq.toml and keyq.db; daemons and clients on it; cleans up after."""

    root: Path
    grace: str = "5s"
    daemons: list[DaemonProcess] = field(default_factory=list)
    clients: list[keyq.Client] = field(default_factory=list)

    @property
    def config(self) -> Path:
        return self.root / "keyq.toml"

    @property
    def database(self) -> Path:
        return self.root / "keyq.db"

    def write_config(self, extra: str = "") -> None:
        text = CONFIG.format(grace=self.grace, extra=extra)
        tmp = self.config.with_suffix(".toml.tmp")
        tmp.write_text(text)
        tmp.replace(self.config)  # a reload never reads a half-written file

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

    def cli(
        self, *args: str, app: bool = False, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """`python -m keyq ARGS --config keyq.toml [--app e2e_tasks]` in a subprocess."""
        argv = [sys.executable, "-m", "keyq", *args, "--config", str(self.config)]
        if app:
            argv += ["--app", TASK_MODULE]
        return subprocess.run(
            argv,
            cwd=self.root,
            env=subprocess_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def cleanup(self) -> None:
        for client in self.clients:
            client.close()
        for daemon in self.daemons:
            daemon.cleanup()


# --- reading runs ----------------------------------------------------------------------------


def runs_by_status(client: keyq.Client, **filters: Any) -> dict[str, list[dict[str, Any]]]:
    """Every run matching ``filters``, grouped by status."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for run in client.list_runs(limit=100_000, **filters):
        grouped.setdefault(run["status"], []).append(run)
    return grouped


def wait_final(client: keyq.Client, ids: list[str], timeout: float) -> list[dict[str, Any]]:
    """Wait until every run in ``ids`` is final; return them (with events) in ``ids`` order."""
    pending = set(ids)
    seen: dict[str, str] = {}

    def done() -> bool:
        for run_id in list(pending):
            seen[run_id] = client.get_run(run_id)["status"]
            if seen[run_id] in FINAL:
                pending.discard(run_id)
        return not pending

    def what() -> str:
        statuses = sorted(seen[i] for i in pending)
        return f"{len(pending)} of {len(ids)} runs not final; this client reads {statuses}"

    wait_until(done, timeout, what)
    return [client.get_run(run_id) for run_id in ids]
