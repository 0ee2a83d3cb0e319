"""One producer process of the latency benchmark's concurrent case.

``python -m bench.producer CONFIG COUNT``: prints "ready", waits for a line on
stdin (so that every producer starts at once), triggers COUNT no-op runs one at
a time through ``keyq.Client``, and prints the duration of each call in ns as
one JSON list.
"""

from __future__ import annotations

import json
import sys
import time

import keyq
from bench import tasks


def main() -> None:
    config, count = sys.argv[1], int(sys.argv[2])
    with keyq.Client(config) as client:
        print("ready", flush=True)
        sys.stdin.readline()
        calls = []
        for i in range(count):
            before = time.monotonic_ns()
            client.trigger(tasks.NOOP, i)
            calls.append(time.monotonic_ns() - before)
    print(json.dumps(calls), flush=True)


if __name__ == "__main__":
    main()
