"""``python -m keyq``: the CLI."""

from __future__ import annotations

from keyq.cli import main

main()
