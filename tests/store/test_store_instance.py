"""One daemon per database: the instance lock, its pid file, and daemon_running()."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from support import acquire

from keyq.errors import DaemonAlreadyRunningError, UnsafeDatabaseError
from keyq.store import db
from keyq.store.filesystems import NETWORK, check_database, mount_of
from keyq.store.instance import InstanceLock, daemon_running, lock_path, read_pid, socket_path


def test_instance_lock__second_daemon_is_refused_naming_the_pid(database: Path) -> None:
    """A second daemon on the same database fails with a message naming the running one."""
    first = InstanceLock(database)
    acquire(first)
    try:
        with pytest.raises(DaemonAlreadyRunningError) as info:
            acquire(InstanceLock(database))
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
    acquire(lock)
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
        acquire(first)
    assert read_pid(lock_path(database)) is None
    second = InstanceLock(database)
    acquire(second)
    assert daemon_running(database) is True
    assert read_pid(lock_path(database)) == os.getpid()
    second.release()
    second.release()  # releasing twice is harmless
    assert daemon_running(database) is False


def test_instance_lock__cli_holder_blocks_a_daemon(database: Path) -> None:
    """While the CLI holds the lock for an offline change, a daemon cannot start."""
    with InstanceLock(database) as cli:
        assert cli.try_acquire() is True
        assert InstanceLock(database).try_acquire() is False
        with pytest.raises(DaemonAlreadyRunningError, match="another process"):
            acquire(InstanceLock(database))
    with InstanceLock(database) as after:
        assert after.try_acquire() is True


def test_instance_lock__stale_pid_without_lock_does_not_count(database: Path) -> None:
    """A lock file left by a killed daemon (pid inside, no flock) does not block a new daemon."""
    path = lock_path(database)
    path.write_text("999999\n")
    assert daemon_running(database) is False
    lock = InstanceLock(database)
    acquire(lock)
    try:
        assert read_pid(path) == os.getpid()
    finally:
        lock.release()


def test_instance_lock__lock_file_is_owner_only(database: Path) -> None:
    """The lock file is created 0600 even under umask 000."""
    previous = os.umask(0)
    try:
        lock = InstanceLock(database)
        acquire(lock)
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


# --- one file, whatever path names it ------------------------------------------------------------


def test_instance_lock__a_symlink_to_the_database_finds_the_same_lock(
    database: Path, tmp_path: Path
) -> None:
    """Failure 5: a second daemon through a symlink to the live database is refused: the lock
    (and the socket) sit beside the real file, not beside the link."""
    database.touch()
    link = tmp_path / "other" / "link.db"
    link.parent.mkdir()
    link.symlink_to(database)
    first = InstanceLock(database)
    acquire(first)
    try:
        with pytest.raises(DaemonAlreadyRunningError):
            acquire(InstanceLock(link))
        assert daemon_running(link) is True
    finally:
        first.release()
    assert (lock_path(link), socket_path(link)) == (lock_path(database), socket_path(database))


def test_instance_lock__a_database_with_a_second_hard_link_is_refused(
    database: Path, tmp_path: Path
) -> None:
    """Two names of one file are two databases to SQLite (each gets its own WAL): keyq
    refuses to open it, by either name, saying why and what to do."""
    db.connect(database).close()
    os.link(database, tmp_path / "hard.db")
    for name in (database, tmp_path / "hard.db"):
        with pytest.raises(UnsafeDatabaseError, match="2 hard links") as info:
            acquire(InstanceLock(name))
        assert "Keep one name" in str(info.value)
        with pytest.raises(UnsafeDatabaseError):
            db.connect(name)


def test_instance_lock__a_replaced_lock_file_is_locked_anew(database: Path) -> None:
    """A lock file deleted and created again between open and flock is not a lock: the
    holder locks the file that the path names."""
    lock = InstanceLock(database)
    assert lock.try_acquire()
    lock_path(database).unlink()  # an operator "cleaning up" the lock file
    try:
        other = InstanceLock(database)
        assert other.try_acquire()  # the path names a new file, which nobody holds
        other.release()
    finally:
        lock.release()


MOUNTS = """\
/dev/vda1 / ext4 rw,relatime 0 0
server:/export /srv/shared nfs4 rw,vers=4.2 0 0
/dev/vdb /srv/shared/local\\040disk ext4 rw 0 0
//nas/share /mnt/nas cifs rw 0 0
tmpfs /tmp tmpfs rw 0 0
"""


@pytest.mark.parametrize(
    ("path", "fstype"),
    [
        ("/var/lib/keyq", "ext4"),
        ("/srv/shared/keyq", "nfs4"),
        ("/srv/shared/local disk/keyq", "ext4"),  # a local mount below a network one
        ("/mnt/nas", "cifs"),
        ("/tmp/x", "tmpfs"),
    ],
)
def test_mount_of__the_longest_mount_point_holding_the_path(path: str, fstype: str) -> None:
    """The file system of a path is its deepest mount, as /proc/self/mounts lists them
    (with their octal escapes)."""
    mount = mount_of(Path(path), MOUNTS)
    assert mount is not None
    assert mount.fstype == fstype
    assert (fstype in NETWORK) == (fstype in ("nfs4", "cifs"))


def test_check_database__a_local_file_system_is_accepted(database: Path) -> None:
    """The test's own temporary directory is local: nothing is refused."""
    check_database(database)
    mount = mount_of(database.parent)
    assert mount is not None
    assert mount.fstype not in NETWORK


def test_check_database__a_network_file_system_is_refused_naming_it() -> None:
    """A database on NFS (or CIFS, sshfs, ...) is refused before SQLite opens it, with the
    mount named and what to do."""
    with pytest.raises(UnsafeDatabaseError) as info:
        check_database(Path("/srv/shared/keyq/keyq.db"), MOUNTS)
    assert "network file system (nfs4 server:/export on /srv/shared)" in str(info.value)
    assert "local disk" in str(info.value)
    check_database(Path("/srv/shared/local disk/keyq.db"), MOUNTS)
