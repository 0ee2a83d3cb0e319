"""The bounds every value meets where it enters keyq, before anything is stored.

Each door (``Client``, the CLI, the control socket, task definitions, the
config) checks its values here, once, and turns a :class:`BoundError` into
its own error (``TriggerError``, ``DefinitionError``, ``ConfigError``,
``WaitError``) without changing the message, which names the field and the
bound. Whatever passes can be stored by SQLite and read back and shown by
every command: integers fit in 64 bits, times are finite and before the
year 10000, text is valid UTF-8. Pure.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Iterable

from keyq.errors import DefinitionError

MAX_INT64 = 2**63 - 1
MAX_ATTEMPTS = 1000
MAX_LIMIT = 1_000_000  # any concurrency limit, total limit or environment concurrency
MIN_INSTANT = 0.0  # 1970-01-01T00:00:00Z
MAX_INSTANT = 253_402_300_799.0  # 9999-12-31T23:59:59Z: the last second a datetime can show
MAX_DURATION_S = 100 * 365.25 * 86400.0  # 100 years: delays, waits, timeouts, backoff
MAX_KEY_LENGTH = 256  # concurrency keys and idempotency keys
MAX_TAGS, MAX_TAG_LENGTH = 20, 128
RUN_ID = re.compile(r"run_[0-9a-hjkmnp-tv-z]{26}")
TOKEN_ID = re.compile(r"tok_[0-9a-hjkmnp-tv-z]{26}")


class BoundError(ValueError):
    """A value is outside what keyq accepts; the message names the field and the bound."""


# --- definitions: task ids, queue names, limits (DefinitionError) ------------------------------

NAME_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def check_name(kind: str, name: object) -> str:
    """Return ``name`` if it is a valid task id or queue name, else raise DefinitionError."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise DefinitionError(
            f"invalid {kind} {name!r}: use 1-128 characters of A-Z a-z 0-9 . _ : -"
        )
    return name


def check_limit(field_name: str, value: object) -> int | None:
    """A concurrency limit: None (no limit) or an integer from 0 to ``MAX_LIMIT``."""
    if value is None:
        return None
    try:
        return integer(field_name, value, 0, MAX_LIMIT)
    except BoundError as exc:
        raise DefinitionError(f"{exc} (or None for no limit)") from None


def integer(field: str, value: object, low: int, high: int) -> int:
    """``value`` if it is an int (not a bool) in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BoundError(f"{field} must be an integer from {low} to {high}, got {value!r}")
    if not low <= value <= high:
        raise BoundError(f"{field} must be from {low} to {high}, got {_short(value)}")
    return value


def number(field: str, value: object, low: float, high: float) -> float:
    """``value`` as a float if it is a finite int or float in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BoundError(f"{field} must be a number, got {value!r}")
    if isinstance(value, int) and abs(value) > MAX_INT64:
        raise BoundError(f"{field} must be from {low:g} to {high:g}, got {_short(value)}")
    as_float = float(value)
    if not math.isfinite(as_float) or not low <= as_float <= high:
        raise BoundError(f"{field} must be a finite number from {low:g} to {high:g}, got {value!r}")
    return as_float


def instant(field: str, value: object) -> float:
    """An epoch time between 1970 and the end of the year 9999."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BoundError(f"{field} must be a time in epoch seconds, got {value!r}")
    # An int is compared exactly (math.isfinite would overflow on 10**400).
    if (isinstance(value, float) and not math.isfinite(value)) or not (
        MIN_INSTANT <= value <= MAX_INSTANT
    ):
        raise BoundError(
            f"{field} must be a time from 1970 to the end of 9999 "
            f"(0 to {MAX_INSTANT:.0f} epoch seconds), got {_short(value)}"
        )
    return float(value)


def duration(field: str, seconds: float) -> float:
    """``seconds`` if finite, ``>= 0`` and at most 100 years."""
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_DURATION_S:
        raise BoundError(
            f"{field} must be a duration from 0 to 100 years "
            f"({MAX_DURATION_S:.0f} s), got {_short(seconds)} s"
        )
    return seconds


def later(field: str, now: float, seconds: float) -> float:
    """The instant ``seconds`` after ``now``, if the duration and the instant are in bounds."""
    at = now + duration(field, seconds)
    if at > MAX_INSTANT:
        raise BoundError(f"{field} of {seconds:g} s would end after the year 9999")
    return at


def text(field: str, value: object, max_length: int) -> str:
    """``value`` if it is a string of 1 to ``max_length`` characters that SQLite can
    store as UTF-8 (no lone surrogates) and that prints as itself (no control
    characters, which could rewrite an operator's terminal)."""
    if not isinstance(value, str) or not 1 <= len(value) <= max_length:
        raise BoundError(
            f"{field} must be a string of 1-{max_length} characters, got {_short(value)}"
        )
    if not _printable(value):
        raise BoundError(
            f"{field} must be valid UTF-8 text without control characters, got {value!r}"
        )
    return value


def run_id(field: str, value: object) -> str:
    """A run id as keyq makes them: ``run_`` and 26 lower-case base32 characters."""
    if not isinstance(value, str) or not RUN_ID.fullmatch(value):
        raise BoundError(f"{field} must be a run id (run_ and 26 characters), got {_short(value)}")
    return value


def storable(value: str) -> bool:
    """True if SQLite can store ``value`` as UTF-8 (it holds no lone surrogate)."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(value: str) -> bool:
    if value.isascii():
        return value.isprintable()
    return storable(value) and not any(unicodedata.category(c) == "Cc" for c in value)


def _short(value: object) -> str:
    """``repr(value)``, cut short: a refused value may be a megabyte or a 10**4300 int."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 100:
        return f"an integer of {value.bit_length()} bits"
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


# --- JSON: payloads, results, step results, token outputs ---------------------------------------

MAX_JSON_DEPTH = 100  # nesting; Python's own json.loads gives up near 1,000
_encode = json.JSONEncoder(allow_nan=False, ensure_ascii=False, separators=(",", ":")).encode


class NotJSONError(BoundError):
    """A value is not JSON keyq can store: the message says why (without naming the field)."""


class TooLargeError(BoundError):
    """A value's JSON is over the byte limit; ``size`` is how big it is."""

    def __init__(self, size: int, max_bytes: int) -> None:
        super().__init__(f"{size} bytes, over max_payload_bytes = {max_bytes}")
        self.size = size


def json_text(value: object, max_bytes: int) -> str:
    """``value`` as compact JSON text that every keyq process can read back:
    NotJSONError if it is not JSON (NaN, a set, a lone surrogate) or nests deeper than
    MAX_JSON_DEPTH; TooLargeError if it is over ``max_bytes`` as UTF-8."""
    try:
        text = _encode(value)
    except (TypeError, ValueError) as exc:
        raise NotJSONError(str(exc)) from None
    except RecursionError:
        raise NotJSONError(f"it nests deeper than {MAX_JSON_DEPTH} levels") from None
    if not storable(text):
        raise NotJSONError("it holds a string that is not valid UTF-8 (a lone surrogate)")
    if _deeper_than(text, value, MAX_JSON_DEPTH):
        raise NotJSONError(f"it nests deeper than {MAX_JSON_DEPTH} levels")
    size = len(text) if text.isascii() else len(text.encode("utf-8"))
    if size > max_bytes:
        raise TooLargeError(size, max_bytes)
    return text


def _deeper_than(text: str, value: object, limit: int) -> bool:
    if text.count("[") + text.count("{") <= limit:
        return False  # the common case, counted at C speed
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[object] = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False
