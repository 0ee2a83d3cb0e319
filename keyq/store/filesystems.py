"""Where a database file really is: its one real path, and the file system it lives on.

SQLite's WAL mode and keyq's one-daemon lock both need a local file system and
one name per file: SQLite keeps its ``-wal`` and ``-shm`` files beside the path
it opened, and keyq its lock and socket beside the real path. A symlink is
resolved; a second hard link, or a network file system, is refused before the
database is opened (SQLite's "How To Corrupt An SQLite Database File", 2.3 and
2.5, for why).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from keyq.errors import UnsafeDatabaseError

# Network and cluster file systems, as Linux names them in /proc/self/mounts.
NETWORK = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "9p",
        "ceph",
        "afs",
        "glusterfs",
        "lustre",
        "gpfs",
        "beegfs",
        "ocfs2",
        "gfs2",
        "fuse.sshfs",
        "fuse.glusterfs",
        "fuse.s3fs",
        "fuse.rclone",
        "fuse.juicefs",
    }
)


@dataclass(frozen=True, slots=True)
class Mount:
    device: str
    point: str
    fstype: str


def real_path(database: Path) -> Path:
    """The database's one true path: absolute, with every symlink resolved."""
    return Path(os.path.realpath(database))


def check_database(database: Path, mounts: str | None = None) -> None:
    """Refuse a database file with a second hard link, or on a network file system
    (``mounts``: the text of /proc/self/mounts, read when not given)."""
    real = real_path(database)
    try:
        links = os.stat(real).st_nlink
    except FileNotFoundError:
        links = 1
    if links > 1:
        raise UnsafeDatabaseError(
            f"database {database} has {links} hard links: SQLite would keep a separate WAL "
            "beside each name, and two daemons could run on one file. Keep one name "
            "(a symlink is fine)"
        )
    mount = mount_of(real.parent, mounts)
    if mount is not None and mount.fstype in NETWORK:
        raise UnsafeDatabaseError(
            f"database {database} is on a network file system ({mount.fstype} {mount.device} "
            f"on {mount.point}): SQLite's WAL and keyq's lock need a local one. Put the "
            "database on a local disk"
        )


def mount_of(path: Path, mounts: str | None = None) -> Mount | None:
    """The mount that holds ``path`` (the longest mount point above it), from
    ``/proc/self/mounts`` or the ``mounts`` text given; None where there is none."""
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text()
        except OSError:
            return None
    best: Mount | None = None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        device, point, fstype = (_unescape(f) for f in fields[:3])
        if path.is_relative_to(point) and (best is None or len(point) > len(best.point)):
            best = Mount(device, point, fstype)
    return best


_OCTAL = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    """``/proc/self/mounts`` writes a space as ``\\040`` (and tab, newline, backslash alike)."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)
