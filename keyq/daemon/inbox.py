"""What attempts, operators and clients post to the main loop, and its wake-up."""

from __future__ import annotations

import anyio

from keyq.errors import StoreError
from keyq.store.protocol import (
    CancelAsked,
    DebounceAsked,
    Event,
    RunsHandedIn,
    SettingsChanged,
    StepDone,
)


class Inbox:
    """Events for the next tick. ``wake`` is set whenever there is reason to tick."""

    def __init__(self) -> None:
        self._events: list[Event] = []
        self.wake = anyio.Event()

    def __bool__(self) -> bool:
        return bool(self._events)

    def post(self, event: Event) -> None:
        self._events.append(event)
        self.wake.set()

    def ring(self) -> None:
        """Tick soon, with or without events (a stop, a poke, an interrupt)."""
        self.wake.set()

    def take(self) -> list[Event]:
        """Everything posted so far; the wake-up is re-armed for what comes next."""
        self.wake = anyio.Event()
        events, self._events = self._events, []
        return events

    def refuse_hand_ins(self, error: StoreError) -> None:
        """While commits fail: hand-ins are answered with ``error`` at once (their
        callers store the runs themselves or report it); other events wait."""
        refused = [e for e in self._events if isinstance(e, RunsHandedIn | DebounceAsked)]
        self._events = [e for e in self._events if not isinstance(e, RunsHandedIn | DebounceAsked)]
        for event in refused:
            event.reply.fail(error)

    def refuse_all(self, error: StoreError) -> None:
        """At exit: what was posted and never recorded is answered with ``error``."""
        for event in self._events:
            if isinstance(
                event, StepDone | RunsHandedIn | DebounceAsked | CancelAsked | SettingsChanged
            ):
                event.reply.fail(error)
        self._events = []
