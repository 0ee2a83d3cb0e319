"""One daemon per database: the instance lock, its pid file, and daemon_running()."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from keyq.errors import DaemonAlreadyRunningError
from keyq.instance import InstanceLock, daemon_running, lock_path, read_pid, socket_path


def test_instance_lock__second_daemon_is_refused_naming_the_pid(database: Path) -> None:
    """A second daemon on the same database fails with a message naming the running one."""
    first = InstanceLock(database)
    first.acquire_for_daemon()
    try:
        with pytest.raises(DaemonAlreadyRunningError) as info:
            InstanceLock(database).acquire_for_daemon()
        message = str(info.value)
        assert f"pid {os.getpid()}" in message
        assert "already runs on this database" in message
        assert str(lock_path(database)) in message
    finally:
        first.release()


def test_instance_lock__daemon_running_while_held_only(database: Path) -> None:
    """daemon_running() is true exactly while a daemon holds the lock."""
    assert daemon_running(database) is False
    lock = InstanceLock(database)
    lock.acquire_for_daemon()
    try:
        assert daemon_running(database) is True
        assert read_pid(lock_path(database)) == os.getpid()
    finally:
        lock.release()
    assert daemon_running(database) is False
    assert read_pid(lock_path(database)) is None  # no stale pid left behind


def test_instance_lock__can_be_taken_again_after_release(database: Path) -> None:
    """After a daemon stops, the next one starts on the same database."""
    with InstanceLock(database) as first:
        first.acquire_for_daemon()
    second = InstanceLock(database)
    second.acquire_for_daemon()
    second.release()
    second.release()  # releasing twice is harmless


def test_instance_lock__cli_holder_blocks_a_daemon(database: Path) -> None:
    """While the CLI holds the lock for an offline change, a daemon cannot start."""
    with InstanceLock(database) as cli:
        assert cli.try_acquire() is True
        assert InstanceLock(database).try_acquire() is False
        with pytest.raises(DaemonAlreadyRunningError, match="another process"):
            InstanceLock(database).acquire_for_daemon()
    with InstanceLock(database) as after:
        assert after.try_acquire() is True


def test_instance_lock__stale_pid_without_lock_does_not_count(database: Path) -> None:
    """A lock file left by a killed daemon (pid inside, no flock) does not block a new daemon."""
    path = lock_path(database)
    path.write_text("999999\n")
    assert daemon_running(database) is False
    lock = InstanceLock(database)
    lock.acquire_for_daemon()
    try:
        assert read_pid(path) == os.getpid()
    finally:
        lock.release()


def test_instance_lock__lock_file_is_owner_only(database: Path) -> None:
    """The lock file is created 0600 even under umask 000."""
    previous = os.umask(0)
    try:
        lock = InstanceLock(database)
        lock.acquire_for_daemon()
        lock.release()
    finally:
        os.umask(previous)
    assert stat.S_IMODE(lock_path(database).stat().st_mode) == 0o600


def test_instance__paths_sit_next_to_the_database(tmp_path: Path) -> None:
    """The lock file and control socket live beside the database."""
    database = tmp_path / "keyq.db"
    assert lock_path(database) == tmp_path / "keyq.db.lock"
    assert socket_path(database) == tmp_path / "keyq.db.sock"


def test_instance__long_database_path_gets_a_short_socket_path(tmp_path: Path) -> None:
    """A database path too long for a Unix socket gets a stable socket in the runtime dir."""
    database = tmp_path / ("d" * 120) / "keyq.db"
    path = socket_path(database)
    assert len(os.fsencode(path)) <= 100
    assert path == socket_path(database)
    assert path != socket_path(tmp_path / ("e" * 120) / "keyq.db")
