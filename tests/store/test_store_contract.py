"""The storage contract: what every Store must do, whatever keeps its runs.

One set of tests, parametrised over the stores (the ``harness`` fixture): the SQLite store
today, the PostgreSQL store when it comes. Each test speaks only the Store protocol
(keyq/store/protocol.py) plus the harness's two doors for what other processes do (store
runs directly, complete a token). Real files, real commits; time is the test's ``now``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from keyq.config import Config
from keyq.core.journal import Entry
from keyq.core.model import (
    Completed,
    ErrorInfo,
    Failed,
    NewRun,
    StartRun,
    WaitChildren,
    WaitForToken,
    WaitUntil,
)
from keyq.core.states import RunState
from keyq.errors import KeyqError, RunNotFoundError, RunStateError
from keyq.ids import new_run_id
from keyq.registry import Registry
from keyq.replies import Pending
from keyq.store.local import LocalStore
from keyq.store.protocol import (
    AttemptEnded,
    CancelAsked,
    Event,
    RunsHandedIn,
    StepDone,
    Store,
    Tick,
    WaitReached,
)
from keyq.store.sqlite import SqliteStore
from keyq.triggers import build_run

pytestmark = pytest.mark.anyio

T0 = 1_700_000_000.25


@dataclass
class Harness:
    """A store under test, and what other processes do to its database."""

    store: Store
    reopen: Callable[[], Store]  # a new store on the same data (after a crash)
    store_directly: Callable[[Sequence[NewRun]], None]
    complete_token: Callable[[str, str, float], None]
    registry: Registry

    def run(self, task: str = "work", payload: Any = None, **options: Any) -> NewRun:
        return build_run(
            self.registry.get(task),
            payload,
            options,
            run_id=new_run_id(T0),
            now=T0,
            max_payload_bytes=1 << 20,
        )

    async def hand_in(self, *runs: NewRun, now: float = T0) -> Tick:
        reply: Pending[None] = Pending()
        tick = await self.store.tick([RunsHandedIn(list(runs), reply, None, False)], now)
        await reply.wait()  # stored, or raises
        return tick


@pytest.fixture
def registry() -> Registry:
    registry = Registry()
    pair = registry.queue("pair", concurrency_limit=2)

    @registry.task(id="work", queue=pair)
    async def work(payload: Any, ctx: Any) -> None:
        return None

    return registry


@pytest.fixture(params=["sqlite"])
async def harness(
    request: pytest.FixtureRequest, config: Config, registry: Registry
) -> AsyncIterator[Harness]:
    local = LocalStore(config)
    opened: list[Store] = []

    def new_store() -> Store:
        store = SqliteStore(config, registry)
        opened.append(store)
        return store

    def complete(token_id: str, output: str, now: float) -> None:
        local.complete_token(token_id, output, now)

    store = new_store()
    await store.open(T0)
    try:
        yield Harness(store, new_store, local.insert_runs, complete, registry)
    finally:
        for each in opened:
            await each.close()
        local.close()


def started(tick: Tick) -> list[str]:
    return [s.run_id for s in tick.started]


async def one(store: Store, event: Event, now: float) -> Tick:
    return await store.tick([event], now)


async def ended(store: Store, start: StartRun, outcome: Any, now: float) -> Tick:
    return await one(store, AttemptEnded(start.run_id, start.claim, outcome), now)


# --- runs in, runs started --------------------------------------------------------------------


async def test_contract__a_run_handed_in_is_stored_with_its_start(harness: Harness) -> None:
    """A run handed in is durable when its reply is set, started in the same tick, and
    its start carries a claim."""
    run = harness.run(payload={"n": 1})
    tick = await harness.hand_in(run)
    (start,) = tick.started
    stored = await harness.store.outcome(run.id)

    assert (start.run_id, start.attempt, start.payload) == (run.id, 1, '{"n":1}')
    assert start.claim >= 1
    assert stored is not None
    assert stored.status is RunState.RUNNING
    assert [(t.run_id, t.to) for t in tick.transitions] == [(run.id, RunState.RUNNING)]


async def test_contract__the_key_limit_holds_and_a_freed_slot_is_reused(harness: Harness) -> None:
    """With limit 2 per key, five runs of one key start two at a time; another key is not
    held back; when one ends, the next of its key starts."""
    runs = [harness.run(concurrency_key="a") for _ in range(5)]
    other = harness.run(concurrency_key="b")
    tick = await harness.hand_in(*runs, other)
    first = {s.run_id: s for s in tick.started}

    assert set(first) == {runs[0].id, runs[1].id, other.id}
    after = await ended(harness.store, first[runs[0].id], Completed("null"), T0 + 1)
    assert started(after) == [runs[2].id]
    assert harness.store.statistics().running == 3


async def test_contract__runs_stored_by_another_process_start_after_a_poke(
    harness: Harness,
) -> None:
    """Runs a client stored directly (the daemon down or not asked) are found and started."""
    run = harness.run()
    harness.store_directly([run])
    harness.store.poke()
    tick = await harness.store.tick([], T0 + 1)

    assert started(tick) == [run.id]


async def test_contract__a_delayed_run_starts_at_its_time(harness: Harness) -> None:
    """A delayed run holds no slot and is due at its time; the store says when."""
    run = harness.run(delay=30)
    tick = await harness.hand_in(run)

    assert tick.started == ()
    assert tick.next_due_at is not None
    assert tick.next_due_at <= T0 + 30
    assert started(await harness.store.tick([], T0 + 30)) == [run.id]


# --- attempts ending, and fences --------------------------------------------------------------


async def test_contract__an_ended_attempt_is_recorded_once(harness: Harness) -> None:
    """Completed is stored with its result; a report carrying a stale claim changes nothing."""
    run = harness.run()
    (start,) = (await harness.hand_in(run)).started
    tick = await ended(harness.store, start, Completed('{"ok":true}'), T0 + 1)
    stale = await ended(harness.store, start, Failed(ErrorInfo("E", "late")), T0 + 2)
    stored = await harness.store.outcome(run.id)

    assert [(t.to, t.reason) for t in tick.transitions] == [(RunState.COMPLETED, "completed")]
    assert stale.transitions == ()
    assert stored is not None
    assert (stored.status, stored.output) == (RunState.COMPLETED, '{"ok":true}')


async def test_contract__a_failed_attempt_waits_out_its_backoff(harness: Harness) -> None:
    """A failure with attempts left is DELAYED for its retry, then starts as attempt 2."""
    run = harness.run()
    (start,) = (await harness.hand_in(run)).started
    tick = await ended(harness.store, start, Failed(ErrorInfo("E", "boom")), T0 + 1)
    (moved,) = tick.transitions
    assert (moved.to, moved.reason) == (RunState.DELAYED, "retry")
    assert moved.available_at is not None
    (again,) = (await harness.store.tick([], moved.available_at)).started

    assert again.attempt == 2
    assert again.claim != start.claim


# --- waits, steps, tokens, children -----------------------------------------------------------


async def test_contract__a_wait_gives_the_slot_back_and_resumes_with_a_new_claim(
    harness: Harness,
) -> None:
    """WAITING holds no slot; at its time the run resumes first, with a fresh claim, and
    its wait is in its journal."""
    a, b, c = (harness.run(concurrency_key="k") for _ in range(3))
    tick = await harness.hand_in(a, b, c)
    start_a = next(s for s in tick.started if s.run_id == a.id)
    entry = Entry(0, "wait", "", json.dumps({"resume_at": T0 + 60}))
    waited = await one(
        harness.store, WaitReached(a.id, start_a.claim, WaitUntil(T0 + 60), entry), T0
    )

    assert waited.waiting == (a.id,)
    assert started(waited) == [c.id]  # a's slot went to the next of its key
    assert harness.store.state_of(a.id) is RunState.WAITING
    assert await harness.store.journal(a.id) == [entry]
    start_b = next(s for s in tick.started if s.run_id == b.id)
    resumed = await ended(harness.store, start_b, Completed("null"), T0 + 60)
    (back,) = resumed.started
    assert (back.run_id, back.resumed, back.attempt) == (a.id, True, 1)
    assert back.claim != start_a.claim


async def test_contract__a_step_is_durable_before_its_reply(harness: Harness) -> None:
    """A step's result is in the journal once its reply is set; one from a stale claim is
    refused with an error."""
    run = harness.run()
    (start,) = (await harness.hand_in(run)).started
    ok, stale = Pending[None](), Pending[None]()
    entry = Entry(0, "step", "charge", '{"id": 7}')
    await harness.store.tick(
        [
            StepDone(run.id, start.claim, entry, ok),
            StepDone(run.id, start.claim + 5, Entry(1, "step", "x", "1"), stale),
        ],
        T0,
    )
    await ok.wait()

    assert await harness.store.journal(run.id) == [entry]
    with pytest.raises(KeyqError, match="no longer the run's"):
        await stale.wait()


async def test_contract__a_token_completed_elsewhere_resumes_its_waiter(harness: Harness) -> None:
    """A run waiting on a token resumes when another process completes the token."""
    run = harness.run()
    (start,) = (await harness.hand_in(run)).started
    token = await harness.store.create_token(run.id, 0, f"{run.id}/0", T0, None)
    entry = Entry(1, "for_token", token.id, json.dumps({"token": token.id}))
    wait = WaitReached(run.id, start.claim, WaitForToken(token.id), entry)
    assert (await one(harness.store, wait, T0)).waiting == (run.id,)
    harness.complete_token(token.id, '{"approved":true}', T0 + 5)
    harness.store.poke()
    (back,) = (await harness.store.tick([], T0 + 6)).started
    result = await harness.store.token_result(token.id)

    assert (back.run_id, back.resumed) == (run.id, True)
    assert (result.ok, result.output) == (True, {"approved": True})


async def test_contract__a_parent_resumes_with_its_childrens_results(harness: Harness) -> None:
    """A parent waiting on children resumes once they are final, with their results."""
    parent = harness.run()
    (p,) = (await harness.hand_in(parent)).started
    child = build_run(
        harness.registry.get("work"),
        {"c": 1},
        {"concurrency_key": "child"},
        run_id=new_run_id(T0),
        now=T0,
        max_payload_bytes=1024,
        parent_id=parent.id,
    )
    (c,) = (await harness.hand_in(child)).started
    entry = Entry(0, "children", "work", json.dumps({"children": [child.id]}))
    await one(harness.store, WaitReached(parent.id, p.claim, WaitChildren((child.id,)), entry), T0)
    (back,) = (await ended(harness.store, c, Completed('"done"'), T0 + 1)).started

    assert (back.run_id, back.resumed) == (parent.id, True)
    assert [(r.run_id, r.status, r.output) for r in back.children] == [
        (child.id, RunState.COMPLETED, '"done"')
    ]


# --- cancels ----------------------------------------------------------------------------------


async def test_contract__cancel_ends_a_queued_run_and_explains_a_refusal(harness: Harness) -> None:
    """A queued run is canceled at once; an unknown or final run is refused, named."""
    busy = [harness.run(concurrency_key="k") for _ in range(3)]
    done = harness.run(concurrency_key="other")
    tick = await harness.hand_in(*busy, done)
    (queued,) = [r for r in busy if r.id not in started(tick)]
    finished = next(s for s in tick.started if s.run_id == done.id)
    await ended(harness.store, finished, Completed("null"), T0 + 1)
    replies = {name: Pending[None]() for name in ("queued", "unknown", "final")}
    await harness.store.tick(
        [
            CancelAsked(queued.id, replies["queued"]),
            CancelAsked(new_run_id(T0), replies["unknown"]),
            CancelAsked(done.id, replies["final"]),
        ],
        T0 + 2,
    )
    await replies["queued"].wait()
    stored = await harness.store.outcome(queued.id)

    assert stored is not None
    assert stored.status is RunState.CANCELED
    with pytest.raises(RunNotFoundError):
        await replies["unknown"].wait()
    with pytest.raises(RunStateError, match="already completed"):
        await replies["final"].wait()


# --- ownership and recovery -------------------------------------------------------------------


async def test_contract__after_a_crash_a_running_run_runs_again(harness: Harness) -> None:
    """A store that stops without hearing how an attempt ended (a crash) leaves the run
    to the next one, which re-queues it as interrupted and starts attempt 2."""
    run = harness.run()
    (first,) = (await harness.hand_in(run)).started
    await harness.store.close()
    after = harness.reopen()
    await after.open(T0 + 10)
    (again,) = (await after.tick([], T0 + 10)).started
    stored = await after.outcome(run.id)

    assert (again.run_id, again.attempt) == (run.id, first.attempt + 1)
    assert stored is not None
    assert stored.status is RunState.RUNNING


async def test_contract__a_stopping_store_starts_nothing(harness: Harness) -> None:
    """After stopping(), runs handed in are stored but not started."""
    harness.store.stopping()
    run = harness.run()
    tick = await harness.hand_in(run)
    stored = await harness.store.outcome(run.id)

    assert tick.started == ()
    assert stored is not None
    assert stored.status is RunState.QUEUED
