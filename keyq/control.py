"""The daemon's local control socket: pokes from producers and live operator commands.

A Unix stream socket next to the database (mode 0600, never a network port).
The protocol is JSON lines. ``{"op": "poke"}`` gets no answer: it only tells the
daemon to read new rows now. Every other request gets one answer line,
``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.

| op         | fields   | does                                            |
|------------|----------|-------------------------------------------------|
| poke       |          | read newly inserted runs now                    |
| trigger    | runs, new_until | store and start runs (:mod:`keyq.handoff`); answers once stored |
| cancel     | run_id   | cancel a run (answers once the cancel is durable) |
| settings   |          | re-read runtime limit overrides from the database |
| stats      |          | the engine's live counts                        |
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.abc
from anyio.abc import SocketAttribute
from anyio.streams.buffered import BufferedByteReceiveStream

from keyq import handoff
from keyq.errors import DaemonNotRunningError, KeyqError
from keyq.triggers import NewRun

if TYPE_CHECKING:
    from keyq.daemon import Daemon

MAX_LINE = handoff.MAX_MESSAGE_BYTES


async def serve_control(
    daemon: Daemon,
    path: Path,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``path`` until cancelled (we hold the instance lock: a leftover file is stale)."""
    _remove(path)
    previous = os.umask(0o177)  # the socket is created owner-only, never briefly open
    try:
        listener = await anyio.create_unix_listener(path)
    finally:
        os.umask(previous)
    task_status.started()
    try:
        async with listener:
            await listener.serve(lambda stream: _serve_connection(daemon, stream))
    finally:
        _remove(path)


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)


_GONE = (
    anyio.EndOfStream,
    anyio.IncompleteRead,
    anyio.DelimiterNotFound,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    ConnectionError,
)


async def _serve_connection(daemon: Daemon, stream: anyio.abc.ByteStream) -> None:
    """Answer one client's requests; whatever it sends, the daemon stays up."""
    reader = BufferedByteReceiveStream(stream)
    async with stream:
        try:
            while True:
                line = await reader.receive_until(b"\n", MAX_LINE)
                answer = await _handle(daemon, line)
                if answer is not None:
                    await _send_now(stream, json.dumps(answer).encode() + b"\n")
        except _GONE:
            return  # the client went away, perhaps before its answer
        except Exception:
            daemon.log.exception("control_request_failed")


async def _send_now(stream: anyio.abc.ByteStream, data: bytes) -> None:
    """Send without yielding first when the socket takes it all (answers are small).

    anyio's ``send`` yields to the loop before writing, and the main loop may
    then commit the next step before this task runs again: a trigger's answer
    would wait behind an fsync it has nothing to do with (bench/latency).
    """
    sock = stream.extra(SocketAttribute.raw_socket)
    try:
        sent = sock.send(data)
    except BlockingIOError:
        sent = 0
    if sent < len(data):
        await stream.send(data[sent:])


async def _handle(daemon: Daemon, line: bytes) -> dict[str, Any] | None:
    try:
        request = json.loads(line)
        op = request["op"]
    except (ValueError, KeyError, TypeError):
        return {"ok": False, "error": "bad request: expected a JSON object with an 'op'"}
    if op == "poke":
        daemon.poke()
        return None
    try:
        return await _operate(daemon, op, request)
    except KeyqError as exc:
        return {"ok": False, "error": str(exc), "type": type(exc).__name__}
    except (KeyError, TypeError, ValueError) as exc:
        return {"ok": False, "error": f"bad request for op {op!r}: {exc!r}"}


async def _operate(daemon: Daemon, op: str, request: dict[str, Any]) -> dict[str, Any]:
    if op == "cancel":
        run_id = request["run_id"]
        if not isinstance(run_id, str):
            raise TypeError("run_id must be a string")
        await daemon.cancel(run_id)
        return {"ok": True}
    if op == "trigger":
        new_until = request["new_until"]
        if not isinstance(new_until, int | float):
            raise TypeError("new_until must be a number")
        runs = handoff.decode(request["runs"], daemon.registry, daemon.config.max_payload_bytes)
        if not await daemon.hand_in(runs, new_until=new_until):
            return {"ok": False, "error": "the daemon is stopping: store the runs directly"}
        return {"ok": True}
    if op == "settings":
        await daemon.reload_settings()
        return {"ok": True}
    if op == "stats":
        stats = daemon.statistics()
        return {"ok": True, "stats": {f: getattr(stats, f) for f in stats.__slots__}}
    return {"ok": False, "error": f"unknown op {op!r}"}


# --- the client side ----------------------------------------------------------------------


def request(path: Path, message: dict[str, Any], timeout_s: float = 10.0) -> dict[str, Any]:
    """Send one request to the daemon and return its answer (blocking)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(os.fspath(path))
            sock.sendall(json.dumps(message).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(MAX_LINE)
                if not chunk:
                    break
                data += chunk
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise DaemonNotRunningError(f"no keyq daemon is listening on {path}") from exc
    except TimeoutError as exc:
        raise DaemonNotRunningError(f"the keyq daemon did not answer within {timeout_s}s") from exc
    if not data:
        raise DaemonNotRunningError("the keyq daemon closed the connection without answering")
    answer: dict[str, Any] = json.loads(data)
    return answer


def _connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(handoff.ANSWER_TIMEOUT_S)
        sock.connect(os.fspath(path))
    except OSError:
        sock.close()
        raise
    return sock


class Channel:
    """A kept-open connection to the daemon, for pokes and hand-offs (thread-safe).

    Silent when no daemon listens: a poke is then not needed (the run is on
    disk and is read when the daemon starts), and a hand-off answers False so
    that the caller stores the runs itself.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def poke(self) -> None:
        with self._lock:
            self._exchange(lambda retry: b'{"op":"poke"}\n', answered=False)

    def hand_off(self, runs: list[NewRun]) -> bool:
        """Hand runs to the daemon (:mod:`keyq.handoff`); True once it has stored them."""
        if not handoff.eligible(runs) or (encoded := handoff.encode(runs)) is None:
            return False
        with self._lock:
            answer = self._exchange(lambda retry: handoff.request(encoded, retry), answered=True)
        return answer is not None and answer.get("ok") is True

    def _exchange(self, line: Callable[[bool], bytes], *, answered: bool) -> dict[str, Any] | None:
        """Send ``line(retry)``; the answer if ``answered``. A daemon restart closes a
        kept connection: then retry once on a new one. A silent daemon is not
        retried: the caller goes on without it."""
        for retry in (False, True):
            stale = self._sock is not None
            try:
                if self._sock is None:
                    self._sock = _connect(self._path)
                self._sock.sendall(line(retry))
                if not answered:
                    return None
                answer = _read_line(self._sock)
                if answer is not None:
                    return cast(dict[str, Any], json.loads(answer))
            except TimeoutError:
                self.close()  # an answer may still come: never read it as the next one's
                return None
            except OSError:
                pass
            self.close()
            if not stale:
                return None
        return None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _read_line(sock: socket.socket) -> bytes | None:
    """One answer line; None if the daemon closed the connection first."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(MAX_LINE)
        if not chunk:
            return None
        data += chunk
    return data
