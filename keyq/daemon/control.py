"""The daemon's local control socket: pokes from producers and live operator commands.

A Unix stream socket next to the database (mode 0600, never a network port).
The protocol is JSON lines. ``{"op": "poke"}`` gets no answer: it only tells the
daemon to read new rows now. Every other request gets one answer line,
``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``; requests sent back
to back on one connection are answered in the order sent.

| op       | fields                | does                                              |
|----------|-----------------------|---------------------------------------------------|
| poke     |                       | read newly inserted runs now                      |
| trigger  | runs, deadline, retry | store and start runs (:mod:`keyq.handoff`)        |
| debounce | runs, retry           | the same, debounced: answers the ids that stand   |
| cancel   | run_id                | cancel a run (answers once the cancel is durable) |
| settings |                       | re-read runtime limit overrides from the database |
| stats    |                       | the engine's live counts                          |
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, Protocol, cast

import anyio
import anyio.abc

from keyq import handoff
from keyq.config import Config
from keyq.core.model import EngineStatistics
from keyq.daemon.intake import Intake
from keyq.errors import KeyqError, TriggerError
from keyq.registry import Registry
from keyq.store.permissions import FileAccess

MAX_LINE = handoff.MAX_MESSAGE_BYTES


class ControlHost(Protocol):
    """What the socket needs of the daemon it serves (:class:`keyq.daemon.Daemon`)."""

    registry: Registry
    config: Config
    access: FileAccess
    log: Any
    intake: Intake

    def poke(self) -> None: ...
    def reload_settings(self) -> Awaitable[None]: ...
    def statistics(self) -> EngineStatistics: ...


async def serve_control(
    daemon: ControlHost,
    path: Path,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``path`` until cancelled (we hold the instance lock: a leftover file is stale).

    An asyncio protocol, not a stream per connection: a request is parsed in
    the selector's callback and posted to the daemon's loop there, and its
    answer is written from the loop's commit. A trigger's way to its start
    takes no extra task switches (bench/latency).
    """
    _remove(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connections: set[_Connection] = set()
    acceptor: _Acceptor | None = None
    try:
        previous = os.umask(daemon.access.umask)  # created as it will stay, never more open
        try:
            listener.bind(os.fspath(path))
        finally:
            os.umask(previous)
        daemon.access.apply(path)
        listener.listen(BACKLOG)
        listener.setblocking(False)
        acceptor = _Acceptor(listener, lambda: _Connection(daemon, connections), daemon.log)
        task_status.started()
        await anyio.sleep_forever()
    finally:
        if acceptor is not None:
            acceptor.close()
        listener.close()
        for connection in list(connections):
            connection.close()
        _remove(path)


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)


BACKLOG = 128
ACCEPT_PAUSE_S = 0.5  # at the descriptor limit, how long before accepting again
ACCEPT_LOG_EVERY_S = 5.0


