"""Running state hooks: once per transition, recorded so that a resume runs what was owed.

A hook is ``hook(obj, run, state)`` with the Flow or Task, its run record and
the new State. One that raises is logged and noted with the transition; it
never changes the run's state.
"""

from __future__ import annotations

from typing import Any

from ..journal import Journal, Op
from ..journal.hooks import EVENTS, HooksDue
from ..statemachine import State, StateType
from .logs import get_run_logger


def event_of(state_type: StateType) -> str:
    """The hook list a transition into ``state_type`` fires (``on_...``)."""
    return EVENTS.get(state_type.value, "")


def due(obj: Any, run_id: str, version: int, state_type: StateType, fence: str | None) -> list[Op]:
    """The write recording the hooks this transition owes; none if ``obj`` has none."""
    event = event_of(state_type)
    if not event or not getattr(obj, event, ()):
        return []
    return [HooksDue.due_op(run_id, version, event, fence)]


def run_hooks(
    journal: Journal, obj: Any, run: Any, state: State, run_id: str, version: int, event: str
) -> None:
    """Run ``obj``'s hooks for ``event`` and mark them done (also when it has none)."""
    error = None
    for hook in getattr(obj, event, ()):
        try:
            hook(obj, run, state)
        except Exception as exc:
            name = getattr(hook, "__qualname__", repr(hook))
            get_run_logger("persevere.hooks").error(
                f"{event} hook {name} of {obj.name!r} raised {type(exc).__name__}: {exc}"
            )
            error = error or f"{name}: {type(exc).__name__}: {exc}"
    journal.hooks.done(run_id, version, event, error)


def run_owed(
    journal: Journal, obj: Any, run: Any, state: State, owed: list[tuple[int, str]]
) -> None:
    """Run the hooks a run still owes from an earlier execution (found at a resume)."""
    for version, event in owed:
        run_hooks(journal, obj, run, state, state.run_id or "", version, event)
