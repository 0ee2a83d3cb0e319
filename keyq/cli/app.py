"""The ``keyq`` command line: serve, trigger, and inspect and operate on runs.

This module is the table of the commands; each is a thin declaration over one
function of the library, in :mod:`keyq.cli.serving`, :mod:`keyq.cli.runs` and
:mod:`keyq.cli.limits`. Every command takes ``--config`` (else
``$KEYQ_CONFIG``, else ``./keyq.toml``); inspecting commands take ``--json``
and work while the daemon is stopped.
"""

from __future__ import annotations

from typing import Annotated

import typer

from keyq.cli import common, limits, runs, schedules, serving

app = typer.Typer(
    name="keyq",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
runs_app = typer.Typer(help="List, show and cancel runs.", no_args_is_help=True)
queues_app = typer.Typer(
    help="Show queues (with no subcommand); change their limits; pause and resume them."
)
keys_app = typer.Typer(help="Show the concurrency keys of a queue (--queue); set one key's limit.")
tokens_app = typer.Typer(
    help="Waitpoint tokens: list them; complete one to resume the runs waiting on it.",
    no_args_is_help=True,
)
schedules_app = typer.Typer(
    help="Schedules (cron and every): list them; pause and resume them.", no_args_is_help=True
)
app.add_typer(runs_app, name="runs")
app.add_typer(schedules_app, name="schedules")
app.add_typer(tokens_app, name="tokens")
app.add_typer(queues_app, name="queues")
app.add_typer(keys_app, name="keys")


def main() -> None:
    app()


@app.callback()
def options(
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            envvar="KEYQ_DEBUG",
            help="Print the traceback under an error (also KEYQ_DEBUG=1).",
        ),
    ] = False,
) -> None:
    """keyq: run async Python tasks with per-key concurrency limits, durable in SQLite.

    Exit status: 0 done; 1 the operation failed (not found, wrong state, the
    database failed); 2 the input was refused (a bad argument or trigger, a
    task module that does not import), with nothing stored.
    """
    common.debug = debug


app.command()(serving.serve)
app.command()(serving.trigger)
app.command()(limits.stats)
runs_app.command("list")(runs.runs_list)
runs_app.command("show")(runs.runs_show)
runs_app.command("cancel")(runs.runs_cancel)
tokens_app.command("list")(runs.tokens_list)
tokens_app.command("complete")(runs.tokens_complete)
queues_app.callback(invoke_without_command=True)(limits.queues_list)
queues_app.command("set-limit")(limits.queues_set_limit)
queues_app.command("set-rate")(limits.queues_set_rate)
queues_app.command("pause")(limits.queues_pause)
queues_app.command("resume")(limits.queues_resume)
keys_app.callback(invoke_without_command=True)(limits.keys_list)
keys_app.command("set-limit")(limits.keys_set_limit)
keys_app.command("set-rate")(limits.keys_set_rate)
schedules_app.command("list")(schedules.schedules_list)
schedules_app.command("pause")(schedules.schedules_pause)
schedules_app.command("resume")(schedules.schedules_resume)