class _Acceptor:
    """Accepts connections from the selector's callback; at the file-descriptor limit it
    stops accepting for a moment instead of spinning (asyncio's own server logs every
    failed accept and re-arms once per failure: a flood), and says so once per interval.
    Waiting clients stay in the listen backlog; the daemon's loop goes on meanwhile."""

    def __init__(
        self, listener: socket.socket, protocol: Callable[[], asyncio.Protocol], log: Any
    ) -> None:
        self._listener = listener
        self._protocol = protocol
        self._log = log
        self._loop = asyncio.get_running_loop()
        self._resume: asyncio.TimerHandle | None = None
        self._paused = 0  # pauses since the last log line
        self._logged_at = -ACCEPT_LOG_EVERY_S
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop.add_reader(listener.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(BACKLOG):
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # that client gave up before it was accepted
            except OSError as exc:  # the descriptor limit, or memory: wait, do not spin
                self._pause(exc)
                return
            sock.setblocking(False)
            task = self._loop.create_task(self._loop.connect_accepted_socket(self._protocol, sock))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _pause(self, exc: OSError) -> None:
        self._loop.remove_reader(self._listener.fileno())
        self._paused += 1
        now = self._loop.time()
        if now - self._logged_at >= ACCEPT_LOG_EVERY_S:
            self._log.warning("control_accept_paused", error=str(exc), paused=self._paused)
            self._logged_at, self._paused = now, 0
        self._resume = self._loop.call_later(ACCEPT_PAUSE_S, self._restart)

    def _restart(self) -> None:
        self._resume = None
        self._loop.add_reader(self._listener.fileno(), self._accept)
        self._accept()

    def close(self) -> None:
        if self._resume is not None:
            self._resume.cancel()
        else:
            self._loop.remove_reader(self._listener.fileno())
        for task in self._tasks:
            task.cancel()


class _Answer:
    """One request's place in its connection's answer order (a
    :class:`~keyq.daemon.replies.Reply`)."""

    __slots__ = ("_connection", "line")

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection
        self.line: bytes | None = None

    def give(self, answer: dict[str, Any]) -> None:
        if self.line is None:  # the first word stands
            self.line = json.dumps(answer).encode() + b"\n"
            self._connection.flush()

    def set(self, value: None) -> None:
        self.give({"ok": True})

    def fail(self, error: BaseException) -> None:
        self.give({"ok": False, "error": f"the daemon could not adopt the runs: {error}"})


MAX_PENDING = 64  # answers owed to one client before its requests are no longer read


class _Connection(asyncio.Protocol):
    """One client. Requests are JSON lines; answers go out in the order asked,
    whichever is ready first. Whatever it sends, the daemon stays up."""

    def __init__(self, daemon: ControlHost, connections: set[_Connection]) -> None:
        self._daemon = daemon
        self._connections = connections
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._owed: deque[_Answer] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._reading = True
        self._writing = True
        self._eof = False  # the client sent all it will: close once it has its answers
        self._closed = False
        connections.add(self)  # now, not at connection_made: shutdown must find it

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        if self._closed:  # the daemon stopped between accepting and this call
            self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        self._transport = None
        for task in self._tasks:
            task.cancel()

    def eof_received(self) -> bool:
        """A client may send its requests and shut its side (``nc -N``): it still
        gets its answers, then the connection closes."""
        self._eof = True
        self.flush()
        return True  # keep the transport open for the answers

    def close(self) -> None:
        """Close now; answers already written still go out, unless the client does
        not read them (then they are dropped rather than keeping the connection)."""
        self._closed = True
        if self._transport is not None:
            if self._transport.get_write_buffer_size():
                self._transport.abort()
            else:
                self._transport.close()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while (end := self._buffer.find(b"\n")) >= 0:
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            self._request(line)
        if len(self._buffer) > MAX_LINE:
            self.close()  # no line this long is a request
        self._pace()

    def _request(self, line: bytes) -> None:
        try:
            request = json.loads(line)
            op = request["op"]
        except (ValueError, KeyError, TypeError, RecursionError):  # [[[[... nests too deep
            answer = self._owe()
            answer.give({"ok": False, "error": "bad request: expected a JSON object with an 'op'"})
            return
        if op == "poke":
            self._daemon.poke()
            return
        answer = self._owe()
        try:
            if op == "trigger":
                self._trigger(request, answer)
            elif op in _OPERATIONS:
                self._spawn(op, _OPERATIONS[op](self._daemon, request), answer)
            else:
                answer.give({"ok": False, "error": f"unknown op {op!r}"})
        except Exception as exc:
            answer.give(self._refusal(op, exc))

    def _trigger(self, request: dict[str, Any], answer: _Answer) -> None:
        deadline = handoff.check_deadline(request.get("deadline"))
        retry = request.get("retry")
        if not isinstance(retry, bool):
            raise TriggerError(f"retry must be true or false, got {retry!r}")
        daemon = self._daemon
        runs = handoff.decode(request.get("runs"), daemon.registry, daemon.config.max_payload_bytes)
        if not daemon.intake.post_trigger(runs, answer, deadline=deadline, retry=retry):
            answer.give({"ok": False, "error": "the daemon is stopping: store the runs directly"})

    def _spawn(
        self, op: str, operation: Coroutine[Any, Any, dict[str, Any]], answer: _Answer
    ) -> None:
        async def run() -> None:
            try:
                answer.give(await operation)
            except Exception as exc:
                answer.give(self._refusal(op, exc))

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _refusal(self, op: str, exc: Exception) -> dict[str, Any]:
        if isinstance(exc, KeyqError):
            return {"ok": False, "error": str(exc), "type": type(exc).__name__}
        if isinstance(exc, KeyError | TypeError | ValueError):
            return {"ok": False, "error": f"bad request for op {op!r}: {exc!r}"}
        self._daemon.log.exception("control_request_failed", op=op)
        return {"ok": False, "error": f"the daemon failed on op {op!r}: {exc!r}"}

    def _owe(self) -> _Answer:
        answer = _Answer(self)
        self._owed.append(answer)
        return answer

    def flush(self) -> None:
        """Write the answers that are ready and owed first."""
        while self._owed and (line := self._owed[0].line) is not None:
            self._owed.popleft()
            if self._transport is not None:
                self._transport.write(line)  # sent now when the socket takes it
        if self._eof and not self._owed and self._transport is not None:
            self._transport.close()
        self._pace()

    def pause_writing(self) -> None:
        self._writing = False
        self._pace()

    def resume_writing(self) -> None:
        self._writing = True
        self._pace()

    def _pace(self) -> None:
        """Read no more requests from a client that does not read its answers."""
        read = self._writing and len(self._owed) < MAX_PENDING
        if self._transport is not None and read != self._reading:
            self._reading = read
            if read:
                self._transport.resume_reading()
            else:
                self._transport.pause_reading()


async def _cancel(daemon: ControlHost, request: dict[str, Any]) -> dict[str, Any]:
    run_id = request["run_id"]
    if not isinstance(run_id, str):
        raise TypeError("run_id must be a string")
    await daemon.intake.cancel(run_id)
    return {"ok": True}


async def _debounce(daemon: ControlHost, request: dict[str, Any]) -> dict[str, Any]:
    retry = request.get("retry")
    if not isinstance(retry, bool):
        raise TriggerError(f"retry must be true or false, got {retry!r}")
    config = daemon.config
    runs = handoff.decode(
        request.get("runs"), daemon.registry, config.max_payload_bytes, debounce=True
    )
    return {"ok": True, "ids": await daemon.intake.debounce(runs, retry)}


async def _settings(daemon: ControlHost, request: dict[str, Any]) -> dict[str, Any]:
    await daemon.reload_settings()
    return {"ok": True}


async def _stats(daemon: ControlHost, request: dict[str, Any]) -> dict[str, Any]:
    stats = daemon.statistics()
    return {"ok": True, "stats": {f: getattr(stats, f) for f in stats.__slots__}}


Operation = Callable[[ControlHost, dict[str, Any]], Coroutine[Any, Any, dict[str, Any]]]
_OPERATIONS: dict[str, Operation] = {
    "cancel": _cancel,
    "debounce": _debounce,
    "settings": _settings,
    "stats": _stats,
}
