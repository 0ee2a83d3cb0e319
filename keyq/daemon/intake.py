"""How triggers and cancels reach the daemon's loop from this process and its control
socket: posted to the inbox as events, answered once what they asked is durable.

``Task.trigger`` inside the daemon's process (a task triggering another, an app
running the daemon in its own loop) and the control socket's ``trigger``,
``debounce`` and ``cancel`` all come through here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from keyq import handoff
from keyq.config import Config
from keyq.core.model import NewRun, RunId
from keyq.errors import DaemonNotRunningError
from keyq.producer import Producer
from keyq.registry import TriggerRequest
from keyq.replies import Pending, Reply
from keyq.results import RunHandle
from keyq.store.protocol import CancelAsked, DebounceAsked, Event, RunsHandedIn


class Intake:
    """Posts triggers and cancels to the loop while ``is_open()``; the direct path else."""

    def __init__(
        self,
        config: Config,
        *,
        post: Callable[[Event], None],
        is_open: Callable[[], bool],
        now: Callable[[], float],
        poke: Callable[[], None],
    ) -> None:
        self._post, self._is_open, self._now, self._poke = post, is_open, now, poke
        self.producer = Producer(config, now=now, poke=poke)

    def reconfigure(self, config: Config) -> None:
        """A reloaded config: a producer with its bounds (the old one's connection closed)."""
        old, self.producer = self.producer, Producer(config, now=self._now, poke=self._poke)
        old.close()

    async def submit_triggers(
        self, requests: Sequence[TriggerRequest], parent_id: str | None = None
    ) -> list[RunHandle]:
        """Store runs durably and start them as their limits allow (``Task.trigger``)."""
        runs = self.producer.build(requests, parent_id)
        if handoff.debounced(runs):
            ids = await self.debounce(runs)
            return [RunHandle(i, r.task, i == r.id) for i, r in zip(ids, runs, strict=True)]
        if handoff.eligible(runs) and await self.hand_in(runs):
            return [RunHandle(r.id, r.task) for r in runs]
        return await self.producer.submit_runs(runs)

    async def hand_in(self, runs: list[NewRun]) -> bool:
        """Hand validated runs to the store and return once they are stored, each with its
        start when a slot is free (one transaction). False if the daemon is stopping or
        could not store them: they are then not stored, nor kept, and the caller stores
        them itself, as a client that gets no answer does."""
        reply: Pending[None] = Pending()
        if not self.post_trigger(runs, reply, deadline=None, retry=False):
            return False
        try:
            await reply.wait()
        except Exception:
            return False
        return True

    def post_trigger(
        self, runs: list[NewRun], reply: Reply[None], *, deadline: float | None, retry: bool
    ) -> bool:
        """:meth:`hand_in` without waiting: ``reply`` is set once the runs are stored,
        or failed with the error that kept them from being stored (then they are not,
        ever, by this daemon). False (and ``reply`` never called) if the daemon is
        stopping. ``deadline`` and ``retry``: see :func:`keyq.handoff.request`."""
        if not self._is_open():
            return False
        self._post(RunsHandedIn(runs, reply, deadline, retry))
        return True

    async def debounce(self, runs: list[NewRun], retry: bool = False) -> list[RunId]:
        """Store runs of which some are debounced; the run standing for each (the DELAYED
        run of its debounce key it folded into, or itself), once durable.
        DaemonNotRunningError if the daemon is stopping: it no longer decides, and
        nobody else may fold into its runs until it has let go of the database."""
        if not self._is_open():
            raise DaemonNotRunningError("the daemon is stopping: trigger again once it is down")
        reply: Pending[list[RunId]] = Pending()
        self._post(DebounceAsked(runs, reply, retry))
        return await reply.wait()

    async def cancel(self, run_id: RunId) -> None:
        """Cancel a run; returns once the cancel is on disk (a RUNNING run stops soon after)."""
        reply: Pending[None] = Pending()
        self._post(CancelAsked(run_id, reply))
        await reply.wait()
