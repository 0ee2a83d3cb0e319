"""The daemon's SQLite connection: small work inline, big commits in a thread.

The daemon is the only writer of transitions while it runs. Every wake-up's
transitions go to :meth:`Database.commit` together: one transaction, one
``executemany``, one fsync (with ``durability = "full"``) for however many
runs changed, never one per run.

Where the work runs is a measured choice (bench/latency, bench/throughput).
A hop to a worker thread and back costs 0.15 to 0.5 ms here, three times the
SQLite work of a small commit, so reads and small commits run on the event
loop's thread, in one go: that is most of an idle daemon's trigger-to-start
time. A large commit (a busy daemon's batch) goes to a worker thread in one
hop: SQLite releases the GIL while it writes and syncs, so the loop goes on
running attempts meanwhile. An inline write never waits for the write lock:
if another process holds it, that commit goes to the thread and waits there.
"""

from __future__ import annotations

import heapq
import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, TypeVar

import anyio

from keyq.config import Config
from keyq.core.journal import Entry
from keyq.core.model import (
    ChildResult,
    CountedStart,
    NewRun,
    RunId,
    RunSpec,
    ScheduleTick,
    Step,
)
from keyq.core.states import ACTIVE_ORDER, RunState
from keyq.results import WaitToken as TokenHandle
from keyq.schedules import Schedule
from keyq.store import db, schedule_rows, tokens
from keyq.store.codec import error_from_json, spec_from_row
from keyq.store.errors import is_busy, map_store_errors
from keyq.store.runs import JournalWrite, rows_written, write_step
from keyq.store.tokens import TokenRow, token_from_row

