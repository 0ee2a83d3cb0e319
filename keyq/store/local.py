"""The store's blocking twin, for clients and the CLI: what they write, on one connection.

The daemon has its own store (:mod:`keyq.store.sqlite`). A client writes only
what it owns: runs triggered while the daemon is down or will not take them,
operator settings, waitpoint tokens, and a cancel while no daemon runs. Each
call is one transaction; one at a time on the connection, from any thread.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from keyq.config import Config
from keyq.core.model import NewRun, RunId
from keyq.errors import DatabaseBusyError
from keyq.store import admin, db, schedule_rows, tokens
from keyq.store.debounce import store_debounced
from keyq.store.errors import map_store_errors
from keyq.store.instance import InstanceLock, lock_path, read_pid
from keyq.store.runs import insert_runs
from keyq.store.tokens import TokenRow


class LocalStore:
    """Writes of one process to one database; the connection opens on first use."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # one transaction at a time on our connection

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def insert_runs(self, runs: Sequence[NewRun]) -> list[RunId]:
        """Store validated runs in one transaction; for each, the id of the run standing
        for it (:func:`keyq.store.runs.insert_runs`). If the lock stays held past
        lock_timeout, the error says who held it."""
        what = f"storing runs in {self._config.database}"
        try:
            with self._locked() as conn, map_store_errors(what), db.transaction(conn):
                return insert_runs(conn, runs)
        except DatabaseBusyError as exc:
            raise DatabaseBusyError(self.busy_message()) from exc

    def debounce_offline(self, runs: Sequence[NewRun]) -> list[RunId] | None:
        """Store runs of which some are debounced, holding the daemon's lock (each folds
        into its key's DELAYED run or is new: :mod:`keyq.store.debounce`); the run
        standing for each, or None, changing nothing, if a daemon owns the database."""
        lock = InstanceLock(self._config.database)
        if not lock.try_acquire():
            return None
        what = f"storing debounced runs in {self._config.database}"
        try:
            with lock, self._locked() as conn, map_store_errors(what), db.transaction(conn):
                return store_debounced(conn, runs)
        except DatabaseBusyError as exc:
            raise DatabaseBusyError(self.busy_message()) from exc

    def cancel_offline(self, run_id: str, now: float) -> bool:
        """Cancel a run (and its active descendants) in the database, holding the
        daemon's lock; False, changing nothing, if a daemon owns the database."""
        lock = InstanceLock(self._config.database)
        if not lock.try_acquire():
            return False
        with lock, self._locked() as conn:
            admin.cancel_stored(conn, run_id, now)
        return True

    def update_queue_settings(self, queue: str, now: float, **fields: Any) -> None:
        with self._locked() as conn:
            admin.update_queue_settings(conn, queue, now, **fields)

    def update_key_settings(self, queue: str, key: str, now: float, **fields: Any) -> None:
        with self._locked() as conn:
            admin.update_key_settings(conn, queue, key, now, **fields)

    def set_schedule_paused(self, schedule_id: str, paused: bool, now: float) -> bool:
        """Pause or resume a stored schedule; False if none has that id."""
        with self._locked() as conn, db.transaction(conn):
            return schedule_rows.set_paused(conn, schedule_id, paused, now)

    def create_token(
        self, token_id: str, idempotency_key: str | None, now: float, timeout_at: float | None
    ) -> TokenRow:
        """A client's token, not a run's (keyq.store.tokens.insert)."""
        with self._locked() as conn:
            return tokens.create(
                conn,
                token_id,
                run_id=None,
                idempotency_key=idempotency_key,
                now=now,
                timeout_at=timeout_at,
            )

    def complete_token(self, token_id: str, output: str, now: float) -> None:
        with self._locked() as conn:
            tokens.complete(conn, token_id, output, now)

    def token(self, token_id: str) -> TokenRow:
        with self._locked() as conn:
            return tokens.get(conn, token_id)

    def tokens(self, status: str | None, limit: int) -> list[TokenRow]:
        with self._locked() as conn:
            return tokens.list_tokens(conn, status, limit)

    def busy_message(self) -> str:
        database, timeout_s = self._config.database, self._config.lock_timeout_s
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

    @contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                cfg = self._config
                group = cfg.security.group
                self._conn = db.connect(cfg.database, cfg.durability, cfg.lock_timeout_s, group)
            yield self._conn
