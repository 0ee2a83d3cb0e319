"""Configuration: defaults, every SPEC §11 key, errors that name the dotted key, precedence."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from keyq.config import (
    Config,
    LimitsConfig,
    LogConfig,
    QueueConfig,
    RetentionConfig,
    load_config,
    parse_config,
    resolve_path,
)
from keyq.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"

FULL = """
database = "./state/jobs.db"
tasks = ["myapp.tasks", "myapp.more"]
durability = "normal"
max_payload_bytes = 2048
lock_timeout = "30s"
shutdown_grace = "2m"

[limits]
concurrency = 50
burst_factor = 1.5

[queues.user-analysis]
concurrency_limit = 2
total_limit = 40
rate_limit = "100/60s"
rate_limit_total = "none"

[queues."free-users"]
concurrency_limit = 1
paused = true

[retention]
completed = "24h"
failed = "7d"
canceled = "30s"

[log]
format = "json"
level = "debug"
payloads = true
"""


@pytest.fixture(autouse=True)
def _no_env_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each test starts in an empty directory with no $KEYQ_CONFIG."""
    monkeypatch.delenv("KEYQ_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    return str(info.value)


# --- defaults -------------------------------------------------------------------------------


def test_config__defaults_serve_a_laptop(tmp_path: Path) -> None:
    """With no config file anywhere, keyq uses ./keyq.db and the documented defaults."""
    cfg = load_config()
    assert cfg.database == tmp_path / "keyq.db"
    assert cfg.database.is_absolute()
    assert cfg.tasks == ()
    assert cfg.durability == "full"
    assert cfg.max_payload_bytes == 1_048_576
    assert cfg.limits == LimitsConfig(concurrency=200, burst_factor=2.0)
    assert cfg.limits.burst == 400
    assert dict(cfg.queues) == {}
    assert cfg.retention.completed_s == 24 * 3600
    assert cfg.retention.failed_s == 7 * 24 * 3600
    assert cfg.log == LogConfig(format="auto", level="info", payloads=False)
    assert cfg.source is None


def test_config__empty_file_gives_the_defaults(tmp_path: Path) -> None:
    """An empty keyq.toml is the same as no file, apart from where it came from."""
    path = tmp_path / "keyq.toml"
    path.write_text("")
    cfg = load_config(path)
    assert cfg == Config(database=tmp_path / "keyq.db", source=path)


# --- every key --------------------------------------------------------------------------------


def test_config__every_documented_key_is_parsed(tmp_path: Path) -> None:
    """Each key of SPEC §11 (and the extra ones) lands in the Config with its meaning."""
    path = tmp_path / "keyq.toml"
    path.write_text(FULL)
    cfg = load_config(path)
    assert cfg.database == tmp_path / "state" / "jobs.db"
    assert cfg.tasks == ("myapp.tasks", "myapp.more")
    assert cfg.durability == "normal"
    assert cfg.max_payload_bytes == 2048
    assert cfg.lock_timeout_s == 30.0
    assert cfg.shutdown_grace_s == 120.0
    assert cfg.limits == LimitsConfig(concurrency=50, burst_factor=1.5)
    assert cfg.limits.burst == 75
    assert dict(cfg.queues) == {
        "user-analysis": QueueConfig(
            concurrency_limit=2, total_limit=40, rate_limit="100/1m", rate_limit_total="none"
        ),
        "free-users": QueueConfig(concurrency_limit=1, paused=True),
    }
    assert cfg.retention == RetentionConfig(
        completed_s=86_400.0, failed_s=604_800.0, canceled_s=30.0
    )
    assert cfg.log == LogConfig(format="json", level="debug", payloads=True)
    assert cfg.source == path


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("24h", 86_400.0), ("7d", 604_800.0), ("30s", 30.0), ("1h30m", 5_400.0), ("90", 90.0)],
)
def test_config__durations_accept_human_units(text: str, seconds: float) -> None:
    """Retention and timeouts take 30s / 24h / 7d as well as plain seconds."""
    cfg = parse_config(f'[retention]\ncompleted = "{text}"\n')
    assert cfg.retention.completed_s == seconds


def test_config__durations_accept_numbers() -> None:
    """A duration may also be a TOML number of seconds."""
    cfg = parse_config("lock_timeout = 0.25\nshutdown_grace = 10\n")
    assert (cfg.lock_timeout_s, cfg.shutdown_grace_s) == (0.25, 10.0)


