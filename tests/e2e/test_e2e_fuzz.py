"""A fuzzer over every door a trigger comes through, against one real `keyq serve`.

Hypothesis throws arbitrary values at `keyq.Client.trigger`, at `keyq trigger`'s argument
parsing and at the control socket's trigger lines: NaN, ±Infinity, integers far past 64
bits, lone surrogates, control characters, deep nesting, wrong types, missing fields.
Every input must be either stored (and then run, unless it was delayed or put on a queue
with limit 0) or refused with an error naming a field; and after all of it the daemon must
still be up, with nothing in its log but refusals, and dispatching.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from e2e_support import DaemonProcess, Project, e2e_project, wait_final
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import keyq
from keyq.cli import app
from keyq.clock import host_monotonic
from keyq.ids import new_run_id
from keyq.store.instance import socket_path

pytestmark = pytest.mark.slow

FIELDS = (
    "concurrency_key",
    "queue",
    "priority",
    "delay",
    "idempotency_key",
    "max_attempts",
    "tags",
    "payload",
    "unknown trigger option",
    "run id",
    "parent_id",
    "created_at",
    "deadline",
    "retry",
    "runs",
    "task",
    "missing field",
    "options",
    "--",  # typer's own usage errors name the option
    "JSON",
)
FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# --- values -------------------------------------------------------------------------------------

ANY_CHAR = st.characters(exclude_categories=())  # surrogates and control characters too
TEXT = st.text(ANY_CHAR, max_size=12) | st.sampled_from(["", "k", "u-1", "a\ud800", "\x1b[2J"])
INTEGERS = st.integers(-(2**80), 2**80) | st.sampled_from([0, 1, 5, 10, 11, -1, 2**63, 10**30])
FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([1e308, -1e308, 0.5])
SCALARS = st.none() | st.booleans() | INTEGERS | FLOATS | TEXT
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
QUEUES = st.sampled_from(["fz-a", "fz-b"]) | TEXT
OPTIONS = st.fixed_dictionaries(
    {},
    optional={
        "concurrency_key": TEXT | INTEGERS | JSON,
        "queue": QUEUES
        | st.fixed_dictionaries({"name": QUEUES}, optional={"concurrency_limit": INTEGERS | JSON}),
        "priority": INTEGERS | JSON,
        "delay": st.sampled_from(["5m", "-1s", "3000000d", "1h30m", "soon"]) | FLOATS | JSON,
        "idempotency_key": TEXT | JSON,
        "max_attempts": INTEGERS | JSON,
        "tags": st.lists(TEXT, max_size=3) | TEXT | JSON,
        "nope": JSON,
    },
)


@dataclass(frozen=True)
class Deep:
    """A payload of lists ``depth`` deep: built in the test (Hypothesis cannot print it)."""

    depth: int

    def build(self) -> Any:
        value: Any = 1
        for _ in range(self.depth):
            value = [value]
        return value


def built(payload: Any) -> Any:
    return payload.build() if isinstance(payload, Deep) else payload


PAYLOADS = JSON | st.integers(1, 3000).map(Deep)


# --- one daemon for the whole module ------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, e2e_tasks: Any) -> Iterator[Project]:
    project = e2e_project(tmp_path_factory.mktemp("fuzz"))
    project.start_daemon()
    try:
        yield project
        daemon = project.daemons[0]
        assert daemon.proc.poll() is None, daemon.describe()
        check_still_serving(project, daemon)
    finally:
        project.cleanup()


def check_still_serving(project: Project, daemon: DaemonProcess) -> None:
    """After the fuzzing: a trigger runs, the log holds no crash, SIGTERM stops it."""
    client = project.client()
    (run,) = wait_final(client, [client.trigger("e2e-noop", {"after": True}).id], timeout=10)
    assert run["status"] == "completed"
    events = set(daemon.events())
    assert not events & {"command_failed", "control_request_failed", "attempt_crashed"}, events
    assert "Traceback" not in daemon.log_text()
    assert daemon.terminate() == 0


def names_a_field(message: str) -> bool:
    event("refused")
    return any(field in message for field in FIELDS)


def assert_stored_and_running(client: keyq.Client, run_id: str) -> None:
    """The run is stored and its JSON renders; unless it must wait, it completes."""
    run = client.get_run(run_id)
    assert run["task"] == "e2e-noop"
    held = run["status"] == "delayed" or client.queues_limit_zero(run["queue"])
    event("stored, held" if held else "stored, ran")
    if not held:
        (done,) = wait_final(client, [run_id], timeout=10)
        assert done["status"] == "completed", done


class FuzzClient(keyq.Client):
    def queues_limit_zero(self, queue: str) -> bool:
        return any(q["queue"] == queue and q["concurrency_limit"] == 0 for q in self.queues())


# --- the doors ----------------------------------------------------------------------------------


@FUZZ
@given(payload=PAYLOADS, options=OPTIONS)
def test_fuzz__client_trigger_stores_and_runs_or_refuses_naming_a_field(
    served: Project, payload: Any, options: dict[str, Any]
) -> None:
    """`keyq.Client.trigger`, with the daemon up (the hand-off path, or the direct one)."""
    with FuzzClient(served.config) as client:
        try:
            handle = client.trigger("e2e-noop", built(payload), **options)
        except keyq.TriggerError as exc:
            refusal = str(exc)
        else:
            assert_stored_and_running(client, handle.id)
            return
    assert names_a_field(refusal), refusal


CLI_ARG = st.text(ANY_CHAR.filter(lambda c: c != "\x00"), max_size=10) | st.sampled_from(
    ["5", "0", "11", "100000000000000000000", "-3", "1e308", "nan", "inf", "3000000d"]
)
CLI_OPTIONS = ["--priority", "--delay", "--concurrency-key", "--max-attempts", "--tag", "--queue"]


@FUZZ
@given(
    payload=CLI_ARG | JSON.map(json.dumps) | st.integers(1, 3000).map(lambda n: "[" * n + "]" * n),
    extra=st.lists(st.tuples(st.sampled_from(CLI_OPTIONS), CLI_ARG), max_size=3),
)
def test_fuzz__cli_trigger_exits_0_with_a_stored_run_or_2_naming_what(
    served: Project, payload: str, extra: list[tuple[str, str]]
) -> None:
    """`keyq trigger e2e-noop PAYLOAD [options]`: exit 0 and a stored run's id, or exit 2 and
    one line naming what was refused; never a traceback, never exit 1."""
    argv = ["trigger", "e2e-noop", payload, "--config", str(served.config), "--app", "e2e_tasks"]
    for option, value in extra:
        argv += [option, value]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code in (0, 2), (argv, result.output, result.exception)
    if result.exit_code == 2:
        assert names_a_field(result.stderr) or "Usage:" in result.stderr, result.stderr
        return
    with FuzzClient(served.config) as client:
        assert_stored_and_running(client, result.stdout.strip())


RUN_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "id": st.just(None).map(lambda _: new_run_id(time.time())) | TEXT | JSON,
        "task": st.just("e2e-noop") | TEXT | JSON,
        "at": st.just(None).map(lambda _: time.time()) | FLOATS | INTEGERS | JSON,
        "parent_id": st.none() | TEXT | JSON,
        "options": OPTIONS | JSON,
        "payload": JSON,
    },
)
REQUEST = st.fixed_dictionaries(
    {"op": st.just("trigger")},
    optional={
        "deadline": st.just("soon")
        | FLOATS
        | INTEGERS
        | st.just(None).map(lambda _: host_monotonic() + 1),
        "retry": st.booleans() | JSON,
        "runs": st.lists(RUN_FIELDS, max_size=2) | JSON,
    },
)


NEW_ID = st.just(None).map(lambda _: new_run_id(time.time()))
NOW = st.just(None).map(lambda _: time.time())
VALID_RUN = st.fixed_dictionaries(
    {
        "id": NEW_ID,
        "task": st.just("e2e-noop"),
        "at": NOW,
        "parent_id": st.none(),
        "options": st.just({}) | OPTIONS,
        "payload": JSON,
    }
)
MOSTLY_VALID = st.fixed_dictionaries(
    {
        "op": st.just("trigger"),
        "deadline": st.just(None).map(lambda _: host_monotonic() + 1),
        "retry": st.booleans(),
        "runs": st.lists(VALID_RUN, min_size=1, max_size=3),
    }
)


@FUZZ
@given(request=MOSTLY_VALID | REQUEST | st.dictionaries(TEXT, JSON, max_size=3) | JSON)
def test_fuzz__socket_line_is_answered_stored_or_refused(served: Project, request: Any) -> None:
    """A line on the control socket: a JSON answer; `ok` means every run it carried is
    stored; otherwise the error names what was wrong. NaN, Infinity and lone surrogates
    travel as Python's json writes them."""
    op = request.get("op") if isinstance(request, dict) else None
    line = json.dumps(request, ensure_ascii=True).encode() + b"\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(socket_path(served.database)))
        sock.sendall(line)
        if op == "poke":
            return  # the one request that gets no answer
        answer = json.loads(sock.makefile("rb").readline())
    assert isinstance(answer, dict)
    assert answer["ok"] in (True, False)
    if answer["ok"] and op == "trigger":
        with FuzzClient(served.config) as client:
            for run in request["runs"]:
                assert_stored_and_running(client, run["id"])
    elif not answer["ok"]:
        assert names_a_field(answer["error"]) or "op" in answer["error"], answer


def test_fuzz__json_the_encoder_never_writes_is_refused_too(served: Project) -> None:
    """Lines no JSON encoder writes (NaN, Infinity, a 5,000-digit integer, nesting 100,000
    deep) get an answer, and the daemon stays up (checked when the module's daemon stops)."""
    lines = [
        b'{"op":"trigger","deadline":NaN,"retry":false,"runs":[]}\n',
        b'{"op":"trigger","deadline":Infinity,"retry":false,"runs":[]}\n',
        b'{"op":"trigger","deadline":' + b"9" * 5000 + b',"retry":false,"runs":[]}\n',
        b"[" * 30000 + b"]" * 30000 + b"\n",
    ]
    for line in lines:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(socket_path(served.database)))
            sock.sendall(line)
            answer = json.loads(sock.makefile("rb").readline())
        assert answer["ok"] is False
