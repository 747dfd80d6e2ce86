"""Finding runs whose owner died, and declaring them Crashed.

Called by anything that looks at runs (``persevere runs ls``, ``show``,
``resume``, a run key that is reused): a run is never left "Running" after
its process is gone. On this host a dead owner is seen at once (its pid is
gone or belongs to another process); an owner elsewhere is declared dead when
its lease expires.
"""

from __future__ import annotations

from .. import clock
from ..exceptions import VersionConflict
from ..journal import FlowRun, Journal
from ..statemachine import StateType, owner_is_dead
from .owners import process_start, this_process
from .signals import cancel_requested

ACTIVE = (StateType.PENDING, StateType.RUNNING)


def is_abandoned(run: FlowRun, now_ms: int | None = None) -> bool:
    """True if the run claims to be executing but its owner is gone."""
    owner = run.owner
    me = this_process()
    if owner is not None and owner.host == me.host and owner.pid == me.pid:
        return False
    observed = None
    if owner is not None and owner.host == me.host:
        observed = process_start(owner.pid)
    now = clock.now_ms() if now_ms is None else now_ms
    return owner_is_dead(owner, me.host, observed, run.lease_expires_ms, now)


def reap(journal: Journal, runs: list[FlowRun] | None = None) -> list[FlowRun]:
    """Declare Crashed (or Cancelled, if it was Cancelling) every active run whose owner
    is gone; returns those runs."""
    crashed = []
    for run in journal.active_flow_runs() if runs is None else runs:
        if run.state_type not in ACTIVE or not is_abandoned(run):
            continue
        owner = run.owner
        who = owner.label() if owner else "unknown"
        try:
            if cancel_requested(journal, run.id):  # what was asked for has happened
                crashed.append(journal.workers.finish_cancel(run, f"its process {who} is gone"))
            else:
                crashed.append(journal.mark_crashed(run, f"its process {who} is gone"))
        except VersionConflict:
            continue  # somebody else moved it first (maybe reaped it too)
    return crashed


def refresh(journal: Journal, run: FlowRun) -> FlowRun:
    """The run as it is now, declared Crashed first if its owner is gone."""
    reaped = reap(journal, [run])
    return reaped[0] if reaped else run
