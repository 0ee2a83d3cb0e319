"""The ``keyq`` command line: the commands (:mod:`keyq.cli.app`) and their text
(:mod:`keyq.cli.render`)."""

from __future__ import annotations

from keyq.cli.app import app as app
from keyq.cli.app import main as main
