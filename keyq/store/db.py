"""SQLite connections: pragmas, schema migrations and the named queries.

Every connection keyq opens, sync (producers, CLI) or async (the daemon), gets
its pragmas from :func:`configure`: WAL, ``synchronous`` from the durability
setting, and a busy timeout, so writers from several processes wait their
turn instead of failing with "database is locked".
"""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import LiteralString, cast

from keyq.errors import StoreError
from keyq.store.errors import map_store_errors
from keyq.store.filesystems import check_database
from keyq.store.permissions import FileAccess

MIGRATIONS: tuple[str, ...] = (
    "001_initial.sql",
    "002_journal_tokens.sql",
    "003_rate_limits.sql",
    "004_schedules.sql",
    "005_ttl_debounce.sql",
)
SCHEMA_VERSION = len(MIGRATIONS)


def _load_queries() -> dict[str, LiteralString]:
    text = resources.files("keyq.store.sql").joinpath("queries.sql").read_text(encoding="utf-8")
    queries: dict[str, LiteralString] = {}
    for block in re.split(r"^-- name: ", text, flags=re.MULTILINE)[1:]:
        name, _, body = block.partition("\n")
        queries[name.strip()] = cast(LiteralString, body.strip().rstrip(";"))
    return queries


QUERIES = _load_queries()


def pragmas(durability: str, lock_timeout_s: float) -> list[str]:
    """The statements that set up a connection; one place, asserted by a test."""
    synchronous = "FULL" if durability == "full" else "NORMAL"
    timeout_ms = max(1, int(lock_timeout_s * 1000))
    return [
        "PRAGMA journal_mode = WAL",
        "PRAGMA synchronous = " + synchronous,
        f"PRAGMA busy_timeout = {timeout_ms}",
        "PRAGMA foreign_keys = OFF",
    ]


def configure(conn: sqlite3.Connection, durability: str, lock_timeout_s: float) -> None:
    for statement in pragmas(durability, lock_timeout_s):
        conn.execute(statement)


def ensure_file(path: Path, group: str | None = None) -> None:
    """Create the database file owner-only (or 0660 for ``group``) before SQLite does:
    SQLite gives its WAL files the same mode.

    Never opens a file that already exists: on POSIX, closing *any* descriptor
    of a file drops every lock this process holds on it, including SQLite's
    locks of connections already open here. Another process could then
    checkpoint and delete the WAL under them, losing acknowledged writes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    access = FileAccess.for_group(group) if group is not None else FileAccess()
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, access.mode)
    except FileExistsError:
        return
    try:
        access.apply_fd(fd)
    finally:
        os.close(fd)


def connect(
    path: Path, durability: str = "full", lock_timeout_s: float = 5.0, group: str | None = None
) -> sqlite3.Connection:
    """A configured, migrated sync connection in autocommit mode (transactions are explicit)."""
    check_database(path)
    with map_store_errors(f"opening database {path}"):
        ensure_file(path, group)
        conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=lock_timeout_s
        )
        try:
            configure(conn, durability, lock_timeout_s)
            migrate(conn, path)
        except BaseException:
            conn.close()
            raise
    return conn


def connect_for_reading(path: Path, lock_timeout_s: float = 5.0) -> sqlite3.Connection:
    """A connection for the inspecting commands: as :func:`connect` when this process
    may write the database and its directory, else read-only (an operator's account).

    Read-only, the daemon's WAL is read through its shared memory while the WAL
    exists; once the last writer closed and SQLite folded the WAL into the file,
    there is nothing else to read, and the file is opened as it is.
    """
    if os.access(path, os.W_OK) and os.access(path.parent, os.W_OK | os.X_OK):
        return connect(path, lock_timeout_s=lock_timeout_s)
    check_database(path)
    uri = path.absolute().as_uri() + "?mode=ro"
    with map_store_errors(f"opening database {path} read-only"):
        try:
            conn = _open_read_only(uri, lock_timeout_s)
        except sqlite3.OperationalError:
            if Path(f"{path}-wal").exists():
                raise
            conn = _open_read_only(uri + "&immutable=1", lock_timeout_s)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version != SCHEMA_VERSION:
        conn.close()
        raise StoreError(
            f"database {path} has schema version {version} and this keyq reads "
            f"{SCHEMA_VERSION}; it cannot migrate it read-only (start the daemon once)"
        )
    return conn


def _open_read_only(uri: str, lock_timeout_s: float) -> sqlite3.Connection:
    conn = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=lock_timeout_s)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # opens it for real
    except BaseException:
        conn.close()
        raise
    return conn


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the schema up to :data:`SCHEMA_VERSION`, one transaction per migration."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"database {path} has schema version {version}, newer than this keyq "
            f"understands ({SCHEMA_VERSION}); upgrade keyq"
        )
    while version < SCHEMA_VERSION:
        with transaction(conn):
            # Another process may have migrated while we waited for the lock.
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version < SCHEMA_VERSION:
                _apply(conn, MIGRATIONS[version])
                version += 1
                conn.execute(f"PRAGMA user_version = {version}")


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE (take the write lock now, waiting up to busy_timeout) ... COMMIT."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        # A failed COMMIT (a full disk, an I/O error) may leave the transaction open:
        # end it, or every later BEGIN fails with "within a transaction".
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _apply(conn: sqlite3.Connection, name: str) -> None:
    script = resources.files("keyq.store.sql").joinpath(name).read_text(encoding="utf-8")
    # executescript would COMMIT our transaction; run the statements one by one.
    statement = ""
    for line in script.splitlines():
        if line.strip().startswith("--"):
            continue
        statement += line + "\n"
        if sqlite3.complete_statement(statement):
            conn.execute(statement)
            statement = ""
