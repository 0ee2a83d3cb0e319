"""SQLite connections: pragmas, owner-only files, and schema migrations."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from keyq.errors import StoreError
from keyq.store import db


@pytest.fixture
def open_umask() -> Iterator[None]:
    """Run with umask 000, so only keyq's own care keeps the files private."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- pragmas --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("durability", "synchronous"), [("full", 2), ("normal", 1)])
def test_connect__pragmas_follow_the_config(
    database: Path, durability: str, synchronous: int
) -> None:
    """Connections use WAL, synchronous from `durability`, and busy_timeout from lock_timeout."""
    conn = db.connect(database, durability, lock_timeout_s=2.5)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == synchronous
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 2500
    finally:
        conn.close()


def test_connect__wal_mode_is_persistent(database: Path) -> None:
    """The database file itself is in WAL mode, so any other reader also sees WAL."""
    db.connect(database).close()
    other = sqlite3.connect(database)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        other.close()


def test_connect__tiny_lock_timeout_still_waits_a_little(database: Path) -> None:
    """A lock timeout that rounds to 0 ms still sets a busy timeout (0 would mean fail at once)."""
    conn = db.connect(database, lock_timeout_s=0.0001)
    try:
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 1
    finally:
        conn.close()


def test_connect__autocommit_mode(database: Path) -> None:
    """Connections are in autocommit mode: a write outside transaction() is visible at once."""
    conn = db.connect(database)
    try:
        assert conn.in_transaction is False
        conn.execute(
            "INSERT INTO queue_settings (queue, concurrency_limit, updated_at) VALUES ('q', 1, 0)"
        )
        assert conn.in_transaction is False
    finally:
        conn.close()


def test_connect__creates_missing_parent_directories(tmp_path: Path) -> None:
    """A database path in a directory that does not exist yet is created."""
    path = tmp_path / "var" / "lib" / "keyq" / "keyq.db"
    db.connect(path).close()
    assert path.is_file()


# --- file modes -----------------------------------------------------------------------------------


@pytest.mark.usefixtures("open_umask")
def test_connect__database_wal_and_shm_are_owner_only(database: Path) -> None:
    """The database, its -wal and its -shm are created 0600 even under umask 000."""
    conn = db.connect(database)
    try:
        with db.transaction(conn):
            conn.execute(
                "INSERT INTO queue_settings (queue, concurrency_limit, updated_at) "
                "VALUES ('q', 1, 0)"
            )
        wal = database.with_name(database.name + "-wal")
        shm = database.with_name(database.name + "-shm")
        assert wal.exists()
        assert shm.exists()
        assert {p.name: _mode(p) for p in (database, wal, shm)} == {
            database.name: 0o600,
            wal.name: 0o600,
            shm.name: 0o600,
        }
    finally:
        conn.close()


@pytest.mark.usefixtures("open_umask")
def test_connect__existing_database_mode_is_left_alone(database: Path) -> None:
    """An operator's chmod (say 0640 for a service group) is not undone by reconnecting."""
    db.connect(database).close()
    database.chmod(0o640)
    db.connect(database).close()
    assert _mode(database) == 0o640


# --- migrations -----------------------------------------------------------------------------------


def _user_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def _tables(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        found = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        return {name for (name,) in found}
    finally:
        conn.close()


def test_migrate__fresh_file_gets_the_current_schema(database: Path) -> None:
    """A new database is created at SCHEMA_VERSION with the runs and settings tables."""
    db.connect(database).close()
    assert _user_version(database) == db.SCHEMA_VERSION == len(db.MIGRATIONS)
    assert {"runs", "queue_settings", "key_settings"} <= _tables(database)


def test_migrate__second_connect_changes_nothing(
    database: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reconnecting to an up-to-date database runs no migration and keeps the data."""
    conn = db.connect(database)
    conn.execute(
        "INSERT INTO queue_settings (queue, concurrency_limit, updated_at) VALUES ('q', 3, 0)"
    )
    conn.close()

    def refuse(conn: sqlite3.Connection, name: str) -> None:
        raise AssertionError(f"migration {name} applied twice")

    monkeypatch.setattr(db, "_apply", refuse)
    again = db.connect(database)
    try:
        assert again.execute("SELECT queue, concurrency_limit FROM queue_settings").fetchall() == [
            ("q", 3)
        ]
    finally:
        again.close()
    assert _user_version(database) == db.SCHEMA_VERSION


def test_migrate__newer_database_is_refused(database: Path) -> None:
    """A database written by a newer keyq is refused with a message saying to upgrade."""
    db.connect(database).close()
    raw = sqlite3.connect(database)
    raw.execute(f"PRAGMA user_version = {db.SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(StoreError) as info:
        db.connect(database)
    message = str(info.value)
    assert "upgrade keyq" in message
    assert str(db.SCHEMA_VERSION + 1) in message
    assert _user_version(database) == db.SCHEMA_VERSION + 1


def test_migrate__failed_migration_leaves_nothing_behind(
    database: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A migration that fails halfway is rolled back: version 0, no half-made tables."""
    real = db._apply

    def half(conn: sqlite3.Connection, name: str) -> None:
        conn.execute("CREATE TABLE half_made (x)")
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(db, "_apply", half)
    with pytest.raises(StoreError, match="disk I/O error"):
        db.connect(database)
    assert _user_version(database) == 0
    assert "half_made" not in _tables(database)
    monkeypatch.setattr(db, "_apply", real)
    db.connect(database).close()
    assert _user_version(database) == db.SCHEMA_VERSION


def test_connect__not_a_database_is_a_store_error(database: Path) -> None:
    """A file that is not SQLite is reported as a StoreError naming the file."""
    database.write_bytes(b"this is not a database, just some text that is long enough" * 20)
    with pytest.raises(StoreError) as info:
        db.connect(database)
    assert str(database) in str(info.value)


def test_queries__every_named_query_compiles(database: Path) -> None:
    """Each query in queries.sql is valid against the migrated schema."""
    conn = db.connect(database)
    try:
        assert db.QUERIES
        for name, sql in db.QUERIES.items():
            try:
                conn.execute(f"EXPLAIN {sql}", [None] * sql.count("?"))
            except sqlite3.ProgrammingError:
                pass  # numbered parameters (?1) bind fewer values: compiling succeeded
            except sqlite3.Error as exc:  # pragma: no cover - the failure message
                raise AssertionError(f"query {name} does not compile: {exc}") from exc
    finally:
        conn.close()
