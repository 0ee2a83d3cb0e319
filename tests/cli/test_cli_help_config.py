"""CLI: every command documents itself, and config errors and precedence reach the user."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from keyq.cli import app

Project = Any


def _commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    subcommands = getattr(command, "commands", None)
    if subcommands is not None:
        yield path, command
        for name, sub in subcommands.items():
            yield from _commands(sub, (*path, name))
    else:
        yield path, command


COMMANDS = list(_commands(typer.main.get_command(app)))
LEAVES = [(path, cmd) for path, cmd in COMMANDS if getattr(cmd, "commands", None) is None]


def test_cli__has_the_documented_commands() -> None:
    """The commands SPEC §2 and §8 name for triggering and inspecting are present."""
    paths = {" ".join(path) for path, _ in COMMANDS}
    assert {"serve", "trigger", "stats", "runs list", "runs show", "runs cancel"} <= paths


@pytest.mark.parametrize(
    ("path", "command"), COMMANDS, ids=[" ".join(p) or "keyq" for p, _ in COMMANDS]
)
def test_cli__help_exits_0_and_documents_every_option(path: tuple[str, ...], command: Any) -> None:
    """`keyq ... --help` exits 0, shows the command's description, and lists each option."""
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.stdout
    if command.help:
        assert command.help.splitlines()[0].strip() in result.stdout
    for param in command.params:
        for opt in param.opts:
            if opt.startswith("--"):
                assert opt in result.stdout, f"{opt} missing from help of {' '.join(path)}"


@pytest.mark.parametrize(("path", "command"), LEAVES, ids=[" ".join(p) for p, _ in LEAVES])
def test_cli__every_command_and_option_has_help_text(path: tuple[str, ...], command: Any) -> None:
    """Each command has a description and each of its options a help text."""
    assert command.help, f"keyq {' '.join(path)} has no description"
    undocumented = [
        param.opts[0]
        for param in command.params
        if param.opts[0].startswith("--") and not getattr(param, "help", None)
    ]
    assert undocumented == []


@pytest.mark.parametrize(("path", "command"), LEAVES, ids=[" ".join(p) for p, _ in LEAVES])
def test_cli__every_command_takes_config(path: tuple[str, ...], command: Any) -> None:
    """Every command takes --config (SPEC §11)."""
    assert any("--config" in p.opts for p in command.params)


def test_cli__no_arguments_shows_help() -> None:
    """`keyq` alone prints the list of commands instead of failing obscurely."""
    result = CliRunner().invoke(app, [])
    assert "trigger" in result.output
    assert "runs" in result.output


# --- configuration through the CLI ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[limits]\nconcurency = 3\n", "limits.concurency"),
        ("[queues.x]\nlimit = 3\n", "queues.x.limit"),
        ("[limits]\nconcurrency = -1\n", "limits.concurrency"),
        ("durability = 'fast'\n", "durability"),
    ],
)
@pytest.mark.parametrize("command", [["stats"], ["runs", "list"], ["trigger", "cli-echo"]])
def test_cli__bad_config_exits_1_naming_the_key(
    project: Project, toml: str, key: str, command: list[str]
) -> None:
    """A bad key in the config stops any command with exit 1 and the dotted key on stderr."""
    project.config.write_text('database = "keyq.db"\n' + toml)
    result = project.run(*command, app=command[0] == "trigger")
    assert result.exit_code == 1
    assert key in result.stderr
    assert str(project.config) in result.stderr
    assert "Traceback" not in result.output
    assert not project.database.exists()


def test_cli__bad_toml_exits_1(project: Project) -> None:
    """A config that is not TOML exits 1 with a one-line error, not a traceback."""
    project.config.write_text("database = \n")
    result = project.run("stats")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ")
    assert "not valid TOML" in result.stderr


def test_cli__missing_config_file_exits_1(project: Project) -> None:
    """--config naming a missing file exits 1 naming it."""
    result = project.runner.invoke(app, ["stats", "--config", "nope.toml"])
    assert result.exit_code == 1
    assert "nope.toml" in result.stderr


def test_cli__local_keyq_toml_is_used_without_config(project: Project) -> None:
    """In a directory with keyq.toml, commands use it without --config."""
    project.config.write_text('database = "local.db"\n')
    result = project.runner.invoke(app, ["trigger", "cli-echo", "--app", project.app])
    assert result.exit_code == 0, result.stderr
    assert (project.root / "local.db").is_file()
    assert not project.database.exists()


def test_cli__env_config_beats_local_file(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$KEYQ_CONFIG wins over ./keyq.toml; --config wins over both."""
    (project.root / "env").mkdir()
    env_config = project.root / "env" / "keyq.toml"
    env_config.write_text('database = "env.db"\n')
    monkeypatch.setenv("KEYQ_CONFIG", str(env_config))
    result = project.runner.invoke(app, ["trigger", "cli-echo", "--app", project.app])
    assert result.exit_code == 0, result.stderr
    assert (project.root / "env" / "env.db").is_file()

    result = project.trigger("cli-echo")  # passes --config keyq.toml explicitly
    assert result.exit_code == 0, result.stderr
    assert project.database.is_file()


def test_cli__database_found_from_another_directory(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative database in the config resolves next to the config, not the current dir."""
    run_id = project.trigger_id("cli-echo")
    (project.root / "sub").mkdir()
    monkeypatch.chdir(project.root / "sub")
    result = project.run("runs", "show", run_id, "--json")
    assert result.exit_code == 0, result.stderr
    assert not (project.root / "sub" / "keyq.db").exists()
