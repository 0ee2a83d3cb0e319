"""Who may open keyq's files: the owner alone, or the owner and one group (``[security]``).

The database, its ``-wal`` and ``-shm``, the lock file and the control socket
are made ``0600``; with ``[security] group = "keyq-ops"`` they are ``0660`` and
that group's, so an operator's account in the group can run the inspecting
commands (and, with write access, the operating ones). The daemon sets them
at every start, so a group configured later is granted to files made before.
"""

from __future__ import annotations

import grp
import os
from dataclasses import dataclass
from pathlib import Path

from keyq.errors import ConfigError

OWNER_ONLY, OWNER_AND_GROUP = 0o600, 0o660


@dataclass(frozen=True, slots=True)
class FileAccess:
    """The mode and group keyq's files get."""

    mode: int = OWNER_ONLY
    gid: int | None = None

    @classmethod
    def for_group(cls, group: str | None) -> FileAccess:
        """Owner only without a group; else 0660 for ``group`` (ConfigError if unknown)."""
        if group is None:
            return cls()
        try:
            return cls(OWNER_AND_GROUP, grp.getgrnam(group).gr_gid)
        except KeyError:
            raise ConfigError(f"security.group: no group {group!r} on this machine") from None

    @property
    def umask(self) -> int:
        """The umask under which a new file gets at most :attr:`mode`."""
        return 0o777 & ~self.mode

    def apply(self, path: Path) -> None:
        """Give ``path`` this mode and group, if it exists."""
        try:
            if self.gid is not None:
                os.chown(path, -1, self.gid)
            os.chmod(path, self.mode)
        except FileNotFoundError:
            return
        except PermissionError as exc:
            raise ConfigError(
                f"security.group: cannot give {path} to group {self.gid}: {exc.strerror} "
                "(the daemon's user must be a member of the group)"
            ) from None

    def apply_fd(self, fd: int) -> None:
        """The same for a file just created: its mode whatever the umask was."""
        if self.gid is not None:
            os.fchown(fd, -1, self.gid)
        os.fchmod(fd, self.mode)


def database_files(database: Path) -> list[Path]:
    """The database and the two files SQLite keeps beside it in WAL mode."""
    return [database, Path(f"{database}-wal"), Path(f"{database}-shm")]
