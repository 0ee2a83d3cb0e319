"""``keyq runs`` and ``keyq tokens``: list, show, cancel; complete a token."""

from __future__ import annotations

from typing import Annotated

import typer

from keyq.cli.common import ConfigOpt, JsonOpt, client, emit, errors_reported, fail, parse_json
from keyq.cli.render import render_run, render_runs, render_tokens
from keyq.store.reads import STATUSES


def runs_list(
    status: Annotated[
        str | None,
        typer.Option(help="queued, delayed, running, waiting, completed, failed or canceled."),
    ] = None,
    queue: Annotated[str | None, typer.Option(help="Only this queue.")] = None,
    key: Annotated[str | None, typer.Option(help="Only this concurrency key.")] = None,
    task: Annotated[str | None, typer.Option(help="Only this task.")] = None,
    tag: Annotated[str | None, typer.Option(help="Only runs with this tag.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 100,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """List runs, newest first."""
    if status is not None and status not in STATUSES:
        fail(f"--status must be one of {', '.join(STATUSES)}; got {status!r}", code=2)
    with errors_reported(), client(config) as c:
        runs = c.list_runs(status=status, queue=queue, key=key, task=task, tag=tag, limit=limit)
        emit(runs, as_json, render_runs)


def runs_show(
    run_id: Annotated[str, typer.Argument(help="The run id.")],
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Show one run with its timeline: every transition, when and why."""
    with errors_reported(), client(config) as c:
        emit(c.get_run(run_id), as_json, render_run)


def runs_cancel(
    run_id: Annotated[str, typer.Argument(help="The run id.")],
    config: ConfigOpt = None,
) -> None:
    """Cancel a run that is not final; a running attempt is stopped."""
    with errors_reported(), client(config) as c:
        c.cancel(run_id)
        typer.echo(f"canceled {run_id}")


# --- tokens -------------------------------------------------------------------------------------

TOKEN_STATUSES = ("waiting", "completed", "timed_out")


def tokens_list(
    status: Annotated[str | None, typer.Option(help="waiting, completed or timed_out.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 100,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """List waitpoint tokens, newest first, with the run that created each."""
    if status is not None and status not in TOKEN_STATUSES:
        fail(f"--status must be one of {', '.join(TOKEN_STATUSES)}; got {status!r}", code=2)
    with errors_reported(), client(config) as c:
        emit(c.list_tokens(status=status, limit=limit), as_json, render_tokens)


def tokens_complete(
    token: Annotated[str, typer.Argument(help="The token id (tok_...).")],
    output: Annotated[
        str, typer.Argument(help="JSON the waiting runs receive as the result's output.")
    ] = "null",
    config: ConfigOpt = None,
) -> None:
    """Complete a waiting token: every run waiting on it resumes with OUTPUT.

    Works while the daemon is stopped: the runs resume when it starts. A token
    already completed, or past its timeout, is refused (exit 1).
    """
    data = parse_json("output", output)
    with errors_reported(), client(config) as c:
        c.complete_token(token, data)
        typer.echo(f"completed {token}")
