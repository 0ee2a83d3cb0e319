"""Opening keyq's database twice in one process must not drop SQLite's locks."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from keyq.store import db

OPEN_AND_CLOSE = "from keyq.store import db; from pathlib import Path; import sys; " \
    "db.connect(Path(sys.argv[1])).close()"  # fmt: skip


def test_db__second_connection_keeps_the_first_ones_writes(tmp_path: Path) -> None:
    """Another process sees every acknowledged write, even after one of its connections closed."""
    path = tmp_path / "keyq.db"
    first = db.connect(path)
    with db.transaction(first):
        first.execute("CREATE TABLE t (x)")
        first.execute("INSERT INTO t VALUES (1)")
    second = db.connect(path)  # a client that triggers, then reads, opens two connections
    # Another process opens and closes the database: as the last connection it would
    # checkpoint and delete the WAL if our locks had been dropped.
    subprocess.run([sys.executable, "-c", OPEN_AND_CLOSE, str(path)], check=True)
    with db.transaction(first):
        first.execute("INSERT INTO t VALUES (2)")  # acknowledged

    # Another process (the daemon, say) must see it while we are still running: a
    # write into a deleted WAL would only come back, if ever, when we close.
    fresh = sqlite3.connect(path)
    try:
        assert fresh.execute("SELECT x FROM t ORDER BY x").fetchall() == [(1,), (2,)]
    finally:
        fresh.close()
        first.close()
        second.close()
