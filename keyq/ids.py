"""Ids: ``run_`` or ``tok_`` (tokens) + 26 Crockford base32 characters, time-ordered.

Ids sort by creation time (to the millisecond) and carry 80 random bits, so
producers in different processes never need to coordinate.
"""

from __future__ import annotations

import os

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def new_run_id(now: float) -> str:
    """A new run id for a run created at ``now`` (epoch seconds)."""
    return _new_id("run_", now)


def new_token_id(now: float) -> str:
    """A new waitpoint token id for a token created at ``now``."""
    return _new_id("tok_", now)


def _new_id(prefix: str, now: float) -> str:
    value = (int(now * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        value, digit = divmod(value, 32)
        chars.append(_ALPHABET[digit])
    return prefix + "".join(reversed(chars))
