"""Shared fixtures: a fake clock, a fresh registry, and a config on a temporary database."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from keyq.client import AsyncClient
from keyq.clock import FakeClock
from keyq.config import Config, LimitsConfig, LogConfig
from keyq.logs import configure_logging
from keyq.registry import Registry, use_default_producer

configure_logging(LogConfig(format="json", level="warning"), stream=sys.stderr)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry() -> Registry:
    """A registry of its own per test, so task ids never clash between tests."""
    return Registry()


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "keyq.db"


@pytest.fixture
def config(database: Path) -> Config:
    return Config(
        database=database,
        limits=LimitsConfig(concurrency=20, burst_factor=2.0),
        shutdown_grace_s=10.0,
        log=LogConfig(format="json", level="warning"),
    )


@pytest.fixture(autouse=True)
def _no_leaked_producer() -> Iterator[None]:
    """A test that triggers outside a daemon must not leave a default client behind."""
    yield
    use_default_producer(AsyncClient)  # forgets the client a test made


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of the test's own, to fill up for real; unmounted afterwards."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(
            "NOT RUN: this test fills a disk and cannot mount a tmpfs here "
            f"({mounted.stderr.strip() or mounted.returncode}); run it as root"
        )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
