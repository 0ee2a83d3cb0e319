"""``keyq stats``, ``keyq queues`` and ``keyq keys``: counts, limits, rates, pauses."""

from __future__ import annotations

from typing import Annotated

import typer

from keyq.cli.common import AppOpt, ConfigOpt, JsonOpt, client, emit, errors_reported, fail
from keyq.cli.render import render_keys, render_queues, render_stats
from keyq.store.admin import UNSET


def stats(as_json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """Counts by state, in total, per queue and per active key, and the capacity in use."""
    with errors_reported(), client(config) as c:
        emit(c.stats(), as_json, render_stats)


def queues_list(
    ctx: typer.Context, as_json: JsonOpt = False, config: ConfigOpt = None, apps: AppOpt = None
) -> None:
    """Queues with their effective limits (code, config, runtime), pause state and counts."""
    if ctx.invoked_subcommand is not None:
        return
    with errors_reported(), client(config, apps or [], tasks=True) as c:
        emit(c.queues(), as_json, render_queues)


def keys_list(
    ctx: typer.Context,
    queue: Annotated[str | None, typer.Option("--queue", "-q", help="The queue.")] = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    apps: AppOpt = None,
) -> None:
    """Active keys of a queue, busiest backlog first: running, queued, and who is at its limit."""
    if ctx.invoked_subcommand is not None:
        return
    if queue is None:
        fail("give --queue QUEUE", code=2)
    with errors_reported(), client(config, apps or [], tasks=True) as c:
        emit(c.keys(queue), as_json, render_keys)


def queues_set_limit(
    queue: Annotated[str, typer.Argument(help="Queue name.")],
    limit: Annotated[
        int | None,
        typer.Argument(
            help="Runs per key (or per queue without keys); omit with --reset.", show_default=False
        ),
    ] = None,
    total: Annotated[int | None, typer.Option(help="Cap over all keys together.")] = None,
    reset: Annotated[
        bool, typer.Option(help="Drop the runtime override: back to code/config.")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Change a queue's limit while the daemon runs; stored, so it survives restarts."""
    if (limit is None) != reset:
        fail("give a LIMIT, or --reset", code=2)
    with errors_reported(), client(config) as c:
        if reset:
            c.set_queue_limit(queue, None, None)
        else:
            c.set_queue_limit(queue, limit, UNSET if total is None else total)
        typer.echo(f"queue {queue}: limit {'reset' if reset else limit}")


def queues_pause(queue: Annotated[str, typer.Argument()], config: ConfigOpt = None) -> None:
    """Start no more runs of this queue (running ones finish)."""
    with errors_reported(), client(config) as c:
        c.pause(queue)
        typer.echo(f"queue {queue}: paused")


def queues_resume(queue: Annotated[str, typer.Argument()], config: ConfigOpt = None) -> None:
    """Start runs of this queue again."""
    with errors_reported(), client(config) as c:
        c.pause(queue, paused=False)
        typer.echo(f"queue {queue}: resumed")


def keys_set_limit(
    queue: Annotated[str, typer.Argument()],
    key: Annotated[str, typer.Argument()],
    limit: Annotated[int | None, typer.Argument(show_default=False)] = None,
    reset: Annotated[
        bool, typer.Option(help="Drop the override: the queue's limit applies.")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Give one concurrency key its own limit in a queue (a paying customer, say)."""
    if (limit is None) != reset:
        fail("give a LIMIT, or --reset", code=2)
    with errors_reported(), client(config) as c:
        c.set_key_limit(queue, key, limit)
        typer.echo(f"key {key} in {queue}: limit {'reset' if reset else limit}")


RateArg = Annotated[
    str | None,
    typer.Argument(
        help="Starts per window: 100/1m, 10/s, 5/30s; none lifts the rate. Omit with --reset.",
        show_default=False,
    ),
]


def queues_set_rate(
    queue: Annotated[str, typer.Argument(help="Queue name.")],
    rate: RateArg = None,
    total: Annotated[
        str | None, typer.Option(help="Starts per window over all keys together (or none).")
    ] = None,
    reset: Annotated[
        bool, typer.Option(help="Drop the runtime rates: back to code/config.")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Change a queue's rate limit (per key, or for the queue without keys) while the
    daemon runs; stored, so it survives restarts. Retries and resumed waits count as starts."""
    if (rate is None) != reset:
        fail("give a RATE, or --reset", code=2)
    with errors_reported(), client(config) as c:
        if reset:
            c.set_queue_rate(queue, None, None)
        else:
            c.set_queue_rate(queue, rate, UNSET if total is None else total)
        typer.echo(f"queue {queue}: rate {'reset' if reset else rate}")


def keys_set_rate(
    queue: Annotated[str, typer.Argument()],
    key: Annotated[str, typer.Argument()],
    rate: RateArg = None,
    reset: Annotated[bool, typer.Option(help="Drop the key's rate: the queue's applies.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Give one concurrency key its own rate limit in a queue (none: no rate for it)."""
    if (rate is None) != reset:
        fail("give a RATE, or --reset", code=2)
    with errors_reported(), client(config) as c:
        c.set_key_rate(queue, key, None if reset else rate)
        typer.echo(f"key {key} in {queue}: rate {'reset' if reset else rate}")
