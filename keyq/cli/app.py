"""The ``keyq`` command line: serve, trigger, and inspect and operate on runs.

Every command is a thin declaration over one function of the library. Every
command takes ``--config`` (else ``$KEYQ_CONFIG``, else ``./keyq.toml``);
inspecting commands take ``--json`` and work while the daemon is stopped.
"""

from __future__ import annotations

import importlib
import json
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import anyio
import typer

from keyq.cli.render import (
    render_keys,
    render_queues,
    render_run,
    render_runs,
    render_stats,
    render_tokens,
)
from keyq.client import Client
from keyq.config import Config, load_config
from keyq.daemon.daemon import Daemon
from keyq.errors import DefinitionError, InvalidArgumentError, KeyqError, TriggerError
from keyq.eventloop import new_event_loop
from keyq.logs import configure_logging
from keyq.registry import default_registry
from keyq.store.admin import UNSET

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
app.add_typer(runs_app, name="runs")
app.add_typer(tokens_app, name="tokens")
app.add_typer(queues_app, name="queues")
app.add_typer(keys_app, name="keys")

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Config file (default: $KEYQ_CONFIG, else ./keyq.toml, else built-in defaults).",
        show_default=False,
    ),
]
AppOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--app",
        "-a",
        help="Module defining tasks, imported from the current directory (repeatable); "
        "added to the config's `tasks`.",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


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
    global _debug
    _debug = debug


_debug = False


# --- helpers ----------------------------------------------------------------------------------


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def errors_reported() -> Iterator[None]:
    """Turn keyq's errors into one line on stderr: exit 2 for refused input, else 1."""
    try:
        yield
    except (TriggerError, DefinitionError, InvalidArgumentError) as exc:
        _traceback(exc)
        fail(str(exc), code=2)
    except KeyqError as exc:
        _traceback(exc)
        fail(str(exc))


def _traceback(exc: BaseException) -> None:
    if _debug:
        typer.echo("".join(traceback.format_exception(exc)).rstrip(), err=True)


def load(config: Path | None) -> Config:
    with errors_reported():
        return load_config(config)


def import_tasks(modules: Sequence[str]) -> None:
    """Import task modules the way uvicorn finds an app: from the current directory."""
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:
            _traceback(exc)
            fail(import_failure(module, exc), code=2)


def import_failure(module: str, exc: BaseException) -> str:
    """One line: the module, where in the user's code it failed, and why."""
    cause = str(exc) if isinstance(exc, KeyqError) else f"{type(exc).__name__}: {exc}"
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if not f.filename.startswith(("<frozen", _KEYQ_DIR))
    ]
    where = f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""
    return f"cannot import task module {module!r}{where}: {cause}"


_KEYQ_DIR = str(Path(__file__).resolve().parents[1])  # the keyq package


def client(config: Path | None, apps: Sequence[str] = (), *, tasks: bool = False) -> Client:
    cfg = load(config)
    if tasks:
        import_tasks([*cfg.tasks, *apps])
    return Client(cfg)


