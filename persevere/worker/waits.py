"""Durable waits inside a flow: ``sleep``, ``pause_flow_run`` and ``suspend_flow_run``.

Each is a call at a position of the flow run, journaled like a task call
(see ``journal.pauses``), so that replay finds it again:

- ``sleep(seconds)`` journals its wake-up time before it sleeps. A process
  killed during the sleep is resumed and sleeps only what is left. Longer
  than ``PERSEVERE_SUSPEND_AFTER_SECONDS`` (60 s) in a run a worker
  executes, it suspends the run instead: the worker's slot is free, and a
  scheduler makes the run Scheduled again at the wake-up time.
- ``pause_flow_run`` makes the run Paused and waits in its process for an
  answer (``persevere runs resume/approve/reject``); ``suspend_flow_run``
  makes it Suspended and lets the process go. Either way the flow goes on at
  the line after the call, with the typed input it was given, and the task
  runs before it replayed.

:func:`housekeeping` is what a scheduler does for them each round: wake
Suspended runs whose time has come, and end pauses that timed out with
nobody waiting for them.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

from .. import clock
from ..context import FlowRunContext, flow_run_context, task_run_context
from ..exceptions import (
    LeaseLost,
    PauseRejected,
    PauseTimedOut,
    RunEnded,
    Suspend,
    VersionConflict,
)
from ..journal import Journal, TaskRun, TaskStart
from ..statemachine import FINAL_TYPES, StateType
from .logs import get_run_logger
from .recovery import is_abandoned
from .task_runs import check_recorded

#: How often a process waiting at a pause looks for its answer (real seconds).
POLL_SECONDS = 0.2
TIMEOUT_ACTIONS = ("fail", "cancel")


def sleep(seconds: float) -> None:
    """Sleep durably: the wake-up time is journaled, and a resumed run sleeps only the rest.

    In a flow's body only; elsewhere (outside a flow, inside a task) it is a
    plain sleep. Longer than ``PERSEVERE_SUSPEND_AFTER_SECONDS`` in a run a
    worker executes, it suspends the run until the wake-up time.
    """
    ctx = flow_run_context.get()
    if ctx is None or task_run_context.get() is not None:
        clock.sleep(seconds)
        return
    if seconds < 0:
        raise ValueError(f"sleep of {seconds} s: give 0 or more seconds")
    journal = ctx.journal
    position, dynamic_key = ctx.allocate("sleep")
    recorded = ctx.recorded.get(position)
    if recorded is not None:
        check_recorded(ctx, position, recorded, "sleep", "sleep")
        if recorded.state_type is StateType.COMPLETED:
            ctx.replayed += 1
            return
        wake = recorded.next_attempt_ms or clock.now_ms()
        start = journal.restart_task_run(recorded, "the sleep goes on after the run resumed")
    else:
        wake = clock.now_ms() + round(seconds * 1000)
        start = journal.start_task_run(ctx.run.id, position, "sleep", dynamic_key, "sleep")
    message = f"sleeping until {_iso(wake)}"
    journal.pauses.begin_wait(start, wake, message)
    left = (wake - clock.now_ms()) / 1000
    if left > journal.settings.suspend_after_seconds and _may_suspend(ctx):
        ctx.drain(wait=True)
        ctx.run = journal.pauses.pause(ctx.run, True, message, wake_ms=wake, sleeping=start)
        get_run_logger("persevere.waits").info(f"Flow run suspended: {message}")
        raise Suspend(message)
    clock.sleep(left)
    journal.finish_task_run(start, StateType.COMPLETED, "Completed", f"slept until {_iso(wake)}")
    ctx.executed += 1


def _may_suspend(ctx: FlowRunContext) -> bool:
    """A run may let go of its process if a worker runs it (one will resume it) and it
    is not a subflow (its parent's process would have to go too)."""
    return ctx.run.worker_name is not None and ctx.run.parent_flow_run_id is None


def pause_flow_run(
    timeout: float | None = 3600,
    key: str | None = None,
    wait_for_input: Any = None,
    on_timeout: str = "fail",
) -> Any:
    """Pause the flow run here, its process waiting, until it is resumed; returns the input.

    ``wait_for_input``: a type (dataclass, pydantic model, or plain type such as
    ``bool``) the resume's input must fit; the call returns the input as that
    type (None without one). ``timeout`` (seconds, None: wait for ever): then
    the run ends Failed, or Cancelled with ``on_timeout="cancel"``. ``key``
    names the pause (in ``runs show``). A rejection
    (``persevere runs reject``) of a pause without a yes/no input raises
    :class:`PauseRejected` here.
    """
    return _pause(False, timeout, key, wait_for_input, on_timeout)


def suspend_flow_run(
    timeout: float | None = 3600,
    key: str | None = None,
    wait_for_input: Any = None,
    on_timeout: str = "fail",
) -> Any:
    """Suspend the flow run here: journaled Suspended, its process (and worker slot) let go.

    A resume executes the run again: the task runs before this line are
    replayed, and this call returns the input. Arguments as for
    :func:`pause_flow_run`. In a top-level flow run only.
    """
    return _pause(True, timeout, key, wait_for_input, on_timeout)


def _pause(
    suspend: bool, timeout: float | None, key: str | None, input_type: Any, on_timeout: str
) -> Any:
    what = "suspend_flow_run" if suspend else "pause_flow_run"
    ctx = flow_run_context.get()
    if ctx is None or task_run_context.get() is not None:
        raise RuntimeError(f"{what}() pauses a flow run: call it in a flow's body, not elsewhere")
    if suspend and ctx.run.parent_flow_run_id is not None:
        raise RuntimeError(
            "suspend_flow_run() lets the whole process go: call it in a top-level flow run; "
            "in a subflow, use pause_flow_run()"
        )
    if on_timeout not in TIMEOUT_ACTIONS:
        raise ValueError(f"on_timeout={on_timeout!r}: give 'fail' or 'cancel'")
    if timeout is not None and timeout <= 0:
        raise ValueError(f"timeout={timeout}: give seconds greater than zero, or None")
    key = key or "pause"
    journal = ctx.journal
    position, dynamic_key = ctx.allocate(key)
    recorded = ctx.recorded.get(position)
    deadline = None if timeout is None else clock.now_ms() + round(timeout * 1000)
    if recorded is not None:
        check_recorded(ctx, position, recorded, key, "pause")
        answered = _answer_of(ctx, recorded, input_type)
        if answered is not _OPEN:
            ctx.replayed += 1
            return answered
        deadline = recorded.next_attempt_ms if timeout is not None else None  # kept on resume
        if deadline is not None and deadline <= clock.now_ms():
            deadline = clock.now_ms() + round((timeout or 0) * 1000)  # a new chance
        start = journal.restart_task_run(recorded, "paused again after the run resumed")
    else:
        start = journal.start_task_run(ctx.run.id, position, key, dynamic_key, "pause")
    schema = _schema_of(input_type)
    message = _pause_message(key, schema is not None, deadline)
    journal.pauses.begin_wait(start, deadline, message)
    if suspend:
        ctx.drain(wait=True)  # nothing of the run may go on once its process lets go
    ctx.run = journal.pauses.pause(ctx.run, suspend, message, deadline, on_timeout, schema)
    logger = get_run_logger("persevere.waits")
    logger.info(f"Flow run {'suspended' if suspend else 'paused'}: {message}")
    if suspend:
        raise Suspend(message)
    return _wait_for_answer(ctx, start, input_type, on_timeout)


_OPEN = object()


def _answer_of(ctx: FlowRunContext, recorded: TaskRun, input_type: Any) -> Any:
    """What a recorded pause call returns on replay, or ``_OPEN`` if it must pause again."""
    if recorded.state_type is StateType.COMPLETED:
        return typed(input_type, ctx.journal.load_task_result(recorded))
    if recorded.state_type is StateType.FAILED and recorded.state_name == "Failed":
        raise PauseRejected(ctx.run.id, recorded.task_key, recorded.state_message)
    return _OPEN  # timed out before, or its process died while it waited


def _wait_for_answer(
    ctx: FlowRunContext, start: TaskStart, input_type: Any, on_timeout: str
) -> Any:
    """Wait in this process until the pause is answered, times out, or the run is ended."""
    journal, held = ctx.journal, ctx.run
    while True:
        time.sleep(POLL_SECONDS)  # polling; the deadline is by the run's clock
        now = journal.get_flow_run(held.id)
        if now.state_type in FINAL_TYPES:
            ctx.run = now
            raise RunEnded(now.state_message)
        if now.lease_token != held.lease_token:
            raise LeaseLost(held.id)  # resumed elsewhere: that process goes on
        if now.state_type is StateType.RUNNING:
            ctx.run = now
            pause = next(t for t in journal.task_runs(held.id) if t.id == start.id)
            return _answer_of(ctx, pause, input_type)
        if now.pause_deadline_ms is not None and clock.now_ms() >= now.pause_deadline_ms:
            message = "the pause timed out"
            try:
                journal.finish_task_run(start, StateType.FAILED, "TimedOut", message)
            except VersionConflict:
                continue  # answered at the last moment: the answer wins
            ctx.run = now
            raise PauseTimedOut((now.pause_on_timeout or on_timeout) == "cancel", message)


def typed(input_type: Any, value: Any) -> Any:
    """The JSON input as the type the pause waits for (validated by pydantic)."""
    if input_type is None:
        return value
    from pydantic import TypeAdapter  # deferred: only pauses with typed input pay for it

    return TypeAdapter(input_type).validate_python(value)


def _schema_of(input_type: Any) -> str | None:
    """The JSON schema of the input type, stored with the pause so a resume can check it."""
    if input_type is None:
        return None
    from pydantic import TypeAdapter

    return json.dumps(TypeAdapter(input_type).json_schema(), sort_keys=True)


def _pause_message(key: str, wants_input: bool, deadline: int | None) -> str:
    what = f"paused at {key!r}"
    if wants_input:
        what += ", waiting for input"
    return what + (f" until {_iso(deadline)}" if deadline is not None else "")


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).isoformat(timespec="seconds")


# -- for schedulers --------------------------------------------------------------------


def housekeeping(journal: Journal) -> list[str]:
    """Wake Suspended runs whose time has come; end pauses that timed out with nobody
    waiting for them (a process that waits at its pause ends its run itself)."""
    done, now = [], clock.now_ms()
    for run in journal.pauses.due_wakeups(now):
        try:
            journal.pauses.wake(run, "woken: its sleep is over")
        except VersionConflict:
            continue
        done.append(f"run {run.id} ({run.flow_name}) woken: its sleep is over")
    for run in journal.pauses.past_deadline(now):
        waiting = run.state_name == "Paused" and run.lease_token is not None
        if waiting and not is_abandoned(run, now):
            continue
        try:
            ended = journal.pauses.expire(run, "its pause timed out")
        except VersionConflict:
            continue
        done.append(f"run {run.id} ({run.flow_name}) {ended.state_name}: its pause timed out")
    return done


__all__ = ["housekeeping", "pause_flow_run", "sleep", "suspend_flow_run", "typed"]
