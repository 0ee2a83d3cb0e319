"""How runs enter keyq: validated, then stored durably, then acknowledged.

Clients, the CLI, the in-process daemon and tasks triggering children all go
through :class:`Producer`: every trigger is validated first (nothing is stored
if one item is bad) and acknowledged only once it is on disk. Two ways there:

* handed to the running daemon (:mod:`keyq.handoff`), which stores each run
  together with its start: the fast path, taken whenever the daemon is up;
* the direct path: inserted in a single transaction here, then a poke to the
  daemon. The poke only shortens the daemon's latency; if it is lost, the
  daemon still finds the row.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from keyq.core.model import NewRun
from keyq.errors import DatabaseBusyError, map_store_errors
from keyq.ids import new_run_id
from keyq.registry import TriggerRequest
from keyq.results import RunHandle
from keyq.store import db
from keyq.store.codec import new_run_params
from keyq.store.instance import lock_path, read_pid
from keyq.triggers import build_run

if TYPE_CHECKING:
    from keyq.config import Config


class Producer:
    """Inserts runs into one database and pokes its daemon."""

    def __init__(
        self,
        config: Config,
        *,
        now: Callable[[], float],
        poke: Callable[[], None],
        hand_off: Callable[[list[NewRun]], bool] | None = None,
    ) -> None:
        self._config = config
        self._now = now
        self._poke = poke
        self._hand_off = hand_off  # True if the daemon took the runs (keyq.handoff)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # one transaction at a time on our connection

    @property
    def database(self) -> Path:
        return self._config.database

    def trigger_sync(
        self, requests: Sequence[TriggerRequest], parent_id: str | None = None
    ) -> list[RunHandle]:
        """Store runs durably, through the daemon if it takes them, else directly; blocking."""
        runs = self.build(requests, parent_id)
        if self._hand_off is not None and self._hand_off(runs):
            return [RunHandle(r.id, r.task) for r in runs]
        return self.store_and_poke(runs)

    def store_and_poke(self, runs: list[NewRun]) -> list[RunHandle]:
        """The direct path: insert durably, then poke the daemon; blocking."""
        handles = self.store(runs)
        if any(h.is_new for h in handles):
            self._poke()
        return handles

    async def submit_runs(self, runs: list[NewRun]) -> list[RunHandle]:
        """The direct path from async code: insert in a worker thread, then poke."""
        handles = await anyio.to_thread.run_sync(self.store, runs)
        if any(h.is_new for h in handles):
            self._poke()
        return handles

    def build(
        self, requests: Sequence[TriggerRequest], parent_id: str | None = None
    ) -> list[NewRun]:
        """Validate triggers into the runs to store (TriggerError names the bad field)."""
        now = self._now()
        return [
            build_run(
                task,
                payload,
                options,
                run_id=new_run_id(now),
                now=now,
                max_payload_bytes=self._config.max_payload_bytes,
                parent_id=parent_id,
            )
            for task, payload, options in requests
        ]

    def store(self, runs: list[NewRun]) -> list[RunHandle]:
        """Insert validated runs in one transaction; blocking. A run whose id is
        already stored (the daemon took it after all) is not stored twice."""
        with self._lock:
            return self._commit(runs)

    def connection(self) -> sqlite3.Connection:
        if self._conn is None:
            cfg = self._config
            group = cfg.security.group
            self._conn = db.connect(cfg.database, cfg.durability, cfg.lock_timeout_s, group)
        return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _commit(self, runs: list[NewRun]) -> list[RunHandle]:
        conn = self.connection()
        try:
            with map_store_errors(f"storing runs in {self.database}"), db.transaction(conn):
                handles = _insert_runs(conn, runs)
        except DatabaseBusyError as exc:
            raise DatabaseBusyError(
                busy_message(self.database, self._config.lock_timeout_s)
            ) from exc
        return handles


def _insert_runs(conn: sqlite3.Connection, runs: list[NewRun]) -> list[RunHandle]:
    handles: list[RunHandle] = []
    plain: list[NewRun] = []
    seen: dict[tuple[str, str], str] = {}
    for run in runs:
        if run.idempotency_key is None:
            plain.append(run)
            handles.append(RunHandle(run.id, run.task))
            continue
        scope = (run.task, run.idempotency_key)
        existing = seen.get(scope) or _find_idempotent(conn, scope)
        if existing is not None:
            handles.append(RunHandle(existing, run.task, is_new=False))
            continue
        seen[scope] = run.id
        plain.append(run)
        handles.append(RunHandle(run.id, run.task))
    conn.executemany(db.QUERIES["insert_run"], [new_run_params(r) for r in plain])
    overrides = {
        r.queue: (r.queue, r.queue_limit, r.created_at) for r in plain if r.queue_limit is not None
    }
    conn.executemany(db.QUERIES["set_queue_limit_from_trigger"], overrides.values())
    return handles


def _find_idempotent(conn: sqlite3.Connection, scope: tuple[str, str]) -> str | None:
    row = conn.execute(db.QUERIES["find_idempotent"], scope).fetchone()
    return row[0] if row else None


def busy_message(database: Path, timeout_s: float) -> str:
    pid = read_pid(lock_path(database))
    holder = (
        f"the keyq daemon (pid {pid}) or another writer held it"
        if pid
        else "another process held a write transaction (no keyq daemon is running)"
    )
    return (
        f"database {database} stayed locked for {timeout_s:g}s: {holder}; "
        "raise lock_timeout in the config if this is expected"
    )
