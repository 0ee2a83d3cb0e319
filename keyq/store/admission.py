"""What the SQLite store does with each event: the engine decides, the database knows.

Each event the daemon sends is applied to the engine by a handler chosen from a
table by the event's type. A handler may read the database (a child's result,
a token's state, whether a resent run is stored) but writes nothing itself: it
queues its writes (journal entries, runs handed in) and its replies for the
step's one commit, which :meth:`Admission.record` makes through the recorder.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from keyq.core import recovery
from keyq.core.engine import Engine
from keyq.core.model import ChildResult, NewRun, RunId, Step, WaitChildren, WaitForToken
from keyq.core.states import DELAYED, FINAL, QUEUED
from keyq.errors import (
    KeyqError,
    RunNotFoundError,
    RunStateError,
    StoreError,
    TokenNotFoundError,
    TriggerError,
)
from keyq.replies import Reply
from keyq.store.codec import spec_from_new
from keyq.store.database import Database
from keyq.store.handins import HandIn, too_late
from keyq.store.protocol import (
    AttemptEnded,
    CancelAsked,
    DebounceAsked,
    Event,
    RunsHandedIn,
    SettingsChanged,
    StepDone,
    Tick,
    WaitReached,
)
from keyq.store.recorder import Recorder
from keyq.store.runs import JournalWrite

INGEST_BATCH = 5000  # rows read at a time when catching up


class Admission:
    """The engine and what one tick has gathered for its commit."""

    def __init__(self, db: Database, engine: Engine, recorder: Recorder, log: Any) -> None:
        self._db = db
        self.engine = engine
        self._recorder = recorder
        self._log = log
        self.journaled: set[RunId] = set()  # active runs with recorded waits or steps
        self.settings_changed = False
        self._last_seq = 0
        self._last_token_seq = 0
        self._entries: list[JournalWrite] = []
        self._hand_ins: list[HandIn] = []
        self._replies: list[tuple[RunId | None, Reply[None]]] = []
        self._waiting: list[RunId] = []
        self._refused_waits: list[tuple[RunId, KeyqError | None]] = []
        self._answered_client = False
        # A handler that needs no read is plain: no coroutine per attempt that ends.
        self._handlers: dict[type, Callable[[Any, float], Awaitable[None] | None]] = {
            AttemptEnded: self._ended,
            WaitReached: self._wait,
            StepDone: self._step,
            CancelAsked: self._cancel,
            RunsHandedIn: self._hand_in,
            DebounceAsked: self._debounce,
            SettingsChanged: self._settings,
        }

    # --- start-up and what other processes wrote --------------------------------------------

    async def recover(self, now: float) -> None:
        """Every active run, where it was; what recovery could not settle from the runs
        alone (children final before the stop, tokens completed meanwhile) is read."""
        snapshot, recovered = await self._db.load_active(
            lambda specs: recovery.recover(self.engine, specs, now)
        )
        self._last_seq, self._last_token_seq = snapshot.last_seq, snapshot.last_token_seq
        self.journaled = snapshot.journaled
        counted = await self._db.counted_starts(now - self._db.rate_horizon_s)
        recovery.remember_starts(self.engine, counted)
        for run_id, missing in recovered.children.items():
            self.engine.waits.hear(run_id, await self._final_children(missing), now)
        for token_id in recovered.tokens:
            token = await self._db.token(token_id)
            if token is None or token.status != "waiting":
                self.engine.waits.token_done(token_id, now)

    async def ingest(self, now: float, batch: int = INGEST_BATCH) -> bool:
        """Adopt runs stored after the last one read (by seq, never a scan), and token
        completions while a run waits on one; True if a run set a queue's limit."""
        overrides = False
        while True:
            specs = await self._db.load_new(self._last_seq, batch)
            for spec in specs:
                if spec.state in (QUEUED, DELAYED):
                    self.engine.submit(spec)
                overrides = overrides or spec.queue_limit is not None
            if specs:
                self._last_seq = specs[-1].seq
            if len(specs) < batch:
                break
        # Only while a run waits on a token: a trigger's poke pays no extra query.
        # A run that starts waiting later reads its token's state itself.
        while self.engine.waits.on_tokens and (
            completed := await self._db.completed_tokens(self._last_token_seq, batch)
        ):
            for self._last_token_seq, token_id in completed:
                self.engine.waits.token_done(token_id, now)
        return overrides

    # --- events ------------------------------------------------------------------------------

    async def apply(self, events: Sequence[Event], now: float) -> None:
        """Apply the events in order; a failure is that event's alone (logged, its
        caller answered)."""
        for event in events:
            try:
                reading = self._handlers[type(event)](event, now)
                if reading is not None:
                    await reading
            except Exception as exc:
                self._log.exception("command_failed", command=type(event).__name__)
                reply = getattr(event, "reply", None)
                if reply is not None:
                    reply.fail(exc)

    def _ended(self, event: AttemptEnded, now: float) -> None:
        self.engine.finished(event.run_id, event.outcome, now, event.claim)

    def _step(self, event: StepDone, now: float) -> None:
        if not self.engine.holds(event.run_id, event.claim):
            event.reply.fail(StoreError(f"run {event.run_id}: that attempt is no longer the run's"))
            return
        self._entries.append((event.run_id, event.entry, now))
        self.journaled.add(event.run_id)
        self._replies.append((event.run_id, event.reply))

    async def _wait(self, event: WaitReached, now: float) -> None:
        run_id, wait, known = event.run_id, event.wait, {}
        done_token: str | None = None  # a token already completed or timed out
        if isinstance(wait, WaitChildren):
            missing = self.engine.waits.unresolved(run_id, wait.child_ids)
            if missing:  # children another process triggered may not be read yet
                await self.ingest(now)
                missing = self.engine.waits.unresolved(run_id, wait.child_ids)
            if missing:
                known = await self._final_children(missing)
        elif isinstance(wait, WaitForToken):
            token = await self._db.token(wait.token_id)
            if token is None:
                self._refused_waits.append((run_id, TokenNotFoundError(wait.token_id)))
                return
            wait = WaitForToken(token.id, token.timeout_at)
            done_token = token.id if token.status != "waiting" else None
        if not self.engine.wait(run_id, wait, now, known, event.claim):
            self._refused_waits.append((run_id, None))  # the attempt is being stopped
            return
        self._entries.append((run_id, event.entry, now))  # with the WAITING transition
        self.journaled.add(run_id)
        self._waiting.append(run_id)
        if done_token is not None:
            self.engine.waits.token_done(done_token, now)

    async def _cancel(self, event: CancelAsked, now: float) -> None:
        if event.run_id not in self.engine:
            await self.ingest(now)
        try:
            if event.run_id not in self.engine:
                await self._explain_not_active(event.run_id)
            self.engine.cancel(event.run_id, now)
        except KeyqError as exc:
            event.reply.fail(exc)
            return
        self._replies.append((event.run_id, event.reply))

    async def _explain_not_active(self, run_id: RunId) -> None:
        row = await self._db.outcome(run_id)
        if row is None:
            raise RunNotFoundError(run_id)
        raise RunStateError(f"run {run_id} is already {row.status.value}")

    async def _hand_in(self, event: RunsHandedIn, now: float) -> None:
        """Adopt runs handed in; they are stored with this step's transitions.

        A run the engine holds, or (for a request sent again) whose id is
        stored, is not adopted again: handing in is idempotent, so a caller
        that heard no answer may send the runs again or store them itself. Too
        close to the caller's deadline nothing is adopted (keyq/store/handins.py).
        """
        if too_late(event.deadline):
            event.reply.fail(StoreError("the daemon took the runs too late: store them directly"))
            return
        runs = [r for r in event.runs if r.id not in self.engine]
        try:
            stored = await self._stored_ids(runs, event.retry)
        except KeyqError as exc:
            event.reply.fail(exc)
            return
        adopted = [r for r in runs if r.id not in stored and self.engine.submit(spec_from_new(r))]
        if adopted:
            self._hand_ins.append(HandIn(adopted, event.reply, event.deadline))
        else:
            self._replies.append((None, event.reply))
        self._answered_client = self._answered_client or event.deadline is not None

    async def _debounce(self, event: DebounceAsked, now: float) -> None:
        """Each debounced run folds into the DELAYED run of its key, if the engine has
        one; the others are adopted, stored with this step. Sent again after a lost
        answer, a run the first request made stands for itself."""
        try:
            stored = await self._stored_ids(
                [r for r in event.runs if r.id not in self.engine], event.retry
            )
        except KeyqError as exc:
            event.reply.fail(exc)
            return
        standing: list[RunId] = []
        adopted: list[NewRun] = []
        for run in event.runs:
            folded = run.id if run.id in self.engine or run.id in stored else None
            if folded is None and run.debounce_key is not None:
                at = run.available_at
                folded = self.engine.debounce(run.task, run.debounce_key, run.payload, at, now)
            if folded is None and self.engine.submit(spec_from_new(run)):
                adopted.append(run)
            standing.append(run.id if folded is None else folded)
        reply = _Standing(event.reply, standing)
        if adopted:
            self._hand_ins.append(HandIn(adopted, reply, None))
        else:
            self._replies.append((None, reply))

    async def _stored_ids(self, runs: list[NewRun], retry: bool) -> set[RunId]:
        """Which runs are stored already (only a request sent again can have any);
        TriggerError if a run names a parent that does not exist."""
        parents = {r.parent_id for r in runs if r.parent_id and r.parent_id not in self.engine}
        wanted = [r.id for r in runs] if retry else []
        if not (wanted or parents):
            return set()
        stored = await self._db.stored_ids([*wanted, *parents])
        missing = sorted(p for p in parents if p not in stored)
        if missing:
            raise TriggerError(f"parent_id: no run {missing[0]!r}")
        return stored

    def fire(self, runs: list[NewRun], reply: Reply[None]) -> None:
        """Runs a schedule fired: stored with this step, each claiming its tick."""
        adopted = [r for r in runs if self.engine.submit(spec_from_new(r))]
        if adopted:
            self._hand_ins.append(HandIn(adopted, reply, None))

    def _settings(self, event: SettingsChanged, now: float) -> None:
        self.settings_changed = True
        self._replies.append((None, event.reply))

    async def _final_children(self, missing: list[RunId]) -> dict[RunId, ChildResult]:
        """Results of children the engine does not follow: final ones, read from disk."""
        found = [await self._db.outcome(run_id) for run_id in missing]
        return {c.run_id: c for c in found if c is not None and c.status in FINAL}

    # --- the commit ---------------------------------------------------------------------------

    async def record(self, step: Step, now: float) -> Tick:
        """Commit the step with what the events gathered; answer who waited; the Tick."""
        if step.transitions or step.cancel_requests or self._entries or self._hand_ins:
            entries, self._entries = self._entries, []
            hand_ins, self._hand_ins = self._hand_ins, []
            recorded = await self._recorder.record(step, entries, hand_ins, now)
            self._stored(recorded.seqs)
            step, refused = recorded.step, recorded.refused
        else:
            refused = {}
        self._answer(refused)
        for t in step.transitions:
            if t.to in FINAL:
                self.journaled.discard(t.run_id)
        for start in step.start:
            start.replay = start.run_id in self.journaled
        tick = Tick(
            step.start,
            step.cancel,
            step.transitions,
            tuple(self._waiting),
            tuple(self._refused_waits),
            self._answered_client,
        )
        self._waiting, self._refused_waits, self._answered_client = [], [], False
        self.settings_changed = False
        return tick

    def _answer(self, refused: dict[RunId, StoreError]) -> None:
        """Answer what waited for this commit; a refused run's callers hear why."""
        replies, self._replies = self._replies, []
        for run_id, reply in replies:
            error = refused.get(run_id) if refused and run_id is not None else None
            if error is None:
                reply.set(None)
            else:
                reply.fail(error)

    def _stored(self, seqs: dict[RunId, int]) -> None:
        """Runs handed in are stored: the engine learns their rows, and if nobody
        else inserted in between, ingesting skips past them instead of reading them."""
        if not seqs:
            return
        self.engine.stored(seqs)
        first, last = min(seqs.values()), max(seqs.values())
        if first == self._last_seq + 1 and last == self._last_seq + len(seqs):
            self._last_seq = last


class _Standing:
    """Answers a debounce with the run standing for each trigger, once durable."""

    def __init__(self, reply: Reply[list[RunId]], standing: list[RunId]) -> None:
        self._reply, self._standing = reply, standing

    def set(self, value: None) -> None:
        self._reply.set(self._standing)

    def fail(self, error: BaseException) -> None:
        self._reply.fail(error)
