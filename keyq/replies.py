"""A one-shot value slot: one side sets a value or an error, the other awaits it."""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

import anyio

T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)


class Reply(Protocol[T_contra]):
    """Where the daemon's loop puts the outcome of a command: a :class:`Pending` an
    awaiting caller holds, or an answer written straight to a client (keyq.daemon.control)."""

    def set(self, value: T_contra) -> None: ...

    def fail(self, error: BaseException) -> None: ...


class Pending(Generic[T]):
    """Like a future, for anyio: ``set``/``fail`` once, ``await wait()`` any time."""

    __slots__ = ("_error", "_event", "_value")

    def __init__(self) -> None:
        self._event = anyio.Event()
        self._value: T | None = None
        self._error: BaseException | None = None

    def set(self, value: T) -> None:
        self._value = value
        self._event.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._event.set()

    async def wait(self) -> T:
        await self._event.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]
