"""The daemon's local control socket: pokes from producers and live operator commands.

A Unix stream socket next to the database (mode 0600, never a network port).
The protocol is JSON lines. ``{"op": "poke"}`` gets no answer: it only tells the
daemon to read new rows now. Every other request gets one answer line,
``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.

| op         | fields   | does                                            |
|------------|----------|-------------------------------------------------|
| poke       |          | read newly inserted runs now                    |
| cancel     | run_id   | cancel a run (answers once the cancel is durable) |
| settings   |          | re-read runtime limit overrides from the database |
| stats      |          | the engine's live counts                        |
"""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from keyq.errors import DaemonNotRunningError, KeyqError

if TYPE_CHECKING:
    from keyq.daemon import Daemon

MAX_LINE = 64 * 1024


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
                    await stream.send(json.dumps(answer).encode() + b"\n")
        except _GONE:
            return  # the client went away, perhaps before its answer
        except Exception:
            daemon.log.exception("control_request_failed")


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
        sock.settimeout(1.0)
        sock.connect(os.fspath(path))
    except OSError:
        sock.close()
        raise
    return sock


class Poker:
    """Pokes a daemon over a kept-open connection; silent when no daemon listens."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self._poke()

    def _poke(self) -> None:
        for _ in range(2):  # a daemon restart closes the old connection: retry once
            try:
                if self._sock is None:
                    self._sock = _connect(self._path)
                self._sock.sendall(b'{"op":"poke"}\n')
                return
            except OSError:
                self.close()
        # No daemon: the run is on disk and is read when the daemon starts.

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