# --- errors name the dotted key -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("databse = 'x.db'\n", "databse"),
        ("[limits]\nconcurency = 3\n", "limits.concurency"),
        ("[queues.x]\nlimit = 3\n", "queues.x.limit"),
        ("[retention]\ncompleted_after = '1h'\n", "retention.completed_after"),
        ("[log]\ncolour = true\n", "log.colour"),
        ("[schedulez]\nx = 1\n", "schedulez"),
    ],
)
def test_config__unknown_key_is_named(text: str, key: str) -> None:
    """A typo in any table stops start-up with the full dotted key in the message."""
    message = _error(text)
    assert f"unknown config key {key!r}" in message


def test_config__unknown_nested_key_lists_the_known_ones() -> None:
    """The message for a typo says which keys are valid at that level."""
    message = _error("[limits]\nconcurency = 3\n")
    assert "concurrency" in message.split("known here:")[1]
    assert "burst_factor" in message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("database = 5\n", "database"),
        ("database = ''\n", "database"),
        ("tasks = 'myapp.tasks'\n", "tasks"),
        ("tasks = [1]\n", "tasks"),
        ("durability = 'paranoid'\n", "durability"),
        ("max_payload_bytes = '1MiB'\n", "max_payload_bytes"),
        ("max_payload_bytes = 1.5\n", "max_payload_bytes"),
        ("max_payload_bytes = true\n", "max_payload_bytes"),
        ("lock_timeout = 'soon'\n", "lock_timeout"),
        ("limits = 3\n", "limits"),
        ("[limits]\nconcurrency = 'ten'\n", "limits.concurrency"),
        ("[limits]\nconcurrency = 2.5\n", "limits.concurrency"),
        ("[limits]\nburst_factor = 'x'\n", "limits.burst_factor"),
        ("[limits]\nburst_factor = 0.5\n", "limits.burst_factor"),
        ("queues = 1\n", "queues"),
        ("[queues]\nx = 1\n", "queues.x"),
        ("[queues.x]\nconcurrency_limit = '2'\n", "queues.x.concurrency_limit"),
        ("[queues.x]\npaused = 'yes'\n", "queues.x.paused"),
        ("[queues.x]\nrate_limit = 100\n", "queues.x.rate_limit"),
        ("[queues.x]\nrate_limit = '100 per minute'\n", "queues.x.rate_limit"),
        ("[queues.x]\nrate_limit_total = '0/1m'\n", "queues.x.rate_limit_total"),
        ('[queues."bad name"]\nconcurrency_limit = 1\n', "queues.bad name"),
        ('[queues."newline\\n"]\nconcurrency_limit = 1\n', "queues.newline"),
        ("[retention]\nfailed = '7 days'\n", "retention.failed"),
        ("[log]\nformat = 'xml'\n", "log.format"),
        ("[log]\nlevel = 'loud'\n", "log.level"),
        ("[log]\npayloads = 1\n", "log.payloads"),
    ],
)
def test_config__wrong_type_names_the_key(text: str, key: str) -> None:
    """A value of the wrong type or shape is refused with its dotted key in the message."""
    message = _error(text)
    assert re.search(rf"(^|\s|'){re.escape(key)}\b", message), message


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("max_payload_bytes = -1\n", "max_payload_bytes", "-1"),
        ("max_payload_bytes = 0\n", "max_payload_bytes", "0"),
        ("[limits]\nconcurrency = -5\n", "limits.concurrency", "-5"),
        ("[limits]\nconcurrency = 0\n", "limits.concurrency", "0"),
        ("[limits]\nburst_factor = -2.0\n", "limits.burst_factor", "-2.0"),
        ("[queues.x]\nconcurrency_limit = -1\n", "queues.x.concurrency_limit", "-1"),
        ("[queues.x]\ntotal_limit = -1\n", "queues.x.total_limit", "-1"),
        ("[retention]\ncompleted = -60\n", "retention.completed", "-60"),
        ("lock_timeout = -1\n", "lock_timeout", "-1"),
    ],
)
def test_config__negative_limit_names_the_key(text: str, key: str, value: str) -> None:
    """Negative (or zero, where meaningless) limits are refused naming the key and the value."""
    message = _error(text)
    assert key in message
    assert re.search(rf"got {re.escape(value)}\b", message), message


