"""Cancelling a flow run: journal the request, then stop the run's process tree.

A run that is not executing (Scheduled, Pending, Paused, waiting for a
retry) becomes Cancelled at once. A Running one becomes Cancelling, and then:

- if a live worker holds it, that worker sends SIGTERM to the run's process
  group, SIGKILL after the grace period, and the run ends Cancelled;
- else, if its process is on this host, the canceller does the same here,
  to the process and every process it started (not to its process group,
  which it shares with whatever started it);
- else (a run started by hand on another host), the run's own process sees
  the request when it next renews its lease (a third of the lease period)
  and stops itself.

A run's process that gets SIGTERM ends the run Cancelled and runs its
``on_cancellation`` hooks (see :mod:`.signals`); one that had to be killed
is journaled Cancelled by whoever killed it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable

from .. import clock
from ..exceptions import RunNotCancellable, VersionConflict
from ..journal import FlowRun, Journal
from ..statemachine import FINAL_TYPES, Owner, StateType
from .owners import process_start, this_process
from .recovery import refresh
from .supervisor import is_live


def _descendants(pid: int) -> list[int]:
    """The processes started (directly or not) by ``pid``, from ``/proc`` (Linux)."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as children:
                    kids = [int(k) for k in children.read().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def _signal_tree(owner: Owner, signum: int) -> None:
    """Signal a run's process and every process it started (shell commands of its tasks).

    Its process group is left alone: a process started by hand shares its
    group with whatever started it (a shell pipeline, a service manager).
    Nothing is signalled unless the pid still belongs to the process that
    owned the run (a pid reused meanwhile is another program).
    """
    tree = [(p, process_start(p)) for p in _descendants(owner.pid)]
    if process_start(owner.pid) != owner.started:
        return
    for pid, started in [(owner.pid, owner.started), *tree]:
        if started is not None and process_start(pid) == started:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)


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
    waiting = run  # a process may be waiting in-process for this run's retry
    for _ in range(3):  # the run may move while we ask
        try:
            run = journal.workers.request_cancel(run, f"cancel requested by {me.label()}")
            break
        except VersionConflict:
            run = refresh(journal, journal.get_flow_run(run.id))
    if run.state_type is not StateType.RUNNING:
        if waiting.state_name == "AwaitingRetry" and run.state_type is StateType.CANCELLED:
            _wake_waiter(waiting, say)
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
            say(f"run {run.id} Cancelling: stopping process {owner.pid} and what it started")
            tree = [(pid, process_start(pid)) for pid in _descendants(owner.pid)]
            _signal_tree(owner, signal.SIGTERM)

            def gone() -> bool:
                return process_start(owner.pid) != owner.started

            if not _wait(lambda: ended() or gone(), grace_seconds):
                _signal_tree(owner, signal.SIGKILL)
                _wait(gone, 5)
            for pid, started in tree:  # left behind by a process that ended on SIGTERM
                if started is not None and process_start(pid) == started:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
        return _settle(journal, run.id)
    say(
        f"run {run.id} Cancelling: its process on {owner.host if owner else '?'} stops when "
        "it next renews its lease"
    )
    return run


def _wake_waiter(run: FlowRun, say: Callable[[str], None]) -> None:
    """Stop a process on this host that sleeps until the cancelled run's retry."""
    owner, me = run.owner, this_process()
    if owner is None or owner.host != me.host or owner.pid == me.pid:
        return
    if process_start(owner.pid) == owner.started:
        say(f"run {run.id} Cancelled: stopping process {owner.pid}, which waited for its retry")
        _signal_tree(owner, signal.SIGTERM)


def _settle(journal: Journal, run_id: str) -> FlowRun:
    """The run once its process is gone: Cancelled, by its process or by us."""
    run = refresh(journal, journal.get_flow_run(run_id))
    if run.state_type is StateType.RUNNING and run.state_name == "Cancelling":
        try:
            run = journal.workers.finish_cancel(run, "its process was stopped")
        except VersionConflict:
            run = journal.get_flow_run(run_id)
    return run
