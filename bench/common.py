"""What every benchmark shares: the machine, a workspace, config, `keyq serve`, figures, tables.

Workspaces are temporary directories in the *current directory*, because that
is where keyq puts ``keyq.db`` by default: the figures are for the file system
a default install would use (see :func:`machine` for which one it is).
"""

from __future__ import annotations

import itertools
import math
import os
import platform
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import keyq
from keyq.store.filesystems import mount_of

REPO_ROOT = Path(__file__).resolve().parent.parent
APP = "bench.tasks"


@dataclass(frozen=True, slots=True)
class Options:
    """Command-line options every benchmark sees."""

    quick: bool = False
    cycles: int | None = None  # the crash campaign's kill -9 cycles (default: its own)
    seed: int | None = None  # for what a benchmark chooses at random


# --- the machine ----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the figures depend on: CPU, cores, memory, Python, SQLite, file system, load."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(_meminfo_kib("MemTotal") / 2**20, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "filesystem": filesystem_of(Path.cwd()),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def _cpu_model() -> str:
    for line in _read_lines("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _meminfo_kib(name: str) -> int:
    for line in _read_lines("/proc/meminfo"):
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


def _read_lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def filesystem_of(path: Path) -> str:
    """``"ext4 (/dev/vda on /)"``: the type of the mount that holds ``path``."""
    mount = mount_of(path.resolve())
    return "unknown" if mount is None else f"{mount.fstype} ({mount.device} on {mount.point})"


# --- workspaces and config --------------------------------------------------------------------

CONFIG = """database = "keyq.db"
durability = "{durability}"

[limits]
concurrency = {concurrency}
burst_factor = {burst_factor!r}

[log]
format = "json"
level = "{log_level}"
"""


@contextmanager
def workspace() -> Iterator[Path]:
    """A temporary directory on the current directory's file system, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=".keyq-bench-", dir=Path.cwd()) as tmp:
        yield Path(tmp)


def write_config(
    directory: Path,
    *,
    durability: str = "full",
    concurrency: int = 200,
    burst_factor: float = 2.0,
    log_level: str = "warning",
) -> Path:
    """Write ``keyq.toml`` (database ``keyq.db`` beside it) and return its path."""
    path = directory / "keyq.toml"
    text = CONFIG.format(
        durability=durability,
        concurrency=concurrency,
        burst_factor=float(burst_factor),
        log_level=log_level,
    )
    path.write_text(text)
    return path


def database_of(config: Path) -> Path:
    return config.parent / "keyq.db"


# --- triggering and reading runs -----------------------------------------------------------------


def noop_items(first: int, count: int, keys: int) -> list[dict[str, Any]]:
    """Batch items for runs ``first .. first+count-1``, spread round-robin over ``keys`` keys."""
    return [
        {"payload": i, "concurrency_key": f"k{i % keys}" if keys else None}
        for i in range(first, first + count)
    ]


def trigger_batches(
    client: keyq.Client, task: str, items: Sequence[Mapping[str, Any]], batch: int = 1000
) -> float:
    """``batch_trigger`` ``items`` in batches of ``batch``; returns the seconds it took."""
    started = time.perf_counter()
    for first in range(0, len(items), batch):
        client.batch_trigger(task, items[first : first + batch])
    return time.perf_counter() - started


def query(database: Path, sql: str, params: Sequence[Any] = ()) -> list[Any]:
    """Rows of one read-only query on the benchmark's database (another connection)."""
    with closing(sqlite3.connect(database, timeout=30)) as conn:
        return conn.execute(sql, params).fetchall()


def wait_for(
    predicate: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.02
) -> None:
    """Poll ``predicate`` until it holds; TimeoutError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not true after {timeout_s} s: {what}")
        time.sleep(poll_s)


# --- `keyq serve` as a subprocess ----------------------------------------------------------------

_instances = itertools.count(1)


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of keyq subprocesses: ``bench`` importable, no stray ``KEYQ_CONFIG``."""
    env = {k: v for k, v in os.environ.items() if k != "KEYQ_CONFIG"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def keyq_command(*args: str) -> list[str]:
    """``python -m keyq ARGS`` with this interpreter."""
    return [sys.executable, "-m", "keyq", *args]


class ServedDaemon:
    """``python -m keyq serve --config CONFIG --app bench.tasks`` in a subprocess.

    Ready means it sent ``READY=1`` to ``$NOTIFY_SOCKET`` (as under systemd), here an
    abstract Unix datagram socket the benchmark binds, so start-up is timed to the
    moment the daemon has recovered its state and serves. Always used as a context
    manager: a daemon still running at exit is killed.
    """

    def __init__(self, config: Path) -> None:
        self.config = config
        number = next(_instances)
        self.log_path = config.parent / f"daemon-{number}.log"
        self._notify_name = f"keyq-bench-{os.getpid()}-{number}"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ServedDaemon:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout_s: float = 180.0) -> float:
        """Start the process; return seconds from its start to READY=1."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.bind("\0" + self._notify_name)
            env = subprocess_env(NOTIFY_SOCKET="@" + self._notify_name)
            command = keyq_command("serve", "--config", str(self.config), "--app", APP)
            started = time.perf_counter()
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen(
                    command,
                    cwd=REPO_ROOT,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            self._wait_ready(notify, started + timeout_s)
            return time.perf_counter() - started

    def _wait_ready(self, notify: socket.socket, deadline: float) -> None:
        notify.settimeout(0.05)
        while time.perf_counter() < deadline:
            try:
                if b"READY=1" in notify.recv(4096).split(b"\n"):
                    return
            except TimeoutError:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    message = f"keyq serve exited during start-up: {self.log_tail()}"
                    raise RuntimeError(message) from None
        raise TimeoutError(f"keyq serve was not ready in time: {self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def peak_rss_mib(self) -> float:
        """The process's peak resident set size so far (VmHWM), in MiB."""
        for line in _read_lines(f"/proc/{self.pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no VmHWM for pid {self.pid}")

    def kill9(self) -> None:
        """SIGKILL, as a crash or an OOM kill would; waits for the process to be gone."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(30)

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM (a graceful drain), then wait; returns the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)


# --- figures -----------------------------------------------------------------------------------


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0-100), interpolating between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary_ms(samples_ns: Sequence[int]) -> dict[str, float]:
    """p50/p95/p99/max of nanosecond samples, in milliseconds."""
    ms = [s / 1e6 for s in samples_ns]
    return {
        "p50": percentile(ms, 50),
        "p95": percentile(ms, 95),
        "p99": percentile(ms, 99),
        "max": max(ms),
    }


Unit = Literal["runs/s", "µs", "ms", "s", "MiB", "ratio", "count", "index"]

_FORMATS: dict[str, Callable[[float], str]] = {
    "runs/s": lambda v: f"{v:,.0f} runs/s",
    "µs": lambda v: f"{v:,.2f} µs",
    "ms": lambda v: f"{v:,.3f} ms",
    "s": lambda v: f"{v:.2f} s",
    "MiB": lambda v: f"{v:,.0f} MiB",
    "ratio": lambda v: f"{v:.1%}",
    "count": lambda v: f"{v:,.0f}",
    "index": lambda v: f"{v:.4f}",
}


def fmt(value: float | None, unit: Unit) -> str:
    return "—" if value is None or math.isnan(value) else _FORMATS[unit](value)


@dataclass(frozen=True, slots=True)
class Target:
    """A goal for a row: ``op bound``, on the row's value or on its ratio to the ceiling."""

    op: Literal["<=", ">="]
    bound: float
    unit: Unit
    of_ceiling: bool = False

    def met(self, row: Row) -> bool | None:
        value = row.of_ceiling if self.of_ceiling else row.value
        if value is None or math.isnan(value):
            return None
        return value <= self.bound if self.op == "<=" else value >= self.bound

    def __str__(self) -> str:
        text = f"{'≤' if self.op == '<=' else '≥'} {fmt(self.bound, self.unit)}"
        return text + " of ceiling" if self.of_ceiling else text


@dataclass(frozen=True, slots=True)
class Row:
    """One figure of a benchmark, with its targets and (for rates) its share of the ceiling."""

    case: str
    figure: str
    value: float | None
    unit: Unit
    targets: tuple[Target, ...] = ()
    of_ceiling: float | None = None

    def met(self) -> bool | None:
        """True if every target is met, False if one is not, None without targets."""
        verdicts = [t.met(self) for t in self.targets]
        if not verdicts:
            return None
        return False if False in verdicts else (None if None in verdicts else True)

    def to_json(self) -> dict[str, Any]:
        return {
            "case": self.case,
            "figure": self.figure,
            "value": self.value,
            "unit": self.unit,
            "of_ceiling": self.of_ceiling,
            "targets": [str(t) for t in self.targets],
            "met": self.met(),
        }


@dataclass(slots=True)
class Result:
    """What a benchmark hands back: its table rows, notes, and raw details for the JSON."""

    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "rows": [r.to_json() for r in self.rows],
            "notes": self.notes,
            "details": self.details,
        }


_MET = {True: "✓", False: "✗", None: ""}


def render(result: Result) -> str:
    """The result as a Markdown section: a heading, a table (if any rows), then its notes."""
    lines = [f"## {result.title}", ""]
    if result.rows:
        lines += [
            "| case | figure | value | of ceiling | target | met |",
            "|---|---|---:|---:|---|:-:|",
            *map(_render_row, result.rows),
            "",
        ]
    lines += [f"- {note}" for note in result.notes]
    return "\n".join(lines)


def _render_row(row: Row) -> str:
    ratio = fmt(row.of_ceiling, "ratio") if row.of_ceiling is not None else ""
    target = " and ".join(str(t) for t in row.targets)
    value = fmt(row.value, row.unit)
    return f"| {row.case} | {row.figure} | {value} | {ratio} | {target} | {_MET[row.met()]} |"
