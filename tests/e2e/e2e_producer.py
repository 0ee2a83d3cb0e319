"""A producer process for the e2e tier: `python e2e_producer.py CONFIG COUNT KEY`.

Imports the tasks, prints "ready", waits for one line on stdin (a start barrier, so all
producers write at the same time), then triggers COUNT runs of e2e-noop one at a time
through keyq.Client and prints each run id.
"""

from __future__ import annotations

import sys

import e2e_tasks  # noqa: F401  (registers the tasks)

import keyq


def main() -> None:
    config, count, key = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    with keyq.Client(config) as client:
        print("ready", flush=True)
        sys.stdin.readline()
        for i in range(count):
            handle = client.trigger("e2e-noop", {"i": i}, concurrency_key=key)
            print(handle.id, flush=True)


if __name__ == "__main__":
    main()
