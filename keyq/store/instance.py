"""One daemon per database: the lock file, the pid in it, and the control socket path.

The daemon holds an exclusive ``flock`` on ``<database>.lock`` for its whole
life. A second daemon fails to take it and says who holds it. The CLI takes the
same lock briefly when it must change the database while no daemon runs
(cancelling a run, say), so a daemon cannot start halfway through that change.
flock needs a local file system, which SQLite's WAL mode needs anyway.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from pathlib import Path
from types import TracebackType
from typing import NoReturn

import anyio

from keyq.errors import DaemonAlreadyRunningError
from keyq.store.filesystems import check_database, real_path

_MAX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux; leave room
_TRIES, _PAUSE_S = 40, 0.05  # how long a daemon waits for a CLI command's brief hold


def lock_path(database: Path) -> Path:
    """The lock file, beside the database's real path: every name of one file finds it."""
    real = real_path(database)
    return real.with_name(real.name + ".lock")


def socket_path(database: Path) -> Path:
    """The control socket: next to the database's real path, or in the runtime dir if
    that path is too long."""
    real = real_path(database)
    beside = real.with_name(real.name + ".sock")
    if len(os.fsencode(beside)) <= _MAX_SOCKET_PATH:
        return beside
    digest = hashlib.sha256(os.fsencode(real)).hexdigest()[:16]
    runtime = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(runtime) / f"keyq-{os.getuid()}-{digest}.sock"


class InstanceLock:
    """An exclusive, non-blocking flock on the database's lock file."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self.path = lock_path(database)
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        """Take the lock if free; False if a daemon (or another holder) has it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            if _same_file(fd, self.path):
                self._fd = fd
                return True
            os.close(fd)  # the file was replaced between open and flock: lock the new one

    async def acquire_for_daemon(self) -> None:
        """Take the lock and record our pid, or raise naming the daemon that holds it.

        A holder that wrote no pid is a CLI command probing or cancelling for a
        moment: wait for it (up to about 2 s, without blocking the event loop)
        rather than refuse to start. A database with a second hard link or on a
        network file system is refused first
        (:func:`keyq.store.filesystems.check_database`).
        """
        check_database(self.database)
        for _ in range(_TRIES):
            if self._taken_or_refused():
                return
            await anyio.sleep(_PAUSE_S)
        self._refuse()

    def _taken_or_refused(self) -> bool:
        """One try: True once we hold the lock (our pid written); raises if a live
        daemon holds it; False while a holder without a pid may let go."""
        if self.try_acquire():
            assert self._fd is not None
            os.ftruncate(self._fd, 0)
            os.write(self._fd, f"{os.getpid()}\n".encode())
            return True
        if _alive(read_pid(self.path)):
            self._refuse()
        return False

    def _refuse(self) -> NoReturn:
        pid = read_pid(self.path)
        who = f"pid {pid}" if pid else "another process"
        raise DaemonAlreadyRunningError(
            f"a keyq daemon ({who}) already runs on this database; "
            f"stop it first (lock file {self.path})"
        )

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> InstanceLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    """True if ``fd`` is still the file at ``path`` (same device and inode)."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)


def _alive(pid: int | None) -> bool:
    """True if ``pid`` names a live process (a pid left by a killed daemon does not)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    return True


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def daemon_running(database: Path) -> bool:
    """True if a daemon holds the database's lock right now (a read-only account may ask)."""
    try:
        fd = os.open(lock_path(database), os.O_RDONLY)
    except FileNotFoundError:
        return False  # no daemon ever ran here
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock we took
    return False
