"""Trigger validation: every option is checked and refused with a message naming it."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pytest

from keyq.core.model import NewRun
from keyq.core.retry import Retry
from keyq.core.states import DELAYED, QUEUED
from keyq.errors import PayloadError, TriggerError
from keyq.ids import new_run_id
from keyq.registry import Queue, Registry, Task
from keyq.triggers import build_run, encode_payload

NOW = 1_700_000_000.5
RUN_ID = new_run_id(NOW)
LIMIT = 1024


@pytest.fixture
def task(registry: Registry) -> Task:
    q = registry.queue("user-analysis", concurrency_limit=2)

    @registry.task(id="analyze", queue=q, retry=Retry(max_attempts=4))
    async def analyze(payload: Any, ctx: Any) -> None:
        return None

    return analyze


def _build(task: Task, payload: Any = None, **options: Any) -> NewRun:
    return build_run(task, payload, options, run_id=RUN_ID, now=NOW, max_payload_bytes=LIMIT)


def _refused(task: Task, payload: Any = None, **options: Any) -> str:
    with pytest.raises(TriggerError) as info:
        _build(task, payload, **options)
    return str(info.value)


# --- defaults ----------------------------------------------------------------------------------


def test_build_run__defaults(task: Task) -> None:
    """Without options a run is QUEUED now, priority 5, on the task's queue, task's attempts."""
    run = _build(task, {"workoutId": "w-123"})
    assert run == NewRun(
        id=RUN_ID,
        task="analyze",
        queue="user-analysis",
        concurrency_key=None,
        priority=5,
        max_attempts=4,
        payload='{"workoutId":"w-123"}',
        tags=(),
        idempotency_key=None,
        queue_limit=None,
        parent_id=None,
        created_at=NOW,
        available_at=NOW,
        state=QUEUED,
    )


def test_build_run__every_option_is_applied(task: Task) -> None:
    """All documented options land in the row to insert."""
    run = _build(
        task,
        [1, "two"],
        concurrency_key="u-1",
        priority=1,
        delay=30,
        idempotency_key="order-9",
        max_attempts=1,
        tags=["vip", "eu"],
        queue="paid-users",
    )
    assert (run.concurrency_key, run.priority, run.max_attempts) == ("u-1", 1, 1)
    assert (run.idempotency_key, run.tags, run.queue) == ("order-9", ("vip", "eu"), "paid-users")
    assert (run.state, run.available_at, run.created_at) == (DELAYED, NOW + 30, NOW)
    assert run.payload == '[1,"two"]'


def test_build_run__unknown_option_is_named(task: Task) -> None:
    """A misspelt option is refused, naming it and listing the known ones."""
    message = _refused(task, concurency_key="u-1")
    assert "'concurency_key'" in message
    assert "concurrency_key" in message.split("known:")[1]


# --- priority ------------------------------------------------------------------------------------


@pytest.mark.parametrize("priority", [1, 5, 10])
def test_build_run__priority_in_range(task: Task, priority: int) -> None:
    """Priorities 1 to 10 are accepted as given."""
    assert _build(task, priority=priority).priority == priority


@pytest.mark.parametrize("priority", [0, 11, -1, "x", "5", 2.5, True])
def test_build_run__priority_out_of_range_is_refused(task: Task, priority: object) -> None:
    """Priority 0 (reserved), 11, and non-integers are refused naming the priority."""
    message = _refused(task, priority=priority)
    assert message.startswith("priority must be")
    assert "1" in message
    assert "10" in message


# --- delay ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("delay", "seconds"),
    [("5m", 300.0), ("2h", 7_200.0), (12, 12.0), (0.5, 0.5), (timedelta(minutes=1), 60.0)],
)
def test_build_run__delay_makes_a_delayed_run(task: Task, delay: object, seconds: float) -> None:
    """A positive delay stores the run DELAYED, available that much later."""
    run = _build(task, delay=delay)
    assert run.state is DELAYED
    assert run.available_at == NOW + seconds
    assert run.created_at == NOW


@pytest.mark.parametrize("delay", [0, "0s", timedelta(0)])
def test_build_run__zero_delay_is_queued(task: Task, delay: object) -> None:
    """A zero delay is the same as none: QUEUED and available now."""
    run = _build(task, delay=delay)
    assert (run.state, run.available_at) == (QUEUED, NOW)


@pytest.mark.parametrize("delay", ["soon", "5 minutes", -1, "-5m", [5], math.nan])
def test_build_run__bad_delay_is_refused(task: Task, delay: object) -> None:
    """A delay that is not a duration >= 0 is refused naming the delay."""
    assert _refused(task, delay=delay).startswith("delay:")


# --- attempts, tags, keys ------------------------------------------------------------------------


@pytest.mark.parametrize("attempts", [0, -1, "3", 1.0, True])
def test_build_run__bad_max_attempts_is_refused(task: Task, attempts: object) -> None:
    """max_attempts must be an integer >= 1."""
    assert _refused(task, max_attempts=attempts).startswith("max_attempts must be")


def test_build_run__single_tag_string_is_one_tag(task: Task) -> None:
    """tags="vip" means one tag, not three one-letter tags."""
    assert _build(task, tags="vip").tags == ("vip",)
    assert _build(task, tags=("a", "b")).tags == ("a", "b")


@pytest.mark.parametrize("tags", [[1], [""], ["x" * 129], [f"t{i}" for i in range(21)], {"a"}, 5])
def test_build_run__bad_tags_are_refused(task: Task, tags: object) -> None:
    """Tags are at most 20 non-empty strings of up to 128 characters."""
    assert _refused(task, tags=tags).startswith(("tags must be", "tags[0] must be"))


@pytest.mark.parametrize("key", ["", "k" * 257, 1.5, ["u"], b"u"])
def test_build_run__bad_idempotency_key_is_refused(task: Task, key: object) -> None:
    """An idempotency key is a string of 1-256 characters."""
    assert _refused(task, idempotency_key=key).startswith("idempotency_key must be")


def test_build_run__idempotency_key_is_kept(task: Task) -> None:
    """A valid idempotency key is stored on the run."""
    assert _build(task, idempotency_key="k" * 256).idempotency_key == "k" * 256


def test_build_run__integer_concurrency_key_becomes_a_string(task: Task) -> None:
    """A numeric user id works as a concurrency key and is stored as text."""
    assert _build(task, concurrency_key=42).concurrency_key == "42"


@pytest.mark.parametrize("key", ["", "k" * 257, 1.5, True, ["u"]])
def test_build_run__bad_concurrency_key_is_refused(task: Task, key: object) -> None:
    """A concurrency key is a string (or int) of 1-256 characters."""
    assert _refused(task, concurrency_key=key).startswith("concurrency_key must be")


# --- queue overrides -----------------------------------------------------------------------------


def test_build_run__queue_override_by_name(task: Task) -> None:
    """queue="name" runs on that queue without changing any limit."""
    run = _build(task, queue="free-users")
    assert (run.queue, run.queue_limit) == ("free-users", None)


def test_build_run__queue_override_by_queue_object(task: Task) -> None:
    """queue=Queue(...) runs on that queue and carries its limit."""
    run = _build(task, queue=Queue("paid-users", concurrency_limit=10))
    assert (run.queue, run.queue_limit) == ("paid-users", 10)


def test_build_run__queue_override_by_mapping_with_limit(task: Task) -> None:
    """queue={"name", "concurrency_limit"} runs there and carries the new limit."""
    run = _build(task, queue={"name": "free-users", "concurrency_limit": 1})
    assert (run.queue, run.queue_limit) == ("free-users", 1)


def test_build_run__queue_mapping_without_limit(task: Task) -> None:
    """A mapping with only a name is the same as the name."""
    run = _build(task, queue={"name": "free-users"})
    assert (run.queue, run.queue_limit) == ("free-users", None)


def test_build_run__queue_mapping_with_unknown_field_is_refused(task: Task) -> None:
    """A mapping with an unexpected field (a typo) is refused naming that field."""
    message = _refused(task, queue={"name": "free-users", "limit": 1})
    assert message == "queue: unknown field 'limit'"


@pytest.mark.parametrize(
    ("queue", "fragment"),
    [
        ("bad name", "queue name"),
        ({"concurrency_limit": 1}, "queue name"),
        ({"name": "q", "concurrency_limit": -1}, "queue.concurrency_limit"),
        ({"name": "q", "concurrency_limit": "2"}, "queue.concurrency_limit"),
        (5, "queue must be"),
    ],
)
def test_build_run__bad_queue_override_is_refused(task: Task, queue: object, fragment: str) -> None:
    """A bad queue name or limit in an override is a TriggerError about the queue."""
    message = _refused(task, queue=queue)
    assert message.startswith("queue")
    assert fragment in message


# --- payloads ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "text"),
    [
        (None, "null"),
        ({}, "{}"),
        ({"a": [1, 2.5, True, None]}, '{"a":[1,2.5,true,null]}'),
        ("héllo", '"héllo"'),
    ],
)
def test_build_run__payload_is_compact_json(task: Task, payload: object, text: str) -> None:
    """Payloads are stored as compact UTF-8 JSON text."""
    assert _build(task, payload).payload == text


@pytest.mark.parametrize(
    "payload", [{1, 2}, math.nan, {"x": math.inf}, object(), b"bytes", {"d": timedelta(1)}]
)
def test_build_run__payload_not_json_is_refused(task: Task, payload: object) -> None:
    """A set, NaN, infinity, bytes or an object is refused: payloads are JSON only."""
    with pytest.raises(PayloadError, match="payload is not JSON-serialisable"):
        _build(task, payload)


def test_build_run__payload_over_limit_names_size_and_limit(task: Task) -> None:
    """A payload over max_payload_bytes is refused naming its size and the limit."""
    payload = "x" * LIMIT  # JSON adds two quotes
    with pytest.raises(PayloadError) as info:
        _build(task, payload)
    assert f"payload is {LIMIT + 2} bytes" in str(info.value)
    assert f"max_payload_bytes = {LIMIT}" in str(info.value)


def test_build_run__payload_at_limit_is_accepted(task: Task) -> None:
    """A payload of exactly max_payload_bytes is accepted."""
    assert len(_build(task, "x" * (LIMIT - 2)).payload) == LIMIT


def test_encode_payload__counts_utf8_bytes_not_characters() -> None:
    """The size limit is in bytes of UTF-8, so non-ASCII text counts for what it weighs."""
    with pytest.raises(PayloadError, match="payload is 8 bytes"):
        encode_payload("ééé", 7)  # 3 x 2 bytes + 2 quotes
    assert encode_payload("ééé", 8) == '"ééé"'


def _nested(levels: int) -> object:
    value: object = 0
    for _ in range(levels):
        value = [value]
    return value


def test_encode_payload__nesting_is_bounded_so_every_reader_can_decode_it() -> None:
    """JSON nested deeper than 100 levels is refused (Python's own reader gives up near
    1,000, so a deeper payload would fail its attempt and every listing); a wide payload
    with many brackets but little depth is fine."""
    assert encode_payload(_nested(100), 10**6).count("[") == 100
    with pytest.raises(PayloadError, match="nests deeper than 100 levels"):
        encode_payload(_nested(101), 10**6)
    with pytest.raises(PayloadError, match="nests deeper than 100 levels"):
        encode_payload(_nested(5000), 10**6)
    assert encode_payload([{"a": [1]}] * 5000, 10**6).startswith('[{"a":[1]}')


def test_encode_payload__a_lone_surrogate_is_refused() -> None:
    """Text SQLite cannot store as UTF-8 is refused before anything is written."""
    with pytest.raises(PayloadError, match="not valid UTF-8"):
        encode_payload({"name": "a\ud800"}, 10**6)


def test_build_run__first_bad_option_wins_over_payload(task: Task) -> None:
    """Options are checked as well as the payload: an unknown option is reported first."""
    with pytest.raises(TriggerError, match="unknown trigger option"):
        _build(task, {1, 2}, colour="red")
