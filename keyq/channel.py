"""The client's side of the daemon's control socket: one request, or a kept channel.

The protocol and the server are in :mod:`keyq.daemon.control`; what a trigger
hand-off carries is :mod:`keyq.handoff`.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from keyq import handoff
from keyq.core.model import NewRun
from keyq.errors import DaemonNotRunningError, StoreError, TriggerError

MAX_LINE = handoff.MAX_MESSAGE_BYTES
_REFUSALS = frozenset({"TriggerError", "UnknownTaskError", "PayloadError"})


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

    def debounce(self, runs: list[NewRun]) -> list[str] | None:
        """Send runs of which some are debounced (:mod:`keyq.handoff`); the id of the run
        standing for each, or None if no daemon answered (or it is stopping). A refusal
        of the runs themselves raises it, naming the field."""
        encoded = handoff.encode(runs)
        if encoded is None:
            raise TriggerError(
                f"debounced triggers sent to a running daemon are limited to "
                f"{handoff.MAX_MESSAGE_BYTES // 1024} KiB of JSON per call: send fewer at a "
                "time, or a smaller payload (a reference to the data)"
            )
        with self._lock:
            answer = self._exchange(
                lambda retry: handoff.debounce_request(encoded, retry), answered=True
            )
        if answer is None:
            return None
        ids = answer.get("ids")
        if answer.get("ok") is True and isinstance(ids, list) and len(ids) == len(runs):
            return [str(i) for i in ids]
        if answer.get("type") in _REFUSALS:
            raise TriggerError(str(answer.get("error")))
        if answer.get("type") == "DaemonNotRunningError":
            return None
        raise StoreError(f"the daemon did not store the debounced runs: {answer.get('error')}")

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
