"""Recording a step: one transaction, and what happens when the database says no.

The write-ahead rule makes a commit the gate of everything the daemon does, so
a commit that fails must neither take the daemon down nor hold it up for
good. The rule, by cause (docs/durability.md):

* **Runs handed in are stored promptly or not at all.** If the commit that
  would store them fails because the database does (locked, full), or comes
  too close to their client's deadline, the engine forgets them and their
  caller hears the error before it gives up waiting: a trigger answered with
  an error is stored by nobody later (the client may store it itself, or
  report the refusal).
* **The values themselves are refused** (a constraint, text SQLite cannot
  encode, an integer over 64 bits: :class:`~keyq.errors.UnstorableError`):
  the step is committed again in parts, halving, until the runs that carry
  the refused values stand alone. Those runs are failed with reason
  ``unrecordable`` (their attempt stopped), a refused hand-in is answered
  with the error; everything else is recorded.
* **The database fails** (locked, full, an I/O error): the rest of the step
  is retried with backoff, acting on none of it, while new triggers are
  refused at once. A stop request ends the retries (nothing of the step was
  acted on, so the next start recovers from the database); so does the end of
  ``commit_retry``, after which the daemon stops for its supervisor to
  restart it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from keyq.core import recovery
from keyq.core.engine import Engine
from keyq.core.model import ErrorInfo, RunId, Step, Transition
from keyq.core.states import FAILED, Reason
from keyq.errors import StoreError, UnstorableError
from keyq.store.database import Database
from keyq.store.handins import HandIn, lock_wait_s, too_late
from keyq.store.protocol import CommitAbandoned
from keyq.store.runs import JournalWrite

FIRST_RETRY_S, MAX_RETRY_S = 0.05, 5.0


class TooLateError(StoreError):
    """Runs handed in could not be stored before their client's deadline."""


@dataclass(slots=True)
class Recorded:
    """What a step recorded: the step to act on, the seqs of the runs inserted, and
    the runs whose changes were refused (their writes are not on disk)."""

    step: Step
    seqs: dict[RunId, int] = field(default_factory=dict)
    refused: dict[RunId, StoreError] = field(default_factory=dict)
    dropped: set[HandIn] = field(default_factory=set)  # hand-ins refused and answered


@dataclass(eq=False, slots=True)
class _Group:
    """Writes recorded together or not at all: one run's, or one hand-in's."""

    run_ids: set[RunId]
    hand_in: HandIn | None = None


