"""SQLite's exceptions as keyq's: :func:`map_store_errors` at the storage boundary."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from keyq.errors import DatabaseBusyError, StoreError, UnstorableError


def is_busy(exc: sqlite3.OperationalError) -> bool:
    """True when SQLite gave up waiting for another connection's lock."""
    return "locked" in str(exc) or "busy" in str(exc)


@contextmanager
def map_store_errors(what: str) -> Iterator[None]:
    """Translate sqlite3 errors raised by ``what`` into :class:`StoreError`.

    "database is locked" becomes :class:`DatabaseBusyError`; a full disk keeps
    SQLite's own wording ("database or disk is full") so the cause is visible;
    a value the database cannot take becomes :class:`UnstorableError`.
    """
    try:
        yield
    except sqlite3.OperationalError as exc:
        if is_busy(exc):
            raise DatabaseBusyError(f"{what}: {exc}") from exc
        raise StoreError(f"{what}: {exc}") from exc
    except sqlite3.ProgrammingError as exc:
        if "closed" in str(exc):  # the connection, not the values
            raise StoreError(f"{what}: {exc}") from exc
        raise UnstorableError(f"{what}: {type(exc).__name__}: {exc}") from exc
    except _UNSTORABLE as exc:
        raise UnstorableError(f"{what}: {type(exc).__name__}: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{what}: {exc}") from exc


# What a write's own values cause (and so only that write): a constraint, a value
# SQLite cannot bind (a lone surrogate, an integer over 64 bits), a malformed
# statement. The rest (I/O, a full disk, a corrupt file, the lock) is the database's.
_UNSTORABLE = (
    sqlite3.IntegrityError,
    sqlite3.DataError,
    sqlite3.ProgrammingError,
    sqlite3.InterfaceError,
    OverflowError,
    UnicodeError,
    ValueError,
    TypeError,
)