def parse_json(what: str, text: str) -> Any:
    """A JSON argument, or exit 2 naming it."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"{what} is not valid JSON: {exc}", code=2)
    except RecursionError:
        fail(f"{what} is not valid JSON: it nests too deeply", code=2)


def emit(data: Any, as_json: bool, render: Callable[[Any], str]) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False) if as_json else render(data))


# --- serve and trigger ------------------------------------------------------------------------


@app.command()
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


@app.command()
def trigger(
    task: Annotated[str, typer.Argument(help="Task id, as given to @keyq.task(id=...).")],
    payload: Annotated[str, typer.Argument(help="JSON payload.")] = "{}",
    concurrency_key: Annotated[
        str | None, typer.Option("--concurrency-key", "-k", help="Limit per this key.")
    ] = None,
    queue: Annotated[str | None, typer.Option(help="Run on this queue instead.")] = None,
    queue_limit: Annotated[
        int | None, typer.Option(help="With --queue: set that queue's limit per key.")
    ] = None,
    priority: Annotated[int, typer.Option(help="1 (first) to 10 (last).")] = 5,
    delay: Annotated[
        str | None, typer.Option(help="Start no sooner than this: 30s, 5m, 2h.")
    ] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Return the existing run if this key was used for the task.")
    ] = None,
    max_attempts: Annotated[
        int | None, typer.Option(help="Override the task's retry count.")
    ] = None,
    tag: Annotated[list[str] | None, typer.Option(help="Tag the run (repeatable).")] = None,
    wait: Annotated[
        bool, typer.Option(help="Block until the run is final; exit 1 if it failed.")
    ] = False,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    apps: AppOpt = None,
) -> None:
    """Trigger a run and print its id once it is durable (the daemon may be stopped)."""
    data = parse_json("payload", payload)
    if queue_limit is not None and queue is None:
        fail("--queue-limit needs --queue", code=2)
    options: dict[str, Any] = {
        "concurrency_key": concurrency_key,
        "queue": {"name": queue, "concurrency_limit": queue_limit} if queue else None,
        "priority": priority,
        "delay": delay,
        "idempotency_key": idempotency_key,
        "max_attempts": max_attempts,
        "tags": tag or None,
    }
    with errors_reported(), client(config, apps or [], tasks=True) as c:
        handle = c.trigger(task, data, **options)
        typer.echo(json.dumps(c.get_run(handle.id)) if as_json else handle.id)
        if wait:
            result = c.wait(handle.id)
            if not result.ok:
                error = result.error
                why = f": {error.type}: {error.message}" if error else ""
                fail(f"run {handle.id} {result.status.value}{why}")


# --- runs ---------------------------------------------------------------------------------------


@runs_app.command("list")
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
    from keyq.store.reads import STATUSES

    if status is not None and status not in STATUSES:
        fail(f"--status must be one of {', '.join(STATUSES)}; got {status!r}", code=2)
    with errors_reported(), client(config) as c:
        runs = c.list_runs(status=status, queue=queue, key=key, task=task, tag=tag, limit=limit)
        emit(runs, as_json, render_runs)


@runs_app.command("show")
def runs_show(
    run_id: Annotated[str, typer.Argument(help="The run id.")],
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Show one run with its timeline: every transition, when and why."""
    with errors_reported(), client(config) as c:
        emit(c.get_run(run_id), as_json, render_run)


@runs_app.command("cancel")
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


@tokens_app.command("list")
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


@tokens_app.command("complete")
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


# --- stats, queues, keys --------------------------------------------------------------------------


@app.command()
def stats(as_json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """Counts by state, in total, per queue and per active key, and the capacity in use."""
    with errors_reported(), client(config) as c:
        emit(c.stats(), as_json, render_stats)


@queues_app.callback(invoke_without_command=True)
def queues_list(
    ctx: typer.Context, as_json: JsonOpt = False, config: ConfigOpt = None, apps: AppOpt = None
) -> None:
    """Queues with their effective limits (code, config, runtime), pause state and counts."""
    if ctx.invoked_subcommand is not None:
        return
    with errors_reported(), client(config, apps or [], tasks=True) as c:
        emit(c.queues(), as_json, render_queues)


@keys_app.callback(invoke_without_command=True)
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


@queues_app.command("set-limit")
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


@queues_app.command("pause")
def queues_pause(queue: Annotated[str, typer.Argument()], config: ConfigOpt = None) -> None:
    """Start no more runs of this queue (running ones finish)."""
    with errors_reported(), client(config) as c:
        c.pause(queue)
        typer.echo(f"queue {queue}: paused")


@queues_app.command("resume")
def queues_resume(queue: Annotated[str, typer.Argument()], config: ConfigOpt = None) -> None:
    """Start runs of this queue again."""
    with errors_reported(), client(config) as c:
        c.pause(queue, paused=False)
        typer.echo(f"queue {queue}: resumed")


@keys_app.command("set-limit")
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