class Recorder:
    """Commits the daemon's steps through its store, by the rule above."""

    def __init__(
        self,
        store: Database,
        engine: Engine,
        log: Any,
        *,
        retry_for_s: float,
        stop: anyio.Event,
        while_failing: Callable[[StoreError], None],
    ) -> None:
        self._store = store
        self._engine = engine
        self._log = log
        self._retry_for_s = retry_for_s
        self._stop = stop
        self._while_failing = while_failing  # refuse waiting triggers, ping the watchdog
        self._tombstones: list[Transition] = []  # FAILED records of runs no longer active
        self._unrecordable: set[RunId] = set()  # refused once: a second refusal gives up

    async def record(
        self, step: Step, entries: Sequence[JournalWrite], hand_ins: Sequence[HandIn], now: float
    ) -> Recorded:
        """Commit the step with the journal entries and the runs handed in; raises
        :class:`CommitAbandoned` if the daemon must stop without it."""
        if self._tombstones:
            step = Step((*self._tombstones, *step.transitions), *_acts(step))
            self._tombstones = []
        recorded = Recorded(step)
        hand_ins = self._in_time(hand_ins, recorded)
        writes = _Writes(recorded.step, list(entries))
        try:
            recorded.seqs = await self._commit(writes, hand_ins)
        except UnstorableError:
            await self._record_apart(writes, _groups(writes, hand_ins), recorded, now)
        except StoreError as exc:
            self._refuse(hand_ins, exc, recorded)
            writes = _Writes(recorded.step, writes.entries)
            await self._record_apart(writes, _groups(writes, ()), recorded, now)
        else:
            for hand_in in hand_ins:
                hand_in.reply.set(None)
        return recorded

    async def _commit(self, writes: _Writes, hand_ins: Sequence[HandIn]) -> dict[RunId, int]:
        waits = [lock_wait_s(h.deadline) for h in hand_ins]
        return await self._store.commit(
            writes.step,
            writes.entries,
            [run for hand_in in hand_ins for run in hand_in.runs],
            lock_wait_s=min((w for w in waits if w is not None), default=None),
        )

    async def _record_apart(
        self, writes: _Writes, groups: list[_Group], recorded: Recorded, now: float
    ) -> None:
        """Commit the groups, halving a part the database refuses until each refused
        group stands alone."""
        parts = [groups]
        while parts:
            part = parts.pop()
            try:
                recorded.seqs |= await self._commit_retrying(writes, part, recorded)
            except UnstorableError as exc:
                if len(part) > 1:
                    middle = len(part) // 2
                    parts += [part[middle:], part[:middle]]
                else:
                    self._refused(part[0], exc, recorded, writes, now)

    async def _commit_retrying(
        self, writes: _Writes, part: list[_Group], recorded: Recorded
    ) -> dict[RunId, int]:
        """Commit one part, retrying with backoff while the database fails. A hand-in
        is refused at the first such failure (or once it is too late), the rest retried."""
        delay, give_up_at = FIRST_RETRY_S, anyio.current_time() + self._retry_for_s
        while True:
            part = [g for g in part if g.hand_in is None or g.hand_in not in recorded.dropped]
            hand_ins = self._in_time([g.hand_in for g in part if g.hand_in], recorded)
            part = [g for g in part if g.hand_in is None or g.hand_in in hand_ins]
            if not part:
                return {}
            try:
                seqs = await self._commit(writes.only(part), hand_ins)
            except UnstorableError:
                raise
            except StoreError as exc:
                if hand_ins:
                    self._refuse(hand_ins, exc, recorded)
                    continue
                self._log.error("commit_failed", error=str(exc), retry_in_s=delay)
                self._while_failing(exc)
                await self._wait_to_retry(exc, delay, give_up_at)
                delay = min(delay * 2, MAX_RETRY_S)
                continue
            for hand_in in hand_ins:
                hand_in.reply.set(None)
            return seqs

    async def _wait_to_retry(self, exc: StoreError, delay: float, give_up_at: float) -> None:
        with anyio.move_on_after(delay):
            await self._stop.wait()
        if self._stop.is_set():
            message = f"stopped while the database refused a commit: {exc}"
            raise CommitAbandoned(message, requested=True)
        if anyio.current_time() >= give_up_at:
            message = f"the database refused every commit for {self._retry_for_s:g} s"
            raise CommitAbandoned(f"{message} (commit_retry): {exc}", requested=False)

    # --- refusals -------------------------------------------------------------------------

    def _in_time(self, hand_ins: Sequence[HandIn], recorded: Recorded) -> list[HandIn]:
        """The hand-ins that may still be stored; the others are refused."""
        late = [h for h in hand_ins if too_late(h.deadline)]
        if late:
            self._refuse(late, TooLateError("not stored before the client's deadline"), recorded)
        return [h for h in hand_ins if h not in late]

    def _refuse(self, hand_ins: Iterable[HandIn], exc: StoreError, recorded: Recorded) -> None:
        """The runs were never stored: forget them, then tell their callers."""
        for hand_in in hand_ins:
            ids = hand_in.ids
            recovery.withdraw(self._engine, ids)
            recorded.step = _without(recorded.step, ids)
            recorded.dropped.add(hand_in)
            self._log.warning("trigger_refused", runs=len(ids), error=str(exc))
            hand_in.reply.fail(exc)

    def _refused(
        self, group: _Group, exc: UnstorableError, recorded: Recorded, writes: _Writes, now: float
    ) -> None:
        if group.hand_in is not None:
            self._refuse([group.hand_in], exc, recorded)
            return
        (run_id,) = group.run_ids
        recorded.refused[run_id] = exc
        recorded.step = _without(recorded.step, {run_id})
        self._log.error("run_unrecordable", run_id=run_id, error=str(exc))
        if run_id in self._unrecordable:
            return  # even its failure was refused: the stored state stands until a restart
        self._unrecordable.add(run_id)
        error = ErrorInfo("Unrecordable", f"the database refused this run's record: {exc}")
        if not recovery.abandon(self._engine, run_id, now, error):
            mine = [t for t in writes.step.transitions if t.run_id == run_id]
            if mine:
                self._tombstones.append(_tombstone(mine[-1], now, error))


@dataclass(slots=True)
class _Writes:
    """One step's writes; :meth:`only` gives the same for some of its runs."""

    step: Step
    entries: list[JournalWrite]

    def only(self, part: Iterable[_Group]) -> _Writes:
        ids = {run_id for group in part for run_id in group.run_ids}
        return _Writes(_keep(self.step, ids), [e for e in self.entries if e[0] in ids])


def _groups(writes: _Writes, hand_ins: Sequence[HandIn]) -> list[_Group]:
    groups = [_Group(h.ids, h) for h in hand_ins]
    handed = {run_id for g in groups for run_id in g.run_ids}
    step = writes.step
    touched = [t.run_id for t in step.transitions]
    touched += [c.run_id for c in step.cancel_requests] + [e[0] for e in writes.entries]
    singles = dict.fromkeys(r for r in touched if r not in handed)
    return groups + [_Group({run_id}) for run_id in singles]


def _acts(step: Step) -> tuple[Any, ...]:
    return step.start, step.cancel, step.cancel_requests, step.expired_tokens


def _keep(step: Step, ids: set[RunId]) -> Step:
    return Step(
        tuple(t for t in step.transitions if t.run_id in ids),
        tuple(s for s in step.start if s.run_id in ids),
        tuple(c for c in step.cancel if c in ids),
        tuple(c for c in step.cancel_requests if c.run_id in ids),
        tuple(e for e in step.expired_tokens if e.run_id in ids),
    )


def _without(step: Step, ids: set[RunId]) -> Step:
    """The step less the runs in ``ids``: their attempts are still stopped."""
    return Step(
        tuple(t for t in step.transitions if t.run_id not in ids),
        tuple(s for s in step.start if s.run_id not in ids),
        step.cancel,
        tuple(c for c in step.cancel_requests if c.run_id not in ids),
        tuple(e for e in step.expired_tokens if e.run_id not in ids),
    )


def _tombstone(last: Transition, now: float, error: ErrorInfo) -> Transition:
    """FAILED in place of a final change the database refused (a run no longer active)."""
    return Transition(
        last.run_id,
        last.seq,
        last.task,
        last.queue,
        last.concurrency_key,
        now,
        last.from_,
        FAILED,
        Reason.UNRECORDABLE,
        last.attempt,
        error=error,
    )
