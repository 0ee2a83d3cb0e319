"""One process around the engine: lifecycle and the main loop (:mod:`keyq.daemon.daemon`),
recording steps (``recorder``), running attempts (``runner``), the control socket
(``control``), replies (``replies``) and systemd's protocol (``systemd``)."""

from __future__ import annotations

from keyq.daemon.daemon import Daemon as Daemon
