"""Timeline lines are formatted by hand for speed: they must be exactly the JSON of the event."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from keyq.core.model import ErrorInfo
from keyq.core.states import RunState
from keyq.store.codec import event_line

REASONS = st.sampled_from(["triggered", "started", "wait_done", "token_timeout", "interrupted"])
STATES = st.sampled_from(list(RunState))
TIMES = st.floats(min_value=0, max_value=4e9, allow_nan=False, allow_infinity=False)


@given(
    at=TIMES,
    from_=st.none() | STATES,
    to=STATES,
    reason=REASONS,
    attempt=st.integers(0, 1000),
    error=st.none() | st.builds(ErrorInfo, st.text(), st.text()),
)
def test_event_line__is_the_json_of_the_event(
    at: float,
    from_: RunState | None,
    to: RunState,
    reason: str,
    attempt: int,
    error: ErrorInfo | None,
) -> None:
    line = event_line(at, from_, to, reason, attempt, error)
    assert line.endswith("\n")
    assert "\n" not in line[:-1]  # one line, whatever the error message holds
    expected = {
        "at": at,
        "from": from_.value if from_ is not None else None,
        "to": to.value,
        "reason": reason,
        "attempt": attempt,
    }
    if error is not None:
        expected["error"] = {"type": error.type, "message": error.message}
    assert json.loads(line) == expected
