"""The daemon's side of SQLite, on one aiosqlite connection.

The daemon is the only writer of transitions while it runs. Every wake-up's
transitions go to :meth:`SqliteStore.commit` together: one transaction, one
``executemany``, one fsync (with ``durability = "full"``) for however many
runs changed, never one per run.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiosqlite
import anyio

from keyq import db
from keyq.config import Config
from keyq.errors import map_store_errors
from keyq.journal import Entry
from keyq.model import CancelRequest, ChildResult, RunId, RunSpec, Transition, WaitToken
from keyq.results import WaitToken as TokenHandle
from keyq.rows import error_from_json, spec_from_row, transition_params
from keyq.states import RunState
from keyq.tokens import TokenRow, token_from_row

Q = db.QUERIES


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the daemon loads at start-up."""

    runs: list[RunSpec]
    last_seq: int  # new runs are those after it
    journaled: set[RunId]  # active runs with recorded waits or steps: they start by replay
    last_token_seq: int  # token completions after it are new


class SqliteStore:
    """Reads and grouped writes of the daemon, on its own connection."""

    def __init__(self, conn: aiosqlite.Connection, config: Config) -> None:
        self._conn = conn
        self._config = config
        # One operation at a time: a read from another task must never run
        # inside the main loop's open commit transaction (it would see
        # uncommitted rows).
        self._lock = anyio.Lock()

    @classmethod
    async def open(cls, config: Config) -> SqliteStore:
        """Open (creating and migrating if needed) the configured database."""
        # Migrate on a short-lived sync connection: one code path for every process.
        db.connect(config.database, config.durability, config.lock_timeout_s).close()
        with map_store_errors(f"opening database {config.database}"):
            conn = await aiosqlite.connect(config.database, isolation_level=None)
            for statement in db.pragmas(config.durability, config.lock_timeout_s):
                await conn.execute(statement)
        return cls(conn, config)

    async def close(self) -> None:
        await self._conn.close()

    @asynccontextmanager
    async def _exclusive(self, what: str) -> AsyncIterator[None]:
        async with self._lock:
            with map_store_errors(what):
                yield

    async def load_active(self) -> Snapshot:
        """Every non-final run, oldest first, and where to read new runs and token
        completions from, all from one snapshot."""
        async with self._exclusive("loading runs"):
            await self._conn.execute("BEGIN")
            try:
                rows = await self._conn.execute_fetchall(Q["select_active_runs"])
                (max_seq,) = await self._fetchone(Q["max_seq"])
                journaled = await self._conn.execute_fetchall(Q["select_journaled_active_runs"])
                (token_seq,) = await self._fetchone(Q["max_completed_token_seq"])
            finally:
                await self._conn.execute("COMMIT")
        specs = [spec_from_row(tuple(r)) for r in rows]
        return Snapshot(specs, max_seq, {r[0] for r in journaled}, token_seq)

    async def load_new(self, after_seq: int, limit: int) -> list[RunSpec]:
        """Runs inserted after ``after_seq``, oldest first (an index range, not a scan)."""
        async with self._exclusive("reading new runs"):
            rows = await self._conn.execute_fetchall(Q["select_new_runs"], (after_seq, limit))
        return [spec_from_row(tuple(r)) for r in rows]

    async def commit(
        self,
        transitions: Sequence[Transition],
        cancel_requests: Sequence[CancelRequest] = (),
        entries: Sequence[tuple[RunId, Entry, float]] = (),
    ) -> None:
        """Persist transitions (in order), cancel requests and journal entries, in
        one transaction. A token wait ended by its timeout marks the token timed
        out in the same transaction, so the token and its waiters always agree."""
        params = [transition_params(t) for t in transitions]
        marks = [(c.at, c.seq) for c in cancel_requests]
        journal = [(run_id, e.position, e.kind, e.name, e.data, at) for run_id, e, at in entries]
        expired = [
            (t.at, t.wait.token_id)
            for t in transitions
            if t.reason == "token_timeout" and isinstance(t.wait, WaitToken)
        ]
        async with self._exclusive(f"recording {len(params)} transitions"):
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                await self._conn.executemany(Q["apply_transition"], params)
                if marks:
                    await self._conn.executemany(Q["mark_cancel_requested"], marks)
                if journal:
                    await self._conn.executemany(Q["insert_journal_entry"], journal)
                if expired:
                    await self._conn.executemany(Q["time_out_token"], expired)
                await self._conn.execute("COMMIT")
            except BaseException:
                await self._conn.execute("ROLLBACK")
                raise

    async def load_journal(self, run_id: RunId) -> list[Entry]:
        """The run's recorded waits and steps, by position."""
        async with self._exclusive("reading a run's journal"):
            rows = await self._conn.execute_fetchall(Q["select_journal"], (run_id,))
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
        params = (token_id, run_id, idempotency_key, now, timeout_at)
        async with self._exclusive("creating a waitpoint token"):
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                await self._conn.execute(Q["insert_token"], params)
                found = await self._fetchone(Q["get_token_by_key"], (idempotency_key,))
                row = token_from_row(found)
                data = json.dumps({"token": row.id, "timeout_at": row.timeout_at})
                entry = (run_id, entry_position, "token", "", data, now)
                await self._conn.execute(Q["insert_journal_entry"], entry)
                await self._conn.execute("COMMIT")
            except BaseException:
                await self._conn.execute("ROLLBACK")
                raise
        return row.handle()

    async def token(self, token_id: str) -> TokenRow | None:
        async with self._exclusive("reading a waitpoint token"):
            row = await self._fetchone(Q["get_token"], (token_id,))
        return token_from_row(row) if row is not None else None

    async def completed_tokens(self, after_seq: int, limit: int) -> list[tuple[int, str]]:
        """Tokens completed after ``after_seq`` (seq, id), in completion order."""
        async with self._exclusive("reading completed tokens"):
            query = Q["select_completed_tokens"]
            rows = await self._conn.execute_fetchall(query, (after_seq, limit))
        return [(r[0], r[1]) for r in rows]

    async def outcome(self, run_id: RunId) -> ChildResult | None:
        """The run's status, result and error as stored, or None if there is no such run."""
        async with self._exclusive("reading a run's outcome"):
            row = await self._fetchone(Q["get_run_outcome"], (run_id,))
        if row is None:
            return None
        status, result, error = row
        return ChildResult(run_id, RunState(status), result, error_from_json(error))

    async def settings(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Runtime limit overrides: (queue rows, key rows), as dicts by column name."""
        async with self._exclusive("reading limit settings"):
            queues = await self._conn.execute_fetchall(Q["select_queue_settings"])
            keys = await self._conn.execute_fetchall(Q["select_key_settings"])
        queue_cols = ("queue", "concurrency_limit", "total_limit", "paused")
        key_cols = ("queue", "concurrency_key", "concurrency_limit", "paused")
        return (
            [dict(zip(queue_cols, r, strict=True)) for r in queues],
            [dict(zip(key_cols, r, strict=True)) for r in keys],
        )

    async def _fetchone(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        async with self._conn.execute(sql, params) as cursor:
            return await cursor.fetchone()
