"""What every ``keyq`` command shares: its options, errors as one line, task modules,
a client on the configured database, JSON in and out."""

from __future__ import annotations

import importlib
import json
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from keyq.client import Client
from keyq.config import Config, load_config
from keyq.errors import DefinitionError, InvalidArgumentError, KeyqError, TriggerError

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


debug = False  # `keyq --debug` / KEYQ_DEBUG=1: tracebacks under errors


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
    if debug:
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
