"""End to end: `keyq serve` as a real subprocess, real signals, a real SQLite file.

Every assertion reads the database (keyq.Client, or `keyq ... --json` in a subprocess) or the
daemon's JSON log, as a user checking the behaviour would.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from typing import Any

import pytest
from e2e_support import (
    E2E_DIR,
    Project,
    max_overlap,
    runs_by_status,
    subprocess_env,
    ts,
    wait_final,
    wait_until,
)

from keyq.store.instance import lock_path, read_pid, socket_path

pytestmark = pytest.mark.slow

RUN_ID = re.compile(r"run_[0-9a-z]{26}")


def sleep_items(keys: list[str], per_key: int, seconds: float) -> list[dict[str, Any]]:
    """Batch items for e2e-sleep: ``per_key`` runs for each key, interleaved."""
    return [
        {"payload": {"s": seconds, "n": n}, "concurrency_key": key}
        for n in range(per_key)
        for key in keys
    ]


def start_producer(project: Project, count: int, key: str) -> subprocess.Popen[str]:
    """e2e_producer.py: prints "ready", then triggers ``count`` runs on a line on stdin."""
    return subprocess.Popen(
        [sys.executable, str(E2E_DIR / "e2e_producer.py"), str(project.config), str(count), key],
        cwd=project.root,
        env=subprocess_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def intervals(runs: list[dict[str, Any]]) -> list[tuple[float, float]]:
    return [(r["result"]["start"], r["result"]["end"]) for r in runs]


def test_e2e__trigger_while_daemon_down_runs_when_it_starts(project: Project) -> None:
    """Runs triggered while no daemon runs wait on disk and all run once the daemon starts."""
    client = project.client()  # one client triggers and reads, as a web app does
    ids = [client.trigger("e2e-noop", {"i": i}).id for i in range(5)]
    assert not client.daemon_running()
    assert [r["id"] for r in runs_by_status(client)["queued"]] == ids[::-1]  # newest first

    daemon = project.start_daemon()
    runs = wait_final(client, ids, timeout=5)

    assert [r["status"] for r in runs] == ["completed"] * 5
    assert {r["result"]["pid"] for r in runs} == {daemon.pid}
    assert daemon.terminate() == 0
    client.close()
    listed = project.cli("runs", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert {(r["id"], r["status"]) for r in json.loads(listed.stdout)} == {
        (i, "completed") for i in ids
    }


def test_e2e__trigger_from_another_process_while_running(project: Project) -> None:
    """`keyq trigger --wait` and keyq.Client from other processes reach the daemon at once."""
    daemon = project.start_daemon()
    client = project.client()

    cli = project.cli("trigger", "e2e-noop", "{}", "--wait", app=True)
    assert cli.returncode == 0, cli.stderr
    run_id = cli.stdout.strip()
    assert RUN_ID.fullmatch(run_id), cli.stdout
    assert cli.stdout == run_id + "\n"  # the id alone
    assert client.get_run(run_id)["status"] == "completed"

    latencies = []
    for i in range(5):  # several in a row: a 2 s safety poll cannot look like a poke five times
        handle = client.trigger("e2e-noop", {"i": i})
        (run,) = wait_final(client, [handle.id], timeout=5)
        assert run["status"] == "completed"
        assert [(e["from"], e["to"]) for e in run["events"]][:2] == [
            (None, "queued"),
            ("queued", "running"),
        ]
        latencies.append(ts(run["started_at"]) - ts(run["created_at"]))
    assert max(latencies) < 0.5, latencies
    assert daemon.terminate() == 0


def test_e2e__per_key_limit_from_real_runs(project: Project) -> None:
    """Real attempts of one key never overlap beyond the queue's limit of 2; keys run in
    parallel."""
    project.start_daemon()
    client = project.client()
    handles = client.batch_trigger("e2e-sleep", sleep_items(["a", "b", "c"], 6, 0.05))
    runs = wait_final(client, [h.id for h in handles], timeout=15)
    assert {r["status"] for r in runs} == {"completed"}

    per_key = {
        key: max_overlap(intervals([r for r in runs if r["concurrency_key"] == key]))
        for key in ("a", "b", "c")
    }
    assert per_key == {"a": 2, "b": 2, "c": 2}
    assert 2 < max_overlap(intervals(runs)) <= 6


def test_e2e__sigterm_drains_running_runs(project: Project) -> None:
    """SIGTERM starts nothing new, lets the running runs finish, and exits 0."""
    daemon = project.start_daemon()
    client = project.client()
    handles = client.batch_trigger("e2e-sleep", sleep_items(["a", "b"], 3, 1.0))
    ids = [h.id for h in handles]

    def four_running() -> bool:
        return len(runs_by_status(client).get("running", [])) == 4

    wait_until(four_running, 10, lambda: f"not 4 running: {runs_by_status(client).keys()}")
    running = {r["id"] for r in runs_by_status(client)["running"]}
    queued = {r["id"] for r in runs_by_status(client)["queued"]}
    assert len(queued) == 2

    sent = time.monotonic()
    assert daemon.terminate(timeout=10) == 0
    assert time.monotonic() - sent < 5.0  # within shutdown_grace
    assert not socket_path(project.database).exists()
    assert read_pid(lock_path(project.database)) is None

    after = {run_id: client.get_run(run_id) for run_id in ids}
    assert {after[i]["status"] for i in running} == {"completed"}
    assert {after[i]["status"] for i in queued} == {"queued"}
    for i in queued:
        assert after[i]["started_at"] is None
        assert [e["to"] for e in after[i]["events"]] == ["queued"]
    events = daemon.events()
    assert {"signal_received", "daemon_draining", "daemon_stopped"} <= set(events)
    assert events.index("daemon_draining") < events.index("daemon_stopped")
    draining = next(e for e in daemon.log_lines() if e["event"] == "daemon_draining")
    assert draining["running"] == 4


def test_e2e__kill9_mid_run_loses_nothing_and_completes_once(project: Project) -> None:
    """After kill -9 and a restart every run completes exactly once; interrupted runs get
    attempt 2."""
    first = project.start_daemon()
    client = project.client()
    handles = client.batch_trigger("e2e-sleep", sleep_items(["a", "b", "c", "d", "e"], 8, 0.2))
    ids = [h.id for h in handles]
    assert len(ids) == 40

    def mid_batch() -> bool:
        by = runs_by_status(client)
        return len(by.get("completed", [])) >= 10 and len(by.get("running", [])) >= 1

    wait_until(mid_batch, 15, lambda: str({k: len(v) for k, v in runs_by_status(client).items()}))
    completed_before = {r["id"] for r in runs_by_status(client)["completed"]}
    first.kill9()

    at_kill = runs_by_status(client)
    running_at_kill = {r["id"] for r in at_kill.get("running", [])}
    assert running_at_kill
    assert completed_before <= {r["id"] for r in at_kill["completed"]}
    assert sum(len(v) for v in at_kill.values()) == 40

    # The same client keeps reading across the restart.
    second = project.start_daemon()
    runs = wait_final(client, ids, timeout=20)

    assert len(runs) == 40
    assert len(client.list_runs(limit=1000)) == 40
    for run in runs:
        to = [e["to"] for e in run["events"]]
        assert run["status"] == "completed", run
        assert to.count("completed") == 1, run["events"]
        assert to.count("running") == run["attempt"], run["events"]
        if run["id"] in running_at_kill:
            assert run["attempt"] == 2, run
            assert ("running", "queued", "interrupted") in {
                (e["from"], e["to"], e["reason"]) for e in run["events"]
            }
            assert run["result"]["pid"] == second.pid
        else:
            assert run["attempt"] == 1, run
            assert "interrupted" not in {e["reason"] for e in run["events"]}
        if run["id"] in completed_before:
            assert run["result"]["pid"] == first.pid
    assert second.terminate() == 0


@pytest.mark.timeout(90)
def test_e2e__kill9_while_a_producer_triggers_loses_and_doubles_nothing(project: Project) -> None:
    """A producer triggers one run at a time while the daemon is killed -9 and restarted.
    Its triggers are handed to the daemon, then stored directly while it is down, then
    handed again: every run it was told of is stored once and completes once, and no
    other run appears."""
    first = project.start_daemon()
    producer = start_producer(project, 150, "k")
    assert producer.stdin is not None
    assert producer.stdout is not None
    try:
        assert producer.stdout.readline() == "ready\n"
        producer.stdin.write("go\n")
        producer.stdin.flush()
        ids = [producer.stdout.readline().strip() for _ in range(40)]
        first.kill9()
        ids += [producer.stdout.readline().strip() for _ in range(40)]
        second = project.start_daemon()
        out, err = producer.communicate(timeout=60)
    finally:
        if producer.poll() is None:
            producer.kill()
            producer.communicate()
    assert producer.returncode == 0, err
    ids += out.split()
    assert len(ids) == 150
    assert all(RUN_ID.fullmatch(i) for i in ids), ids

    client = project.client()
    runs = wait_final(client, ids, timeout=30)
    assert sorted(r["id"] for r in client.list_runs(limit=1000)) == sorted(ids)
    for run in runs:
        assert run["status"] == "completed", run
        assert [e["to"] for e in run["events"]].count("completed") == 1, run["events"]
    assert second.terminate() == 0


def test_e2e__second_daemon_on_same_database_is_refused(project: Project) -> None:
    """A second `keyq serve` on the same database exits non-zero naming the running daemon."""
    first = project.start_daemon()

    started = time.monotonic()
    second = project.start_daemon(ready=False)
    code = second.wait_exit(timeout=10)
    assert code != 0
    assert time.monotonic() - started < 5.0
    assert f"pid {first.pid}" in second.log_text()
    assert "already runs" in second.log_text()

    assert read_pid(lock_path(project.database)) == first.pid  # the refusal changed nothing
    client = project.client()
    (run,) = wait_final(client, [client.trigger("e2e-noop", {}).id], timeout=5)
    assert run["result"]["pid"] == first.pid
    assert first.terminate() == 0


def test_e2e__sighup_reloads_limits(project: Project) -> None:
    """SIGHUP re-reads `[queues.NAME] concurrency_limit` and new starts follow the new limit."""
    project.write_config("\n[queues.e2e-analysis]\nconcurrency_limit = 1\n")
    daemon = project.start_daemon()
    client = project.client()

    handles = client.batch_trigger("e2e-sleep", sleep_items(["k"], 4, 0.1))
    runs = wait_final(client, [h.id for h in handles], timeout=10)
    assert max_overlap(intervals(runs)) == 1

    project.write_config("\n[queues.e2e-analysis]\nconcurrency_limit = 3\n")
    daemon.hup()
    wait_until(lambda: "config_reloaded" in daemon.events(), 5, daemon.describe)

    handles = client.batch_trigger("e2e-sleep", sleep_items(["k"], 6, 0.2))
    runs = wait_final(client, [h.id for h in handles], timeout=10)
    assert max_overlap(intervals(runs)) == 3
    assert daemon.proc.poll() is None  # SIGHUP did not stop it
    assert daemon.terminate() == 0


def test_e2e__retries_then_completes_and_final_failure(project: Project) -> None:
    """A failing task is retried after its backoff; out of attempts it fails with its error."""
    project.start_daemon()
    client = project.client()

    ok = client.trigger("e2e-flaky", {"ok_on": 3})
    bad = client.trigger("e2e-flaky", {"ok_on": 99})
    ok_run, bad_run = wait_final(client, [ok.id, bad.id], timeout=10)

    assert ok_run["status"] == "completed"
    assert ok_run["attempt"] == 3
    assert ok_run["result"] == {"attempt": 3}
    assert [e["reason"] for e in ok_run["events"]].count("retry") == 2
    assert ok_run["error"] == {"type": "RuntimeError", "message": "flaky attempt 2 of ok_on 3"}

    assert bad_run["status"] == "failed"
    assert bad_run["attempt"] == bad_run["max_attempts"] == 3
    assert bad_run["error"] == {"type": "RuntimeError", "message": "flaky attempt 3 of ok_on 99"}
    assert [e["reason"] for e in bad_run["events"]].count("retry") == 2

    cli = project.cli("trigger", "e2e-flaky", '{"ok_on": 99}', "--wait", app=True)
    assert cli.returncode != 0
    run_id = cli.stdout.strip()
    assert RUN_ID.fullmatch(run_id), cli.stdout
    assert "failed" in cli.stderr
    assert "RuntimeError" in cli.stderr
    shown = project.cli("runs", "show", run_id, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["status"] == "failed"


def test_e2e__many_producers_never_see_database_is_locked(project: Project) -> None:
    """Eight producer processes triggering one run at a time never see "database is locked"."""
    project.start_daemon()
    producers = [start_producer(project, 100, f"p{i}") for i in range(8)]
    try:
        for p in producers:
            assert p.stdout is not None
            assert p.stdout.readline() == "ready\n", p.communicate(timeout=10)
        for p in producers:  # release them together
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [p.communicate(timeout=40) for p in producers]
    finally:
        for p in producers:
            if p.poll() is None:
                p.kill()
                p.communicate()

    for p, (out, err) in zip(producers, results, strict=True):
        assert p.returncode == 0, err
        assert "locked" not in err.lower(), err
        assert len(out.split()) == 100
    client = project.client()

    def all_completed() -> bool:
        return client.stats()["total"]["completed"] == 800

    wait_until(all_completed, 20, lambda: str(client.stats()["total"]))
    assert client.stats()["total"] == {
        "queued": 0,
        "delayed": 0,
        "running": 0,
        "waiting": 0,
        "completed": 800,
        "failed": 0,
        "canceled": 0,
    }


def test_e2e__cancel_running_run_via_cli(project: Project) -> None:
    """`keyq runs cancel` stops a running attempt at once and the run ends canceled."""
    daemon = project.start_daemon()
    client = project.client()
    run_id = client.trigger("e2e-sleep", {"s": 30}, concurrency_key="k").id
    wait_until(lambda: client.get_run(run_id)["status"] == "running", 10, "run not running")

    started = time.monotonic()
    cli = project.cli("runs", "cancel", run_id)
    assert cli.returncode == 0, cli.stderr
    (run,) = wait_final(client, [run_id], timeout=5)
    assert time.monotonic() - started < 5.0

    assert run["status"] == "canceled"
    assert run["result"] is None
    assert run["events"][-1]["to"] == "canceled"
    assert ts(run["finished_at"]) - ts(run["started_at"]) < 5.0
    assert daemon.terminate(timeout=5) == 0  # nothing left running to drain


def test_e2e__acknowledged_cancel_survives_kill9(project: Project) -> None:
    """Once `keyq runs cancel` returns, a crash before the attempt stops does not run it again."""
    daemon = project.start_daemon()
    client = project.client()
    run_id = client.trigger("e2e-sync-sleep", {"s": 30}).id
    wait_until(lambda: client.get_run(run_id)["status"] == "running", 10, "run not running")

    cli = project.cli("runs", "cancel", run_id)
    assert cli.returncode == 0, cli.stderr
    assert client.get_run(run_id)["status"] == "running"  # a thread cannot be interrupted
    daemon.kill9()

    project.start_daemon()
    (run,) = wait_final(client, [run_id], timeout=10)
    assert run["status"] == "canceled"
    assert run["attempt"] == 1  # not started again
    assert [e["reason"] for e in run["events"]].count("started") == 1


def test_e2e__sighup_with_a_bad_config_keeps_serving(project: Project) -> None:
    """A typo in the config on reload is logged; the daemon keeps its old config and runs."""
    daemon = project.start_daemon()
    client = project.client()
    project.write_config("\n[limits]\nconcurency = 3\n")
    daemon.hup()
    wait_until(lambda: "config_reload_failed" in daemon.events(), 5, daemon.describe)

    handle = client.trigger("e2e-noop", {})
    (run,) = wait_final(client, [handle.id], timeout=10)
    assert run["status"] == "completed"
    failure = next(e for e in daemon.log_lines() if e.get("event") == "config_reload_failed")
    assert "limits.concurency" in failure["error"]
    assert daemon.terminate() == 0
