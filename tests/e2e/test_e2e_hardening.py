"""End to end, the way an attacker or an unlucky operator meets keyq: poison lines on the
socket, a second daemon through a symlink, the file-descriptor limit, broken task modules,
and kill -9 again and again.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from e2e_support import E2E_DIR, Project, subprocess_env, wait_final, wait_until
from support import fill

import keyq
from keyq.clock import host_monotonic
from keyq.core.bounds import MAX_INT64
from keyq.ids import new_run_id
from keyq.store.instance import socket_path

pytestmark = pytest.mark.slow

REPO_ROOT = E2E_DIR.parents[1]


def poison_line(**fields: object) -> bytes:
    run = {"id": new_run_id(time.time()), "task": "e2e-noop", "at": math.nan}
    run |= {"parent_id": None, "options": {}, "payload": {}} | fields
    request = {"op": "trigger", "deadline": host_monotonic() + 1, "retry": False, "runs": [run]}
    return json.dumps(request).encode() + b"\n"


def send(path: Path, line: bytes) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(line)
        answer: dict[str, object] = json.loads(sock.makefile("rb").readline())
        return answer


def test_e2e__poison_lines_neither_kill_nor_wedge_the_daemon(project: Project) -> None:
    """Failure 3 and its kin: NaN and infinite times, integers over 64 bits and lone
    surrogates on the socket are refused; a CLI trigger still runs, and SIGTERM still stops
    the daemon."""
    daemon = project.start_daemon()
    path = socket_path(project.database)
    answers = [
        send(path, poison_line()),
        send(path, poison_line(at=math.inf)),
        send(path, poison_line(at=1.0, options={"max_attempts": 10**20})),
        send(path, poison_line(at=1.0, options={"priority": MAX_INT64 + 1})),
        send(path, poison_line(at=1.0, options={"concurrency_key": "a\ud800"})),
    ]
    triggered = project.cli("trigger", "e2e-noop", "{}", app=True)

    assert [a["ok"] for a in answers] == [False] * len(answers), answers
    assert triggered.returncode == 0, triggered.stderr
    (run,) = wait_final(project.client(), [triggered.stdout.strip()], timeout=10)
    assert run["status"] == "completed"
    assert daemon.terminate(timeout=15) == 0
    assert "commit_failed" not in daemon.events()


def test_e2e__a_second_daemon_through_a_symlink_or_a_hard_link_is_refused(
    project: Project, tmp_path: Path
) -> None:
    """Failure 5: one daemon per database file, whatever path names it. A symlink finds the
    running daemon's lock; a hard link is refused outright (SQLite's own files would not
    follow it); the first daemon goes on alone."""
    first = project.start_daemon()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    refusals = []
    for name in ("link.db", "hard.db"):
        if name == "link.db":
            (elsewhere / name).symlink_to(project.database)
        else:
            os.link(project.database, elsewhere / name)
        config = elsewhere / f"{name}.toml"
        config.write_text(f'database = "{name}"\n')
        second = project.start_daemon(ready=False, config=config)
        assert second.wait_exit(timeout=15) != 0
        refusals.append(second.log_text())
    os.unlink(elsewhere / "hard.db")

    assert f"pid {first.pid}" in refusals[0]
    assert "already runs" in refusals[0]
    assert "hard link" in refusals[1]
    client = project.client()
    (run,) = wait_final(client, [client.trigger("e2e-noop", {}).id], timeout=10)
    assert run["result"]["pid"] == first.pid
    assert first.terminate() == 0


@pytest.mark.timeout(120)
def test_e2e__at_the_fd_limit_the_daemon_backs_off_and_keeps_dispatching(
    project: Project,
) -> None:
    """Past its file-descriptor limit the daemon stops accepting for a while and logs it
    once per interval (with a count), instead of flooding its log; runs still start, and
    once descriptors are free the socket serves again."""
    daemon = project.start_daemon(max_fds=48)
    path = socket_path(project.database)
    held = []
    try:
        for _ in range(80):  # more than the daemon can accept: the rest wait in the backlog
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(path))
            held.append(sock)
        client = project.client()
        started = time.monotonic()
        ids = [client.trigger("e2e-noop", {"i": i}).id for i in range(3)]  # stored directly
        runs = wait_final(client, ids, timeout=30)
        wait_until(lambda: time.monotonic() - started > 5, 10, "five seconds at the limit")
        at_limit = [e for e in daemon.log_lines() if e.get("event") == "control_accept_paused"]
    finally:
        for sock in held:
            sock.close()
    answer_after = send(path, b'{"op": "stats"}\n')

    assert [r["status"] for r in runs] == ["completed"] * 3
    assert 1 <= len(at_limit) <= 12, at_limit
    assert all(e["error"].startswith("[Errno 24]") for e in at_limit)
    assert answer_after["ok"] is True
    assert daemon.terminate() == 0
    assert len(daemon.log_text()) < 200_000


def on_a_full_disk(project: Project, disk: Path, commit_retry: str) -> Path:
    """The project's config, with its database on ``disk``; the filler's path."""
    project.config.write_text(
        f'database = "{disk}/keyq.db"\ncommit_retry = "{commit_retry}"\n\n'
        '[log]\nlevel = "info"\nformat = "json"\n'
    )
    return disk / "filler"


@pytest.mark.parametrize("ending", ["sigterm", "commit_retry"])
def test_e2e__a_daemon_that_cannot_write_still_stops(
    project: Project, small_disk: Path, ending: str
) -> None:
    """While the disk is full the daemon retries its commit; SIGTERM stops it at once
    (exit 0: nothing of the step was acted on), and so does the end of commit_retry (exit 1,
    daemon_failed, for systemd to restart it). A restart with space records the run."""
    on_a_full_disk(project, small_disk, "2s" if ending == "commit_retry" else "5m")
    # A run that finishes once the disk is full: its completion cannot be written.
    database = small_disk / "keyq.db"
    daemon = project.start_daemon(ready=False)
    wait_until(lambda: "daemon_started" in daemon.events(), 15, daemon.describe)
    client = keyq.Client(project.config)
    run_id = client.trigger("e2e-sleep", {"s": 1.0}).id
    wait_until(lambda: client.get_run(run_id)["status"] == "running", 10, daemon.describe)
    filler = fill(small_disk)
    wait_until(lambda: "commit_failed" in daemon.events(), 10, daemon.describe)
    started = time.monotonic()
    if ending == "sigterm":
        assert daemon.terminate(timeout=10) == 0
    else:
        assert daemon.wait_exit(timeout=15) == 1
        assert "daemon_failed" in daemon.events()
        assert "commit_retry" in daemon.log_text()
    assert time.monotonic() - started < 8
    assert client.get_run(run_id)["status"] == "running"  # as recorded: nothing was acted on
    client.close()

    filler.unlink()
    project.start_daemon(ready=False)
    client = keyq.Client(project.config)
    (run,) = wait_final(client, [run_id], timeout=20)
    client.close()
    assert run["status"] == "completed"
    assert [e["reason"] for e in run["events"]][-3:] == ["interrupted", "restarted", "completed"]
    assert database.exists()


BROKEN_MODULES = {
    "raises": "import keyq\n\nraise RuntimeError('the app cannot start: no API key')\n",
    "duplicate": (
        "import keyq\n\n\n@keyq.task(id='e2e-noop')\nasync def again(payload, ctx):\n"
        "    return None\n"
    ),
    "bad_id": "import keyq\n\n\n@keyq.task(id='bad id')\nasync def bad(payload, ctx):\n    pass\n",
}


@pytest.mark.parametrize("name", sorted(BROKEN_MODULES))
def test_e2e__a_broken_task_module_is_one_error_line_and_exit_2(
    project: Project, name: str
) -> None:
    """A task module that raises on import, or defines a duplicate or a bad task id, stops
    `keyq serve` with one `error:` line naming the module, where and why (exit 2); with
    KEYQ_DEBUG=1 the traceback follows."""
    module = f"broken_{name}"
    (project.root / f"{module}.py").write_text(BROKEN_MODULES[name])
    argv = [sys.executable, "-m", "keyq", "serve", "--config", str(project.config)]
    argv += ["--app", "e2e_tasks", "--app", module]
    env = subprocess_env() | {"PYTHONPATH": f"{project.root}{os.pathsep}{E2E_DIR}"}
    plain = subprocess.run(argv, cwd=project.root, env=env, capture_output=True, text=True)
    debug = subprocess.run(
        argv, cwd=project.root, env=env | {"KEYQ_DEBUG": "1"}, capture_output=True, text=True
    )

    assert plain.returncode == 2
    (line,) = plain.stderr.splitlines()
    assert line.startswith(f"error: cannot import task module '{module}' (")
    assert f"{module}.py, line" in line
    expected = {"raises": "RuntimeError: the app cannot start", "duplicate": "already defined"}
    assert expected.get(name, "invalid task id 'bad id'") in line
    assert debug.returncode == 2
    assert "Traceback (most recent call last)" in debug.stderr


@pytest.mark.timeout(240)
def test_e2e__kill9_campaign_loses_doubles_and_leaks_nothing(tmp_path: Path) -> None:
    """A few cycles of the crash campaign (`python -m bench crash`, which runs hundreds):
    kill -9 under four producers; no acknowledged run lost, none completed twice, no refused
    trigger stored, no key over its limit, no slot leaked."""
    out = tmp_path / "crash.json"
    env = subprocess_env() | {"PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "bench", "crash", "--cycles", "4", "--json", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=220,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())["results"]["crash"]
    figures = {row["figure"]: row for row in result["rows"]}

    assert figures["runs acknowledged"]["value"] > 50
    assert all(row["met"] is not False for row in result["rows"]), result
    for figure in (
        "acknowledged runs lost",
        "runs completed twice",
        "runs never finished",
        "refused triggers stored",
        "runs nobody was told of",
        "runs left RUNNING after the drain",
    ):
        assert figures[figure]["value"] == 0, (figure, result["details"])
    peak = next(r for r in result["rows"] if r["figure"].startswith("most RUNNING"))
    fresh = next(r for r in result["rows"] if r["figure"].startswith("fewest at once"))
    assert peak["value"] == 2  # the limit was reached, and never passed
    assert fresh["value"] == 2  # every key still gets both of its slots
