"""Access for operators: `[security] group` shares the daemon's files with one group, and an
account that may only read the database can still inspect it.

The other accounts are real: a forked child changes its uid and groups (root is needed for
that; elsewhere those tests are skipped, and say so in the summary).
"""

from __future__ import annotations

import grp
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from support import deadline

import keyq
from keyq.config import Config, SecurityConfig
from keyq.registry import Registry
from keyq.store.instance import lock_path, socket_path

pytestmark = pytest.mark.anyio

NOBODY = 65534
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="NOT RUN: acting as another account needs root"
)


def files_of(database: Path) -> list[Path]:
    return [
        database,
        Path(f"{database}-wal"),
        Path(f"{database}-shm"),
        lock_path(database),
        socket_path(database),
    ]


def mode_and_group(path: Path) -> tuple[int, int]:
    info = path.stat()
    return stat.S_IMODE(info.st_mode), info.st_gid


@pytest.fixture
def echo(registry: Registry) -> None:
    @registry.task(id="echo")
    async def echo(payload: Any, ctx: keyq.Context) -> Any:
        return payload


async def test_access__without_a_group_every_file_is_the_owners_alone(
    config: Config, registry: Registry, echo: None
) -> None:
    """The database, its WAL and shared memory, the lock file and the socket: 0600."""
    async with keyq.Daemon(config, registry=registry):
        modes = {p.name: mode_and_group(p)[0] for p in files_of(config.database)}

    assert modes == dict.fromkeys(modes, 0o600)


async def test_access__a_group_gets_read_and_write_on_every_file(
    config: Config, registry: Registry, echo: None
) -> None:
    """With `[security] group`, every file the daemon makes is 0660 and that group's, also
    files made 0600 by an earlier start (the group is granted at each start)."""
    async with keyq.Daemon(config, registry=registry):
        pass
    group = grp.getgrgid(os.getegid())
    shared = replace(config, security=SecurityConfig(group=group.gr_name))
    async with keyq.Daemon(shared, registry=registry):
        found = {p.name: mode_and_group(p) for p in files_of(config.database)}

    assert found == dict.fromkeys(found, (0o660, group.gr_gid))


async def test_access__an_unknown_group_stops_the_start_naming_it(
    config: Config, registry: Registry, echo: None
) -> None:
    """A group that does not exist is a configuration error, named, before anything is made."""
    shared = replace(config, security=SecurityConfig(group="keyq-no-such-group"))
    with pytest.raises(keyq.ConfigError, match=r"security\.group: no group 'keyq-no-such-group'"):
        async with keyq.Daemon(shared, registry=registry):
            pass
    assert not config.database.exists()


# --- another account ---------------------------------------------------------------------------


@pytest.fixture
def ops_group() -> grp.struct_group:
    for name in ("users", "nogroup", "nobody"):
        try:
            return grp.getgrnam(name)
        except KeyError:
            continue
    pytest.skip("NOT RUN: no group to share the files with")


@pytest.fixture
def shared_dir(ops_group: grp.struct_group) -> Iterator[Path]:
    """A directory the group may enter (a test's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="keyq-ops-", dir="/tmp"))
    os.chown(path, -1, ops_group.gr_gid)
    path.chmod(0o750)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def as_account(uid: int, gid: int, work: Callable[[], Any]) -> Any:
    """Run ``work`` in a forked child that really is account ``uid`` in group ``gid`` only;
    its result (JSON), or the error it raised, as a string."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        os.close(read)
        try:
            os.setgroups([gid])
            os.setgid(gid)
            os.setuid(uid)
            out: Any = {"ok": work()}
        except BaseException as exc:
            out = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(write, json.dumps(out).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        answer = json.loads(pipe.read())
    os.waitpid(pid, 0)
    return answer


def wal_left(database: Path) -> bool:
    return Path(f"{database}-wal").exists()


def inspect(config: Config) -> Callable[[], Any]:
    def work() -> Any:
        with keyq.Client(config) as client:
            runs = client.list_runs()
            return {
                "statuses": [r["status"] for r in runs],
                "shown": client.get_run(runs[0]["id"])["status"],
                "running": client.stats()["capacity"]["running"],
            }

    return work


@needs_root
async def test_access__an_operator_in_the_group_inspects_a_running_daemon(
    config: Config, registry: Registry, echo: None, ops_group: grp.struct_group, shared_dir: Path
) -> None:
    """An account in the configured group (not the daemon's) runs `runs list`, `runs show`
    and `stats` against a running daemon's database."""
    config = replace(
        config.with_database(shared_dir / "keyq.db"),
        security=SecurityConfig(group=ops_group.gr_name),
    )
    async with keyq.Daemon(config, registry=registry) as daemon:
        handle = await registry.get("echo").trigger({"n": 1})
        async with deadline():
            await daemon.result(handle.id)
        seen = await anyio.to_thread.run_sync(as_account, NOBODY, ops_group.gr_gid, inspect(config))

    assert seen == {"ok": {"statuses": ["completed"], "shown": "completed", "running": 0}}


@needs_root
@pytest.mark.parametrize("daemon_up", [True, False])
async def test_access__an_account_that_may_only_read_still_inspects(
    config: Config,
    registry: Registry,
    echo: None,
    ops_group: grp.struct_group,
    shared_dir: Path,
    daemon_up: bool,
) -> None:
    """With the files only group-readable (0640), the inspector opens the database read-only:
    with the daemon up (through its WAL), and with it stopped (no WAL left to read)."""
    config = replace(
        config.with_database(shared_dir / "keyq.db"),
        security=SecurityConfig(group=ops_group.gr_name),
    )
    async with keyq.Daemon(config, registry=registry) as daemon:
        handle = await registry.get("echo").trigger({"n": 1})
        async with deadline():
            await daemon.result(handle.id)
        if daemon_up:
            for path in files_of(config.database)[:3]:
                path.chmod(0o640)
            seen = await anyio.to_thread.run_sync(
                as_account, NOBODY, ops_group.gr_gid, inspect(config)
            )
    if not daemon_up:
        assert not wal_left(config.database)  # the daemon's last close folded it in
        config.database.chmod(0o640)
        seen = as_account(NOBODY, ops_group.gr_gid, inspect(config))

    assert seen == {"ok": {"statuses": ["completed"], "shown": "completed", "running": 0}}
