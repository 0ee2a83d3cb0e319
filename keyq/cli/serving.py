"""``keyq serve`` and ``keyq trigger``."""

from __future__ import annotations

import json
from typing import Annotated, Any

import anyio
import typer

from keyq.cli.common import (
    AppOpt,
    ConfigOpt,
    JsonOpt,
    client,
    errors_reported,
    fail,
    import_tasks,
    load,
    parse_json,
)
from keyq.client import Client
from keyq.daemon.daemon import Daemon
from keyq.eventloop import new_event_loop
from keyq.logs import configure_logging
from keyq.registry import default_registry


def serve(config: ConfigOpt = None, apps: AppOpt = None) -> None:
    """Run the daemon in the foreground until SIGTERM or Ctrl-C.

    Logs go to stderr: readable on a terminal, JSON otherwise. SIGTERM stops
    starting runs and lets running ones finish within shutdown_grace; SIGHUP
    reloads limits from the config file.
    """
    cfg = load(config)
    configure_logging(cfg.log)
    import_tasks([*cfg.tasks, *(apps or [])])
    if not default_registry.tasks:
        fail("no tasks defined: pass --app MODULE or set `tasks = [...]` in the config", code=2)
    with errors_reported():
        anyio.run(Daemon(cfg).serve, backend_options={"loop_factory": new_event_loop})


KeyOpt = Annotated[str | None, typer.Option("--concurrency-key", "-k", help="Limit per this key.")]
QueueLimitOpt = Annotated[
    int | None, typer.Option(help="With --queue: set that queue's limit per key.")
]
DelayOpt = Annotated[str | None, typer.Option(help="Start no sooner than this: 30s, 5m, 2h.")]
IdempotencyOpt = Annotated[
    str | None, typer.Option(help="Return the existing run if this key was used for the task.")
]
TtlOpt = Annotated[
    str | None,
    typer.Option(help="Cancel the run (ttl_expired) if it has not started by then: 10m."),
]
DebounceOpt = Annotated[
    str | None,
    typer.Option(
        help="Start after this quiet time: a later trigger with the same --debounce-key "
        "while this run is still delayed replaces its payload and pushes its start."
    ),
]
DebounceKeyOpt = Annotated[
    str | None, typer.Option(help="With --debounce: the triggers that fold into one run.")
]
DebounceMaxOpt = Annotated[
    str | None,
    typer.Option(help="With --debounce: start at most this long after the first trigger "
                 "(default 10x the debounce)."),
]  # fmt: skip
AttemptsOpt = Annotated[int | None, typer.Option(help="Override the task's retry count.")]
WaitOpt = Annotated[bool, typer.Option(help="Block until the run is final; exit 1 if it failed.")]


def trigger(
    task: Annotated[str, typer.Argument(help="Task id, as given to @keyq.task(id=...).")],
    payload: Annotated[str, typer.Argument(help="JSON payload.")] = "{}",
    concurrency_key: KeyOpt = None,
    queue: Annotated[str | None, typer.Option(help="Run on this queue instead.")] = None,
    queue_limit: QueueLimitOpt = None,
    priority: Annotated[int, typer.Option(help="1 (first) to 10 (last).")] = 5,
    delay: DelayOpt = None,
    idempotency_key: IdempotencyOpt = None,
    max_attempts: AttemptsOpt = None,
    tag: Annotated[list[str] | None, typer.Option(help="Tag the run (repeatable).")] = None,
    ttl: TtlOpt = None,
    debounce: DebounceOpt = None,
    debounce_key: DebounceKeyOpt = None,
    debounce_max: DebounceMaxOpt = None,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    apps: AppOpt = None,
) -> None:
    """Trigger a run and print its id once it is durable (the daemon may be stopped).

    With --debounce, the id printed is that of the run the trigger folded into, if
    one with the same --debounce-key was still delayed.
    """
    data = parse_json("payload", payload)
    if queue_limit is not None and queue is None:
        fail("--queue-limit needs --queue", code=2)
    options: dict[str, Any] = {
        "concurrency_key": concurrency_key,
        "queue": {"name": queue, "concurrency_limit": queue_limit} if queue else None,
        **dict(priority=priority, delay=delay, idempotency_key=idempotency_key),
        **dict(max_attempts=max_attempts, tags=tag or None, ttl=ttl, debounce=debounce),
        **dict(debounce_key=debounce_key, debounce_max=debounce_max),
    }
    with errors_reported(), client(config, apps or [], tasks=True) as c:
        handle = c.trigger(task, data, **options)
        typer.echo(json.dumps(c.get_run(handle.id)) if as_json else handle.id)
        if wait:
            _wait_for(c, handle.id)


def _wait_for(c: Client, run_id: str) -> None:
    """Block until the run is final; exit 1 naming how it ended if it did not complete."""
    result = c.wait(run_id)
    if not result.ok:
        error = result.error
        why = f": {error.type}: {error.message}" if error else ""
        fail(f"run {run_id} {result.status.value}{why}")
