"""How runs enter keyq: validated, then stored durably, then acknowledged.

Clients, the CLI, the in-process daemon and tasks triggering children all go
through :class:`Producer`: every trigger is validated first (nothing is stored
if one item is bad) and acknowledged only once it is on disk. Two ways there:

* handed to the running daemon (:mod:`keyq.handoff`), which stores each run
  together with its start: the fast path, taken whenever the daemon is up;
* the direct path: inserted in a single transaction here, then a poke to the
  daemon. The poke only shortens the daemon's latency; if it is lost, the
  daemon still finds the row.

Debounced triggers are the exception: while a daemon holds the database it
decides whether each folds into an earlier run, so they are stored directly
only under the daemon's lock, with no daemon running, and otherwise sent to
the daemon until one of the two works (``DEBOUNCE_TIMEOUT_S``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import anyio

from keyq import handoff
from keyq.clock import host_monotonic
from keyq.config import Config
from keyq.core.model import NewRun, RunId
from keyq.errors import StoreError
from keyq.ids import new_run_id
from keyq.registry import TriggerRequest
from keyq.results import RunHandle
from keyq.store.local import LocalStore
from keyq.triggers import build_run

DEBOUNCE_TIMEOUT_S = 10.0  # a daemon holding the database answers well within this
_DEBOUNCE_PAUSE_S = 0.05


class Producer:
    """Validates runs, then hands them to the daemon or stores them directly and pokes it."""

    def __init__(
        self,
        config: Config,
        *,
        now: Callable[[], float],
        poke: Callable[[], None],
        hand_off: Callable[[list[NewRun]], bool] | None = None,
        send_debounce: Callable[[list[NewRun]], list[RunId] | None] | None = None,
        store: LocalStore | None = None,
    ) -> None:
        self._config = config
        self._now = now
        self._poke = poke
        self._hand_off = hand_off  # True if the daemon took the runs (keyq.handoff)
        self._send_debounce = send_debounce  # the standing ids, None if no daemon answered
        self._store = store if store is not None else LocalStore(config)

    def trigger_sync(
        self, requests: Sequence[TriggerRequest], parent_id: str | None = None
    ) -> list[RunHandle]:
        """Store runs durably, through the daemon if it takes them, else directly; blocking."""
        runs = self.build(requests, parent_id)
        if handoff.debounced(runs):
            return self._debounce(runs)
        if self._hand_off is not None and self._hand_off(runs):
            return [RunHandle(r.id, r.task) for r in runs]
        return self.store_and_poke(runs)

    def _debounce(self, runs: list[NewRun]) -> list[RunHandle]:
        """Store debounced runs directly if no daemon runs, else through the daemon;
        between a daemon stopping and the next starting, try both until one works."""
        give_up_at = host_monotonic() + DEBOUNCE_TIMEOUT_S
        while True:
            standing = self._store.debounce_offline(runs)
            if standing is None and self._send_debounce is not None:
                standing = self._send_debounce(runs)
            if standing is not None:
                return [
                    RunHandle(s, r.task, s == r.id) for s, r in zip(standing, runs, strict=True)
                ]
            if host_monotonic() >= give_up_at:
                raise StoreError(
                    f"a keyq daemon holds {self._config.database} but did not answer the "
                    f"debounced trigger within {DEBOUNCE_TIMEOUT_S:g} s: nothing was stored"
                )
            time.sleep(_DEBOUNCE_PAUSE_S)  # a daemon is starting or stopping: try again

    def store_and_poke(self, runs: list[NewRun]) -> list[RunHandle]:
        """The direct path: insert durably, then poke the daemon; blocking."""
        handles = self.store(runs)
        if any(h.is_new for h in handles):
            self._poke()
        return handles

    async def submit_runs(self, runs: list[NewRun]) -> list[RunHandle]:
        """The direct path from async code: insert in a worker thread, then poke."""
        handles = await anyio.to_thread.run_sync(self.store, runs)
        if any(h.is_new for h in handles):
            self._poke()
        return handles

    def build(
        self, requests: Sequence[TriggerRequest], parent_id: str | None = None
    ) -> list[NewRun]:
        """Validate triggers into the runs to store (TriggerError names the bad field)."""
        now = self._now()
        return [
            build_run(
                task,
                payload,
                options,
                run_id=new_run_id(now),
                now=now,
                max_payload_bytes=self._config.max_payload_bytes,
                parent_id=parent_id,
            )
            for task, payload, options in requests
        ]

    def store(self, runs: list[NewRun]) -> list[RunHandle]:
        """Insert validated runs in one transaction; blocking. A run whose id is
        already stored (the daemon took it after all) is not stored twice."""
        standing = self._store.insert_runs(runs)
        return [RunHandle(s, r.task, s == r.id) for s, r in zip(standing, runs, strict=True)]

    def close(self) -> None:
        self._store.close()
