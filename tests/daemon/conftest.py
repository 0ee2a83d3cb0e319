"""Fixtures for the in-process daemon tier: real SQLite, FakeClock, real attempts."""

from __future__ import annotations

import pytest
from support import Overlap


@pytest.fixture
def overlap() -> Overlap:
    return Overlap()
