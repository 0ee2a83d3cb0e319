"""Waitpoint tokens as rows: create, complete, read and list them on any connection.

A token is created by a task (``ctx.wait.create_token``) or a client, waited
for by runs (``ctx.wait.for_token``), and completed once from outside, by the
CLI or a client, while the daemon runs or not. The row is the truth: a token
is completed only if it is still waiting and its timeout has not passed, and
the daemon marks it timed out in the same transaction that resumes its
waiters, so a run always sees the token's one final state.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from keyq.core.model import ErrorInfo
from keyq.errors import TokenNotFoundError, TokenStateError
from keyq.results import TokenResult, WaitToken
from keyq.store import db
from keyq.store.codec import iso

Q = db.QUERIES


@dataclass(frozen=True, slots=True)
class TokenRow:
    """A token as stored; ``output`` is JSON text."""

    id: str
    run_id: str | None
    idempotency_key: str | None
    status: str  # waiting | completed | timed_out
    created_at: float
    timeout_at: float | None
    completed_at: float | None
    output: str | None

    def handle(self) -> WaitToken:
        return WaitToken(self.id, self.timeout_at)

    def result(self) -> TokenResult:
        """What a run waiting on this token sees once it is no longer waiting."""
        if self.status == "completed":
            output = json.loads(self.output) if self.output is not None else None
            return TokenResult(self.id, True, output)
        error = ErrorInfo("TokenTimeout", f"waitpoint token {self.id} timed out")
        return TokenResult(self.id, False, None, error)

    def as_json(self) -> dict[str, Any]:
        """The public JSON of a token (``keyq tokens list --json``)."""
        return {
            "id": self.id,
            "status": self.status,
            "run_id": self.run_id,
            "idempotency_key": self.idempotency_key,
            "created_at": iso(self.created_at),
            "timeout_at": iso(self.timeout_at),
            "completed_at": iso(self.completed_at),
            "output": json.loads(self.output) if self.output is not None else None,
        }


def token_from_row(row: Any) -> TokenRow:
    return TokenRow(*row)


def create(
    conn: sqlite3.Connection,
    token_id: str,
    *,
    run_id: str | None,
    idempotency_key: str | None,
    now: float,
    timeout_at: float | None,
) -> TokenRow:
    """Insert a waiting token, or return the one that already has this idempotency key
    (a client's token: one transaction of its own)."""
    with db.transaction(conn):
        return insert(conn, token_id, run_id, idempotency_key, now, timeout_at)


def insert(
    conn: sqlite3.Connection,
    token_id: str,
    run_id: str | None,
    idempotency_key: str | None,
    now: float,
    timeout_at: float | None,
    journal_position: int | None = None,
) -> TokenRow:
    """The one way a token is made, inside the caller's transaction: insert it (or find
    the one with this idempotency key) and, for a run's token, record it in the run's
    journal at ``journal_position``, so that a replay finds the same token."""
    conn.execute(Q["insert_token"], (token_id, run_id, idempotency_key, now, timeout_at))
    if idempotency_key is not None:
        row = token_from_row(conn.execute(Q["get_token_by_key"], (idempotency_key,)).fetchone())
    else:
        row = token_from_row(conn.execute(Q["get_token"], (token_id,)).fetchone())
    if run_id is not None and journal_position is not None:
        data = json.dumps({"token": row.id, "timeout_at": row.timeout_at})
        entry = (run_id, journal_position, "token", "", data, now)
        conn.execute(Q["insert_journal_entry"], entry)
    return row


def get(conn: sqlite3.Connection, token_id: str) -> TokenRow:
    row = conn.execute(Q["get_token"], (token_id,)).fetchone()
    if row is None:
        raise TokenNotFoundError(token_id)
    return token_from_row(row)


def complete(conn: sqlite3.Connection, token_id: str, output: str, now: float) -> None:
    """Complete a waiting token with ``output`` (JSON text); refuses a final or expired one."""
    with db.transaction(conn):
        done = conn.execute(Q["complete_token"], (output, now, token_id)).rowcount
        if not done:
            token = get(conn, token_id)
            why = "it was already completed" if token.status == "completed" else "it timed out"
            raise TokenStateError(f"waitpoint token {token_id} cannot be completed: {why}")


def list_tokens(conn: sqlite3.Connection, status: str | None, limit: int) -> list[TokenRow]:
    rows = conn.execute(Q["list_tokens"], (status, limit)).fetchall()
    return [token_from_row(r) for r in rows]
