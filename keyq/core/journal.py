"""A run's journal: its waits and steps, in order, as replay needs them.

Every wait a task makes and every ``ctx.step`` takes the next *position* in its
run. The daemon records each one durably. When the task function runs again
(after a restart, after a long wait dropped its coroutine, on a retry), the
:class:`Journal` hands each call the entry recorded at its position, so the
call returns its recorded result at once. It also checks that the code still
makes the same call there: a different one means the code changed under a
waiting run, and replaying it would do something wrong.

Pure: entries in, entries out; the daemon and the store do the I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from keyq.errors import KeyqError

Kind = Literal["step", "wait", "children", "token", "for_token"]

_CALLS: dict[str, str] = {
    "step": "ctx.step({name!r})",
    "wait": "ctx.wait.for_/until",
    "children": "trigger_and_wait of {name}",
    "token": "ctx.wait.create_token",
    "for_token": "ctx.wait.for_token({name!r})",
}


@dataclass(frozen=True, slots=True)
class Entry:
    """One recorded call: ``data`` is JSON text (a step's result, a wait's target)."""

    position: int
    kind: Kind
    name: str
    data: str


class ReplayMismatchError(KeyqError):
    """The task's code makes a different call at a recorded position than the run did."""


def describe(kind: str, name: str) -> str:
    return _CALLS[kind].format(name=name)


class Journal:
    """The replay cursor of one attempt over its run's recorded entries."""

    def __init__(self, entries: Sequence[Entry] = ()) -> None:
        self._entries = list(entries)
        self._position = 0

    def __len__(self) -> int:
        return len(self._entries)

    def next(self, kind: Kind, name: str) -> tuple[int, Entry | None]:
        """Take the next position for a call: its recorded entry, or None to run it live.

        Raises ReplayMismatchError if the run recorded a different call there.
        """
        position = self._position
        self._position += 1
        if position >= len(self._entries):
            return position, None
        entry = self._entries[position]
        if (entry.kind, entry.name) != (kind, name):
            raise ReplayMismatchError(
                f"the task's code no longer matches this run's record: at position "
                f"{position} the run made {describe(entry.kind, entry.name)}, but the code "
                f"now makes {describe(kind, name)}. The code changed while the run was "
                "waiting; code between waits must be deterministic (see docs/waits.md)"
            )
        return position, entry

    def unreplayed(self) -> int:
        """Recorded entries this attempt has not reached."""
        return max(0, len(self._entries) - self._position)
