"""The run state machine table: allowed edges pass, everything else is refused."""

from __future__ import annotations

import itertools

import pytest

from keyq.core.states import (
    ACTIVE,
    CANCELED,
    COMPLETED,
    DELAYED,
    FAILED,
    FINAL,
    HOLDS_SLOT,
    QUEUED,
    RUNNING,
    TRANSITIONS,
    WAITING,
    RunState,
    check_transition,
)
from keyq.errors import IllegalTransition, KeyqError

ALLOWED = [(src, dst) for src, dsts in TRANSITIONS.items() for dst in sorted(dsts)]
ILLEGAL = [
    (src, dst)
    for src, dst in itertools.product([None, *RunState], RunState)
    if dst not in TRANSITIONS[src]
]


def _label(src: RunState | None) -> str:
    return "new" if src is None else src.value


@pytest.mark.parametrize(("src", "dst"), ALLOWED, ids=[f"{_label(s)}->{d}" for s, d in ALLOWED])
def test_states__allowed_edge_passes(src: RunState | None, dst: RunState) -> None:
    """Every edge listed in the transition table is accepted."""
    check_transition("r-1", src, dst)


@pytest.mark.parametrize(("src", "dst"), ILLEGAL, ids=[f"{_label(s)}->{d}" for s, d in ILLEGAL])
def test_states__unlisted_edge_raises_naming_run_and_states(
    src: RunState | None, dst: RunState
) -> None:
    """Any edge absent from the table raises IllegalTransition naming the run and both states."""
    with pytest.raises(IllegalTransition) as info:
        check_transition("run-42", src, dst)
    message = str(info.value)
    assert "run-42" in message
    assert f"from {_label(src)} to {dst.value}" in message


@pytest.mark.parametrize("final", sorted(FINAL))
def test_states__final_state_goes_nowhere(final: RunState) -> None:
    """A completed, failed or canceled run can never change state again."""
    assert TRANSITIONS[final] == frozenset()
    for dst in RunState:
        with pytest.raises(IllegalTransition, match=f"from {final.value} to {dst.value}"):
            check_transition("r-9", final, dst)


def test_states__queued_cannot_wait() -> None:
    """A queued run holds no attempt, so it cannot start waiting."""
    with pytest.raises(IllegalTransition, match=r"run r-1: cannot go from queued to waiting"):
        check_transition("r-1", QUEUED, WAITING)


def test_states__new_run_cannot_start_running() -> None:
    """A run is born QUEUED or DELAYED, never directly RUNNING."""
    with pytest.raises(IllegalTransition, match=r"run r-2: cannot go from new to running"):
        check_transition("r-2", None, RUNNING)
    check_transition("r-2", None, QUEUED)
    check_transition("r-2", None, DELAYED)


def test_states__illegal_transition_is_a_keyq_error() -> None:
    """Callers catching KeyqError also catch illegal transitions."""
    assert issubclass(IllegalTransition, KeyqError)


def test_states__groups_partition_the_states() -> None:
    """Every state is either active or final, and only RUNNING holds a slot."""
    assert set(RunState) == ACTIVE | FINAL
    assert not ACTIVE & FINAL
    assert {COMPLETED, FAILED, CANCELED} == FINAL
    assert {RUNNING} == HOLDS_SLOT


def test_states__table_covers_every_state() -> None:
    """The table has a row for every state plus the not-yet-a-run row."""
    assert set(TRANSITIONS) == {None, *RunState}


def test_states__any_active_state_can_be_canceled() -> None:
    """Cancel is allowed from every non-final state, as the SPEC's diagram says."""
    for src in ACTIVE:
        check_transition("r-3", src, CANCELED)


def test_states__value_is_lower_case_name() -> None:
    """States print and serialise as their lower-case JSON names."""
    assert [str(s) for s in RunState] == [
        "delayed", "queued", "running", "waiting", "completed", "failed", "canceled",
    ]  # fmt: skip
