"""The state graph: which moves between state types are legal.

The graph is declared once, as a ``transitions`` machine definition (states,
named triggers, sources and destinations). Building a ``transitions.Machine``
costs ~170 µs and importing the library ~18 ms, far too much per task run, so
the machine is built once per process, the first time a move is checked, and
compiled into a frozen ``{(source, target): trigger}`` dict. Checking a move
on the hot path is then one dict lookup.

Rejected: a ``Machine`` per run (the cost above), and a hand-written dict
beside the declaration (two sources of truth that drift apart).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

from ..exceptions import InvalidTransition
from .states import NAMED_STATES, StateType

S, P, R, PA = "SCHEDULED", "PENDING", "RUNNING", "PAUSED"
C, F, CR, CA = "COMPLETED", "FAILED", "CRASHED", "CANCELLED"

#: The machine definition in ``transitions``' own format.
DEFINITION: dict[str, Any] = {
    "states": [t.value for t in StateType],
    "transitions": [
        {"trigger": "mark_late", "source": S, "dest": S},
        {"trigger": "propose", "source": S, "dest": P},
        {"trigger": "start", "source": P, "dest": R},
        {"trigger": "wait_for_slot", "source": P, "dest": S},
        {"trigger": "complete", "source": R, "dest": C},
        {"trigger": "fail", "source": [R, PA], "dest": F},
        {"trigger": "crash", "source": [P, R, PA], "dest": CR},
        {"trigger": "cancel", "source": [S, P, R, PA], "dest": CA},
        {"trigger": "pause", "source": R, "dest": PA},
        {"trigger": "await_retry", "source": R, "dest": S},
        {"trigger": "request_cancel", "source": R, "dest": R},
        {"trigger": "resume", "source": [PA, F, CR, CA], "dest": S},
        {"trigger": "resume_in_process", "source": PA, "dest": R},
    ],
    "initial": S,
    "auto_transitions": False,
}

#: Moves from a type to itself are legal only as these named states.
SELF_MOVE_NAMES: Mapping[StateType, frozenset[str]] = {
    StateType.SCHEDULED: frozenset({"Late"}),
    StateType.RUNNING: frozenset({"Cancelling"}),
}

#: The types a run may be created in.
INITIAL_TYPES = frozenset({StateType.SCHEDULED, StateType.PENDING})


@functools.cache
def legal_moves() -> Mapping[tuple[StateType, StateType], str]:
    """The compiled graph: ``(source type, target type) -> trigger name``."""
    from transitions import Machine  # deferred: ~18 ms, paid once per process

    machine = Machine(model=None, **DEFINITION)
    moves: dict[tuple[StateType, StateType], str] = {}
    for trigger, event in machine.events.items():
        for source, transitions in event.transitions.items():
            for transition in transitions:
                moves[(StateType(source), StateType(transition.dest))] = trigger
    return moves


def check_move(
    source: StateType | None, target: StateType, name: str, run_id: str | None = None
) -> None:
    """Raise :class:`InvalidTransition` unless ``source -> target (name)`` is legal.

    ``source`` is None for a run being created.
    """
    if NAMED_STATES.get(name) is not target:
        raise InvalidTransition(_label(source), f"{target.value}({name})", run_id)
    if source is None:
        if target not in INITIAL_TYPES:
            raise InvalidTransition("(new run)", f"{target.value}({name})", run_id)
        return
    if (source, target) not in legal_moves():
        raise InvalidTransition(source.value, f"{target.value}({name})", run_id)
    if source is target and name not in SELF_MOVE_NAMES.get(target, ()):
        raise InvalidTransition(source.value, f"{target.value}({name})", run_id)


def _label(source: StateType | None) -> str:
    return "(new run)" if source is None else source.value


def fold(moves: Iterable[tuple[StateType, str]]) -> tuple[StateType, str, int]:
    """Replay a journaled history from nothing: the state and version it leads to.

    Raises :class:`InvalidTransition` at the first illegal move. An empty
    history is refused: a run is created by its first move.
    """
    current: StateType | None = None
    name = ""
    version = 0
    for target, target_name in moves:
        check_move(current, target, target_name)
        current, name, version = target, target_name, version + 1
    if current is None:
        raise ValueError("an empty history has no state")
    return current, name, version


def path_to_pending(source: StateType) -> list[tuple[StateType, str]]:
    """The moves that bring an unfinished run back to Pending to run it again.

    A COMPLETED run has no such path (it is absorbing): ``InvalidTransition``.
    A RUNNING run must first be declared Crashed by whoever found its owner
    dead; that move is not made here.
    """
    to_pending = [(StateType.SCHEDULED, "Scheduled"), (StateType.PENDING, "Pending")]
    if source is StateType.PENDING:
        return []
    if source is StateType.SCHEDULED:
        return to_pending[1:]
    if source in (StateType.PAUSED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED):
        return to_pending
    raise InvalidTransition(source.value, "PENDING(Pending)")