def test_config__bad_toml_is_a_config_error(tmp_path: Path) -> None:
    """A file that is not TOML fails with ConfigError naming the file, not a traceback."""
    path = tmp_path / "keyq.toml"
    path.write_text("[limits\nconcurrency = 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "not valid TOML" in str(info.value)
    assert str(path) in str(info.value)


def test_config__error_names_the_file(tmp_path: Path) -> None:
    """A bad key in a file names the file as well as the key."""
    path = tmp_path / "keyq.toml"
    path.write_text("[limits]\nconcurency = 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "limits.concurency" in str(info.value)
    assert str(path) in str(info.value)


def test_config__missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    """--config naming a file that does not exist fails instead of silently using defaults."""
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    assert "nope.toml" in str(info.value)


# --- paths and precedence ---------------------------------------------------------------------


def test_config__relative_database_resolves_against_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`database = "keyq.db"` means next to the config file, whatever the current directory."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "keyq.toml").write_text('database = "data/keyq.db"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(etc / "keyq.toml")
    assert cfg.database == etc / "data" / "keyq.db"


def test_config__relative_config_path_still_gives_an_absolute_database(tmp_path: Path) -> None:
    """A relative --config path still yields an absolute database path."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "k.toml").write_text('database = "jobs.db"\n')
    cfg = load_config("conf/k.toml")
    assert cfg.database == tmp_path / "conf" / "jobs.db"


def test_config__absolute_database_is_kept(tmp_path: Path) -> None:
    """An absolute database path is used as written."""
    target = tmp_path / "var" / "lib" / "keyq.db"
    cfg = parse_config(f'database = "{target}"\n', source=tmp_path / "etc" / "keyq.toml")
    assert cfg.database == target


def _write(path: Path, database: str) -> Path:
    path.write_text(f'database = "{database}"\n')
    return path


def test_config__explicit_path_beats_env_and_local(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--config wins over $KEYQ_CONFIG and ./keyq.toml."""
    _write(tmp_path / "keyq.toml", "local.db")
    monkeypatch.setenv("KEYQ_CONFIG", str(_write(tmp_path / "env.toml", "env.db")))
    explicit = _write(tmp_path / "explicit.toml", "explicit.db")
    assert load_config(explicit).database == tmp_path / "explicit.db"
    assert resolve_path(explicit) == explicit


def test_config__env_beats_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$KEYQ_CONFIG wins over ./keyq.toml."""
    _write(tmp_path / "keyq.toml", "local.db")
    monkeypatch.setenv("KEYQ_CONFIG", str(_write(tmp_path / "env.toml", "env.db")))
    assert load_config().database == tmp_path / "env.db"


def test_config__local_file_beats_defaults(tmp_path: Path) -> None:
    """./keyq.toml is used when neither --config nor $KEYQ_CONFIG is given."""
    _write(tmp_path / "keyq.toml", "local.db")
    cfg = load_config()
    assert cfg.database == tmp_path / "local.db"
    assert cfg.source is not None


def test_config__empty_env_var_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty $KEYQ_CONFIG falls through to ./keyq.toml."""
    _write(tmp_path / "keyq.toml", "local.db")
    monkeypatch.setenv("KEYQ_CONFIG", "")
    assert load_config().database == tmp_path / "local.db"


def test_config__env_naming_a_missing_file_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$KEYQ_CONFIG pointing at a missing file fails rather than using another database."""
    monkeypatch.setenv("KEYQ_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError) as info:
        load_config()
    assert "missing.toml" in str(info.value)


# --- config.example.toml ------------------------------------------------------------------------


def _example() -> Path:
    if not EXAMPLE.is_file():
        pytest.skip(f"{EXAMPLE} does not exist yet (SPEC §11 asks for it)")
    return EXAMPLE


def test_config__example_file_parses_to_the_defaults() -> None:
    """config.example.toml is valid and every value in it is the built-in default."""
    path = _example()
    cfg = load_config(path)
    assert cfg == Config(database=path.parent / "keyq.db", source=path)


def test_config__example_file_documents_every_key() -> None:
    """config.example.toml mentions every key of SPEC §11 (set or commented out)."""
    text = _example().read_text()
    for key in (
        "database",
        "tasks",
        "durability",
        "max_payload_bytes",
        "[limits]",
        "concurrency",
        "burst_factor",
        "[queues.",
        "concurrency_limit",
        "[retention]",
        "completed",
        "failed",
        "[log]",
        "format",
        "level",
    ):
        assert key in text, key
