"""Cancelling a flow run: journal the request, then stop the run's process tree.

A run that is not executing (Scheduled, Pending, Paused, waiting for a
retry) becomes Cancelled at once. A Running one becomes Cancelling, and then:

- if a live worker holds it, that worker sends SIGTERM to the run's process
  group, SIGKILL after the grace period, and the run ends Cancelled;
- else, if its process is on this host, the canceller does the same here
  (to the process's group if it leads one, else to the process alone);
- else (a run started by hand on another host), the run's own process sees
  the request when it next renews its lease (a third of the lease period)
  and stops itself.

A run's process that gets SIGTERM ends the run Cancelled and runs its
``on_cancellation`` hooks (see :mod:`.signals`); one that had to be killed
is journaled Cancelled by whoever killed it.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

from .. import clock
from ..exceptions import RunNotCancellable, VersionConflict
from ..journal import FlowRun, Journal
from ..statemachine import FINAL_TYPES, StateType
from .owners import process_start, this_process
from .recovery import refresh
from .supervisor import is_live


def _signal_tree(pid: int, signum: int) -> None:
    try:
        if os.getpgid(pid) == pid and pid != os.getpgid(0):
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _wait(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def cancel(
    journal: Journal,
    run_id: str,
    grace_seconds: float = 10.0,
    say: Callable[[str], None] = lambda line: None,
) -> FlowRun:
    """Cancel a top-level flow run; returns it as it is when this returns.

    Waits until the run has ended, except for a run whose process is on
    another host and no worker holds it (then it is left Cancelling).
    """
    run = refresh(journal, journal.resolve_flow_run(run_id))
    if run.parent_flow_run_id is not None:
        raise RunNotCancellable(
            run.id, f"run {run.id} is a subflow of run {run.parent_flow_run_id}; cancel that run"
        )
    me = this_process()
    for _ in range(3):  # the run may move while we ask
        try:
            run = journal.workers.request_cancel(run, f"cancel requested by {me.label()}")
            break
        except VersionConflict:
            run = refresh(journal, journal.get_flow_run(run.id))
    if run.state_type is not StateType.RUNNING:
        return run

    def ended() -> bool:
        return journal.get_flow_run(run.id).state_type in FINAL_TYPES

    worker = journal.workers.get(run.worker_name) if run.worker_name else None
    lease_ms = int(journal.settings.lease_seconds * 1000)
    if worker is not None and is_live(worker, clock.now_ms(), lease_ms):
        say(f"run {run.id} Cancelling: worker {worker.name} stops its processes")
        _wait(ended, grace_seconds + 15)
        return refresh(journal, journal.get_flow_run(run.id))
    owner = run.owner
    if owner is not None and owner.host == me.host:
        if process_start(owner.pid) == owner.started:
            say(f"run {run.id} Cancelling: stopping process {owner.pid} and its group")
            _signal_tree(owner.pid, signal.SIGTERM)
            if not _wait(lambda: ended() or process_start(owner.pid) is None, grace_seconds):
                _signal_tree(owner.pid, signal.SIGKILL)
                _wait(lambda: process_start(owner.pid) is None, 5)
        return _settle(journal, run.id)
    say(
        f"run {run.id} Cancelling: its process on {owner.host if owner else '?'} stops when "
        "it next renews its lease"
    )
    return run


def _settle(journal: Journal, run_id: str) -> FlowRun:
    """The run once its process is gone: Cancelled, by its process or by us."""
    run = refresh(journal, journal.get_flow_run(run_id))
    if run.state_type is StateType.RUNNING and run.state_name == "Cancelling":
        try:
            run = journal.workers.finish_cancel(run, "its process was stopped")
        except VersionConflict:
            run = journal.get_flow_run(run_id)
    return run
