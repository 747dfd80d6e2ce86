"""The state graph, by table: every legal move, and illegal ones."""

from __future__ import annotations

import itertools

import pytest

from persevere.exceptions import InvalidTransition
from persevere.statemachine import NAMED_STATES, StateType, check_move, fold, path_to_pending
from persevere.statemachine.graph import legal_moves

S, P, R, PA = StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.PAUSED
C, F, CR, CA = StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED

# The table of ARCHITECTURE.md, written out independently of the declaration.
LEGAL = {
    (S, S), (S, P), (S, CA),
    (P, R), (P, S), (P, CA), (P, CR),
    (R, C), (R, F), (R, CR), (R, CA), (R, PA), (R, S), (R, R),
    (PA, S), (PA, R), (PA, CA), (PA, F), (PA, CR),
    (F, S), (CR, S), (CA, S),
}  # fmt: skip

# A representative named state for each type when moving into it.
NAME = {S: "Scheduled", P: "Pending", R: "Running", PA: "Paused", C: "Completed",
        F: "Failed", CR: "Crashed", CA: "Cancelled"}  # fmt: skip
SELF_NAME = {S: "Late", R: "Cancelling"}


def name_for(source: StateType, target: StateType) -> str:
    return SELF_NAME.get(target, NAME[target]) if source is target else NAME[target]


def test_compiled_graph_is_exactly_the_table() -> None:
    assert set(legal_moves()) == LEGAL


@pytest.mark.parametrize(("source", "target"), sorted(LEGAL))
def test_legal_move_is_accepted(source: StateType, target: StateType) -> None:
    check_move(source, target, name_for(source, target))


ILLEGAL = sorted(set(itertools.product(StateType, StateType)) - LEGAL)


@pytest.mark.parametrize(("source", "target"), ILLEGAL)
def test_illegal_move_is_refused_naming_both_states(source: StateType, target: StateType) -> None:
    with pytest.raises(InvalidTransition) as info:
        check_move(source, target, name_for(source, target), run_id="r1")
    assert source.value in str(info.value)
    assert target.value in str(info.value)
    assert "r1" in str(info.value)


@pytest.mark.parametrize("target", list(StateType))
def test_completed_is_absorbing(target: StateType) -> None:
    with pytest.raises(InvalidTransition):
        check_move(C, target, name_for(C, target))


@pytest.mark.parametrize(
    ("source", "target", "name"),
    [
        (S, S, "Scheduled"),  # a self-move must be Late
        (R, R, "Retrying"),  # a self-move must be Cancelling
        (R, C, "Failed"),  # a name of another type
        (R, F, "Nope"),  # an unknown name
    ],
)
def test_names_must_fit_the_move(source: StateType, target: StateType, name: str) -> None:
    with pytest.raises(InvalidTransition):
        check_move(source, target, name)


@pytest.mark.parametrize("name", sorted(NAMED_STATES))
def test_every_named_state_belongs_to_its_type(name: str) -> None:
    target = NAMED_STATES[name]
    sources = [s for s, t in LEGAL if t is target and s is not t]
    if target in (S, P):
        check_move(None, target, name)  # a run may be created in it
    else:
        with pytest.raises(InvalidTransition):
            check_move(None, target, name)
    if sources:
        check_move(sources[0], target, name)


def test_fold_replays_a_history() -> None:
    history = [(P, "Pending"), (R, "Running"), (CR, "Crashed"), (S, "Scheduled"),
               (P, "Pending"), (R, "Running"), (C, "Completed")]  # fmt: skip
    assert fold(history) == (C, "Completed", 7)


def test_fold_stops_at_the_first_illegal_move() -> None:
    with pytest.raises(InvalidTransition):
        fold([(P, "Pending"), (C, "Completed")])
    with pytest.raises(ValueError):
        fold([])


@pytest.mark.parametrize("source", [S, P, PA, F, CR, CA])
def test_path_to_pending_is_legal_and_ends_pending(source: StateType) -> None:
    state = source
    for target, name in path_to_pending(source):
        check_move(state, target, name)
        state = target
    assert state is P


@pytest.mark.parametrize("source", [R, C])
def test_no_path_to_pending_from_running_or_completed(source: StateType) -> None:
    with pytest.raises(InvalidTransition):
        path_to_pending(source)
