"""A trigger is acknowledged only once durable: a producer killed right after loses nothing."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from keyq.config import Config
    from keyq.producer import Producer
    from keyq.registry import Registry

    registry = Registry()

    @registry.task(id="durable")
    async def durable(payload, ctx):
        return None

    producer = Producer(Config(database=Path(sys.argv[1])), now=lambda: 1.0, poke=lambda: None)
    for n in range(int(sys.argv[2])):
        (handle,) = producer.trigger_sync([(durable, {"n": n}, {})])
        sys.stdout.write(handle.id + "\\n")
        sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_producer__killed_after_ack_loses_no_acknowledged_run(tmp_path: Path) -> None:
    """Every run id a producer printed before SIGKILL is in the database afterwards."""
    database = tmp_path / "keyq.db"
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(database), "20"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    acknowledged = child.stdout.split()
    assert len(acknowledged) == 20

    conn = sqlite3.connect(database)
    try:
        stored = [row[0] for row in conn.execute("SELECT id FROM runs ORDER BY seq")]
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    assert stored == acknowledged