Q = db.QUERIES
INLINE_ROWS = 64  # a commit writing more rows than this goes to a worker thread
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Where the daemon reads from after start-up (the runs go to ``load_active``'s adopt)."""

    last_seq: int  # new runs are those after it
    journaled: set[RunId]  # active runs with recorded waits or steps: they start by replay
    last_token_seq: int  # token completions after it are new


class Database:
    """The daemon's reads and grouped writes, on its own connection (the store's I/O)."""

    def __init__(self, conn: sqlite3.Connection, config: Config) -> None:
        self._conn = conn
        # how long a counted start matters (the longest rate window in force): older
        # ones are deleted as new ones are written
        self.rate_horizon_s = 0.0
        self._busy_timeout_ms = max(1, int(config.lock_timeout_s * 1000))
        # The connection never waits for the write lock on the loop: an inline
        # commit finding it held raises "database is locked" at once, and goes to
        # the worker thread, which waits. Set once here rather than around each
        # inline commit (two PRAGMAs, 40-80 µs on the trigger's path). Reads do not
        # take the write lock: in WAL mode they are not kept waiting by writers
        # (SQLite's exceptions, a last connection closing or recovering the WAL,
        # cannot happen while this connection stays open).
        self._conn.execute("PRAGMA busy_timeout = 0")
        # One operation at a time, inline or in the thread: a read must never
        # run inside an open commit transaction (it would see uncommitted rows).
        self._lock = anyio.Lock(fast_acquire=True)
        self._thread = anyio.CapacityLimiter(1)

    @classmethod
    async def open(cls, config: Config) -> Database:
        """Open (creating and migrating if needed) the configured database."""
        conn = db.connect(
            config.database, config.durability, config.lock_timeout_s, config.security.group
        )
        return cls(conn, config)

    async def close(self) -> None:
        async with self._lock:
            self._conn.close()

    @asynccontextmanager
    async def _exclusive(self, what: str) -> AsyncIterator[None]:
        async with self._lock:
            with map_store_errors(what):
                yield

    async def _write(
        self, what: str, rows: int, write: Callable[[], T], lock_wait_s: float | None = None
    ) -> T:
        """Run ``write`` in one transaction: inline when small and the lock is free.
        It waits for the write lock up to the lock timeout, or ``lock_wait_s``."""
        wait_ms = self._busy_timeout_ms
        if lock_wait_s is not None:
            wait_ms = min(wait_ms, int(lock_wait_s * 1000))
        async with self._exclusive(what):
            if rows <= INLINE_ROWS or wait_ms <= 0:
                try:
                    return self._transaction(write)
                except sqlite3.OperationalError as exc:
                    if not is_busy(exc) or wait_ms <= 0:
                        raise
            return await anyio.to_thread.run_sync(
                self._waiting_transaction, write, wait_ms, limiter=self._thread
            )

    def _waiting_transaction(self, write: Callable[[], T], wait_ms: int) -> T:
        """One transaction that waits up to ``wait_ms`` for the write lock
        (in the worker thread: the loop goes on meanwhile)."""
        self._conn.execute(f"PRAGMA busy_timeout = {wait_ms}")
        try:
            return self._transaction(write)
        finally:
            self._conn.execute("PRAGMA busy_timeout = 0")

    def _transaction(self, write: Callable[[], T]) -> T:
        with db.transaction(self._conn):
            return write()

    async def load_active(self, adopt: Callable[[Iterable[RunSpec]], T]) -> tuple[Snapshot, T]:
        """Every non-final run, oldest first, streamed to ``adopt``, and where to read
        new runs and token completions from, all from one snapshot.

        The runs are read one index range per active state and merged by seq: no
        sort of the backlog, and a million queued runs are never held as rows
        and as specs at once. Returns the snapshot and what ``adopt`` returned.
        """
        conn = self._conn
        async with self._exclusive("loading runs"):
            conn.execute("BEGIN")
            try:
                (max_seq,) = conn.execute(Q["max_seq"]).fetchone()
                journaled = {r[0] for r in conn.execute(Q["select_journaled_active_runs"])}
                (token_seq,) = conn.execute(Q["max_completed_token_seq"]).fetchone()
                query = Q["select_runs_in_state"]
                ranges = [conn.execute(query, (str(state),)) for state in ACTIVE_ORDER]
                adopted = adopt(map(spec_from_row, heapq.merge(*ranges, key=itemgetter(0))))
            finally:
                conn.execute("COMMIT")
        return Snapshot(max_seq, journaled, token_seq), adopted

    async def load_new(self, after_seq: int, limit: int) -> list[RunSpec]:
        """Runs inserted after ``after_seq``, oldest first (an index range, not a scan)."""
        async with self._exclusive("reading new runs"):
            rows = self._conn.execute(Q["select_new_runs"], (after_seq, limit)).fetchall()
        return [spec_from_row(r) for r in rows]

    async def commit(
        self,
        step: Step,
        entries: Sequence[JournalWrite] = (),
        inserts: Sequence[NewRun] = (),
        *,
        lock_wait_s: float | None = None,
    ) -> dict[RunId, int]:
        """Persist a step's writes and the runs handed in (:func:`keyq.store.runs.write_step`)
        in one transaction; the seqs of the runs inserted.

        ``lock_wait_s`` caps the wait for the write lock (runs handed in must be
        stored before their client gives up on the answer). Raises StoreError, or
        UnstorableError when the values themselves were refused.
        """
        rows = rows_written(step, entries, inserts)
        what = f"recording {len(step.transitions)} transitions"
        horizon = self.rate_horizon_s

        def write() -> dict[RunId, int]:
            return write_step(self._conn, step, entries, inserts, horizon)

        return await self._write(what, rows, write, lock_wait_s)

    async def counted_starts(self, since: float) -> list[CountedStart]:
        """Starts rate limits counted at or after ``since``, oldest first."""
        async with self._exclusive("reading counted starts"):
            rows = self._conn.execute(Q["select_rate_starts"], (since,)).fetchall()
        return [CountedStart(*r) for r in rows]

    async def stored_ids(self, run_ids: Sequence[RunId]) -> set[RunId]:
        """Which of these run ids have a row."""
        async with self._exclusive("looking up run ids"):
            rows = self._conn.execute(Q["select_stored_ids"], (json.dumps(run_ids),))
            return {r[0] for r in rows}

    async def load_journal(self, run_id: RunId) -> list[Entry]:
        """The run's recorded waits and steps, by position."""
        async with self._exclusive("reading a run's journal"):
            rows = self._conn.execute(Q["select_journal"], (run_id,)).fetchall()
        return [Entry(*r) for r in rows]

    async def create_token(
        self,
        token_id: str,
        run_id: RunId,
        entry_position: int,
        idempotency_key: str,
        now: float,
        timeout_at: float | None,
    ) -> TokenHandle:
        """Create a token for a run (or find the one with this key) and record it in
        the run's journal, in one transaction."""

        def write() -> TokenRow:
            return tokens.insert(
                self._conn, token_id, run_id, idempotency_key, now, timeout_at, entry_position
            )

        return (await self._write("creating a waitpoint token", 2, write)).handle()

    async def token(self, token_id: str) -> TokenRow | None:
        async with self._exclusive("reading a waitpoint token"):
            row = self._conn.execute(Q["get_token"], (token_id,)).fetchone()
        return token_from_row(row) if row is not None else None

    async def completed_tokens(self, after_seq: int, limit: int) -> list[tuple[int, str]]:
        """Tokens completed after ``after_seq`` (seq, id), in completion order."""
        async with self._exclusive("reading completed tokens"):
            rows = self._conn.execute(Q["select_completed_tokens"], (after_seq, limit)).fetchall()
        return [(r[0], r[1]) for r in rows]

    async def outcome(self, run_id: RunId) -> ChildResult | None:
        """The run's status, result and error as stored, or None if there is no such run."""
        async with self._exclusive("reading a run's outcome"):
            row = self._conn.execute(Q["get_run_outcome"], (run_id,)).fetchone()
        if row is None:
            return None
        status, result, error = row
        return ChildResult(run_id, RunState(status), result, error_from_json(error))

    async def settings(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Runtime limit overrides: (queue rows, key rows), as dicts by column name."""
        async with self._exclusive("reading limit settings"):
            queues = self._conn.execute(Q["select_queue_settings"]).fetchall()
            keys = self._conn.execute(Q["select_key_settings"]).fetchall()
        queue_cols = (
            "queue",
            "concurrency_limit",
            "total_limit",
            "paused",
            "rate_limit",
            "rate_limit_total",
        )
        key_cols = ("queue", "concurrency_key", "concurrency_limit", "paused", "rate_limit")
        return (
            [dict(zip(queue_cols, r, strict=True)) for r in queues],
            [dict(zip(key_cols, r, strict=True)) for r in keys],
        )

    async def define_schedules(
        self, schedules: Sequence[Schedule], now: float
    ) -> list[schedule_rows.ScheduleRow]:
        """Store the schedules in force (the others are marked gone); every stored one."""

        def write() -> list[schedule_rows.ScheduleRow]:
            schedule_rows.define(self._conn, schedules, now)
            return schedule_rows.rows(self._conn)

        return await self._write("storing schedules", len(schedules) + 1, write)

    async def active_scheduled(self) -> dict[RunId, ScheduleTick]:
        async with self._exclusive("reading scheduled runs"):
            return schedule_rows.active_scheduled(self._conn)
