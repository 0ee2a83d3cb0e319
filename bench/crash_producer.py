"""One producer of the crash campaign: ``python -m bench.crash_producer CONFIG NAME KEYS STOP``.

Triggers short runs of ``bench-burst`` one at a time through ``keyq.Client``, round-robin
over KEYS concurrency keys, until the file STOP exists. Prints ``ok RUN_ID N`` for each
trigger acknowledged and ``refused N ERROR`` for each refused (payload ``{"p": NAME, "n":
N}``), so the campaign knows exactly which runs it was promised, and which it must never see.
"""

from __future__ import annotations

import sys
from pathlib import Path

import keyq
from bench import tasks


def main() -> None:
    config, name, keys, stop = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    with keyq.Client(config) as client:
        print("ready", flush=True)
        n = 0
        while not stop.exists():
            payload = {"p": name, "n": n, "ms": 5 + n % 20}
            try:
                handle = client.trigger(tasks.BURST, payload, concurrency_key=f"k{n % keys}")
            except keyq.KeyqError as exc:
                print(f"refused {n} {exc}", flush=True)
            else:
                print(f"ok {handle.id} {n}", flush=True)
            n += 1


if __name__ == "__main__":
    main()
