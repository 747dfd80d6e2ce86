"""Executing flow runs: new runs, runs found by run key, subflows, and resumes.

One code path: every flow run, whether started by a call, a run key, the CLI
or a resume, goes through :func:`execute`, which brings the run to Pending,
claims it (Running, with this process as owner and a fresh lease token),
loads what its earlier executions recorded, and calls the flow function with
the run context set. Task calls inside it consult that record (see
``task_runs``) and replay what completed.
"""

from __future__ import annotations

import inspect
from typing import Any

from .. import clock
from ..context import FlowRunContext, flow_run_context
from ..exceptions import (
    LeaseLost,
    PauseTimedOut,
    PersevereError,
    RunEnded,
    RunInterrupted,
    RunKeyConflict,
    RunNotResumable,
    RunSuspended,
    RunTimeout,
    SerializationError,
    Suspend,
    Terminated,
    VersionConflict,
)
from ..journal import FlowRun, Journal, StoredResult, new_id, open_journal
from ..statemachine import State, StateType
from . import entrypoints, hooks, parameters, recovery, signals
from .logs import capture_prints, get_run_logger
from .owners import this_process
from .task_runs import check_recorded, describe, load_recorded, retry_time, sleep_until
from .timeouts import call_with_timeout


def deliver(state: State, return_state: bool) -> Any:
    """What a call returns: the State if asked for, else the value (or the raise)."""
    if return_state:
        return state
    if state.type is StateType.COMPLETED:
        return state.data
    if isinstance(state.data, BaseException):
        raise state.data
    raise RuntimeError(f"run {state.run_id} ended {state.name}: {state.message}")


def run_flow(flow: Any, args: tuple[Any, ...], kwargs: dict[str, Any], return_state: bool) -> Any:
    """Run a flow called from Python (the body of ``Flow.__call__``)."""
    params = parameters.bind(flow.fn, args, kwargs)
    parent = flow_run_context.get()
    if parent is not None:
        return deliver(_run_subflow(parent, flow, params), return_state)
    journal = open_journal()
    run = _find_or_create(journal, flow, params)
    if run.state_type is StateType.COMPLETED:
        return deliver(completed_state(journal, run), return_state)
    with signals.terminate_gracefully() as graceful:
        try:
            state, _ = execute(journal, flow, run, params)
        except Terminated as exc:
            journal.flush()  # hooks marked done, last log lines
            graceful.die(exc)  # as SIGTERM would have, once the run is journaled
            raise
    return deliver(state, return_state)


def completed_state(journal: Journal, run: FlowRun) -> State:
    """The State of a completed run, with its stored result."""
    value = journal.load_result(run.result_id) if run.result_id else None
    return State(
        StateType.COMPLETED, run.state_name, run.state_message, run.ended_ms or 0, run.id, value
    )


def _find_or_create(journal: Journal, flow: Any, params: dict[str, Any]) -> FlowRun:
    stored, ops = parameters.encode(journal, params)
    if flow.run_key is not None:
        existing = journal.find_flow_run_by_key(flow.run_key)
        if existing is not None:
            _check_same_call(existing, flow, stored)
            return recovery.refresh(journal, existing)
    if ops:
        journal.flush(ops)
    run = journal.create_flow_run(
        flow_name=flow.name,
        entrypoint=entrypoints.entrypoint_of(flow.fn),
        parameters=stored,
        run_key=flow.run_key,
        owner=this_process(),
    )
    if run.parameters != stored or run.flow_name != flow.name:
        _check_same_call(run, flow, stored)  # lost a race for the run key
    return run


def _check_same_call(run: FlowRun, flow: Any, stored: str) -> None:
    if run.flow_name != flow.name:
        raise RunKeyConflict(flow.run_key, f"belongs to a run of flow {run.flow_name!r} ({run.id})")
    if run.parameters != stored:
        raise RunKeyConflict(
            flow.run_key,
            f"was started with other parameters ({run.parameters}); "
            "use a new run key for new parameters",
        )


def _prepare(journal: Journal, run: FlowRun, handoff: str | None = None) -> FlowRun:
    """Bring a run to Pending so that this process can claim it.

    ``handoff`` is the lease token under which a worker claimed the run for
    this process: a Pending run held under it is this process's to take.
    """
    if handoff is not None and run.state_type is StateType.PENDING and run.lease_token == handoff:
        return run
    run = recovery.refresh(journal, run)
    me = this_process()
    if run.state_type in (StateType.PENDING, StateType.RUNNING):
        owner = run.owner
        if run.state_type is StateType.PENDING and (owner is None or owner == me):
            return run
        who = owner.label() if owner else "another process"
        raise RunNotResumable(run.id, run.state_name, f"run {run.id} is executing in {who}")
    if run.state_type is StateType.COMPLETED:
        raise RunNotResumable(run.id, run.state_name, f"run {run.id} has completed already")
    if run.state_name == "AwaitingRetry":
        if run.owner is not None and run.owner != me and not recovery.is_abandoned(run):
            raise RunNotResumable(
                run.id,
                run.state_name,
                f"run {run.id} is waiting for its retry in {run.owner.label()}",
            )
        sleep_until(run.scheduled_ms or 0)  # only what is left of the delay
        return journal.reschedule_flow_run(run, f"retried by {me.label()}")
    return journal.reschedule_flow_run(run, f"resumed by {me.label()}")


def execute(
    journal: Journal,
    flow: Any,
    run: FlowRun,
    params: dict[str, Any],
    handoff: str | None = None,
    wait_for_retry: bool = True,
) -> tuple[State, FlowRun]:
    """Claim a run and execute its flow function; returns the final State and run.

    A failure the flow's retry policy allows ends this execution in
    AwaitingRetry; the run is claimed again after the delay and its
    completed task runs are replayed. With ``wait_for_retry=False`` (a
    worker's child process) the AwaitingRetry state is returned instead, and
    a worker claims the run again when its time comes. ``handoff``: see
    :func:`_prepare`.
    """
    while True:
        retrying = run.state_name == "AwaitingRetry" or (
            handoff is not None and _was_awaiting_retry(journal, run)
        )
        try:
            run = _prepare(journal, run, handoff)
        except Terminated as exc:  # while it waited for its retry (maybe cancelled)
            exc.run_id = run.id
            raise
        except VersionConflict:
            run = journal.get_flow_run(run.id)
            if run.state_type is StateType.CANCELLED:  # cancelled while it waited
                return _state_of(run), run
            if run.worker_name is not None:  # its retry came due and a worker took it
                raise RunNotResumable(
                    run.id, run.state_name, f"run {run.id} was taken by worker {run.worker_name}"
                ) from None
            raise
        name = "Retrying" if retrying else "Running"
        run = journal.claim_flow_run(run, this_process(), new_id(), name, flow.max_auto_resumes)
        handoff = None
        if run.parent_flow_run_id is None:
            signals.stop_when_cancelled(journal, run.id)
        recorded = {t.position: t for t in journal.task_runs(run.id)}
        ctx = FlowRunContext(journal, run, flow, recorded, log_prints=flow.log_prints)
        ctx.owed = journal.hooks.owed(run.id)
        if flow.log_prints:
            capture_prints()
        token = flow_run_context.set(ctx)
        try:
            logger = get_run_logger("persevere.flow_runs")
            what = "resumed" if run.run_count > 1 else "started"
            on_record = f": {len(recorded)} task runs on record" if recorded else ""
            logger.info(f"Flow run {flow.name!r} {what}{on_record}")
            _run_hooks_at_start(ctx, flow)
            state = _call(ctx, flow, params)
            summary = f"{ctx.executed} task runs executed"
            if ctx.replayed:
                summary += f", {ctx.replayed} replayed from the journal"
            if state is None:
                wait = max(0, (ctx.run.scheduled_ms or 0) - clock.now_ms()) / 1000
                logger.warning(
                    f"Flow run failed ({ctx.run.state_message}); retry "
                    f"{ctx.run.retries_used} of {flow.retry_policy.retries} in {wait:g} s "
                    f"({summary})"
                )
            else:
                logger.info(f"Finished in state {state.name} ({summary})")
        finally:
            flow_run_context.reset(token)
        if state is not None:
            return state, ctx.run
        run = ctx.run
        if not wait_for_retry:
            return _state_of(run), run


def _state_of(run: FlowRun) -> State:
    return State(run.state_type, run.state_name, run.state_message, run.ended_ms or 0, run.id)


def _was_awaiting_retry(journal: Journal, run: FlowRun) -> bool:
    """True if a worker claimed the run from AwaitingRetry (its state before Pending)."""
    history = journal.history(run.id)
    return len(history) >= 2 and history[-2].name == "AwaitingRetry"


def _run_hooks_at_start(ctx: FlowRunContext, flow: Any) -> None:
    """Hooks the run still owes from before (its crash, say), then its on_running hooks."""
    journal, run = ctx.journal, ctx.run
    for version, event in ctx.owed.pop(run.id, []):
        was = next((t for t in journal.history(run.id) if t.version == version), None)
        state = State(
            was.to_type if was else StateType.CRASHED,
            was.name if was else "Crashed",
            was.message if was else "",
            0,
            run.id,
        )
        hooks.run_hooks(journal, flow, run, state, run.id, version, event)
    if flow.on_running:
        journal.flush(hooks.due(flow, run.id, run.version, StateType.RUNNING, run.id))
        state = State(StateType.RUNNING, run.state_name, "", 0, run.id)
        hooks.run_hooks(journal, flow, run, state, run.id, run.version, "on_running")


def _end(
    ctx: FlowRunContext,
    flow: Any,
    target: StateType,
    name: str,
    message: str = "",
    value: Any = None,
    **options: Any,
) -> State:
    """Journal how this execution of the run ended, with the hooks that owes; run them.

    A run that is being cancelled (it, or a run it is a subflow of, is
    Cancelling) and did not complete ends Cancelled. The end is written
    optimistically: a cancel request moved the run while this process held
    it if the compare-and-set loses, and then it is written again.
    """
    journal = ctx.journal
    parent = ctx.run.parent_flow_run_id
    if target is not StateType.COMPLETED and signals.cancel_requested(journal, parent):
        target, name, message, value = StateType.CANCELLED, "Cancelled", "cancelled", None
    for attempt in (1, 2):
        run = ctx.run
        version = run.version + 1
        owed = hooks.due(flow, run.id, version, target, run.id)
        try:
            ctx.run = journal.finish_flow_run(run, target, name, message, also=owed, **options)
            break
        except VersionConflict:
            now = journal.get_flow_run(run.id)
            if attempt == 2 or now.lease_token != run.lease_token:
                raise
            ctx.run = now
            if now.state_name == "Cancelling" and target is not StateType.COMPLETED:
                target, name, value = StateType.CANCELLED, "Cancelled", None
                message = now.state_message or "cancelled"
    state = State(target, name, message, ctx.run.ended_ms or 0, run.id, value)
    if owed:
        hooks.run_hooks(journal, flow, ctx.run, state, run.id, version, hooks.event_of(target))
    return state


def _cancel_requested(ctx: FlowRunContext) -> bool:
    """True if somebody asked to cancel the run (it is Cancelling); ``ctx.run`` is refreshed.

    A cancel request moves the run Running -> Cancelling while this process
    holds it, so the version this process last wrote is behind by one.
    """
    now = ctx.journal.get_flow_run(ctx.run.id)
    if now.version != ctx.run.version and now.lease_token == ctx.run.lease_token:
        ctx.run = now
        if now.state_name == "Cancelling":
            return True
    return signals.cancel_requested(ctx.journal, ctx.run.parent_flow_run_id)


def _call(ctx: FlowRunContext, flow: Any, params: dict[str, Any]) -> State | None:
    """Call the flow function; journal how this execution ended. None: it will be retried."""
    journal, run = ctx.journal, ctx.run
    signature = inspect.signature(flow.fn)
    bound = inspect.BoundArguments(signature, params)  # type: ignore[arg-type,unused-ignore]
    try:
        try:
            if flow.timeout_seconds is None:
                value = flow.fn(*bound.args, **bound.kwargs)
            else:
                timeout = RunTimeout(f"flow {flow.name!r}", flow.timeout_seconds)
                value = call_with_timeout(
                    flow.fn, bound.args, bound.kwargs, flow.timeout_seconds, "interrupt", timeout
                )
        except Exception:
            # Calls not started are cancelled; no task of this run may still
            # write after its end, so running ones are waited for.
            ctx.drain(wait=True, cancel=True)
            raise
        except BaseException:
            ctx.drain(wait=False)
            raise
        ctx.drain(wait=True)
    except LeaseLost:
        raise  # the run is somebody else's now: record nothing
    except Suspend:  # journaled Suspended: its process lets go
        message = ctx.run.state_message
        return State(
            StateType.PAUSED, "Suspended", message, 0, run.id, RunSuspended(run.id, message)
        )
    except RunEnded:  # ended by somebody else (a cancel) while it was paused
        journal.writer.release(run.id)  # its lease is nobody's now
        ended = _state_of(ctx.run)
        for version, event in journal.hooks.owed(run.id).get(run.id, []):
            hooks.run_hooks(journal, flow, ctx.run, ended, run.id, version, event)
        return ended
    except PauseTimedOut as exc:
        if exc.cancel:
            return _end(ctx, flow, StateType.CANCELLED, "Cancelled", str(exc))
        error = PersevereError(f"run {run.id}: {exc}")
        return _end(ctx, flow, StateType.FAILED, "TimedOut", str(exc), error)
    except Exception as exc:
        wake = retry_time(flow, run.retries_used, exc, run)
        if wake is not None and not _cancel_requested(ctx):
            run = ctx.run
            extra = {"scheduled_ms": wake, "retries_used": run.retries_used + 1}
            ctx.run = journal.finish_flow_run(
                run, StateType.SCHEDULED, "AwaitingRetry", describe(exc), extra=extra
            )
            return None
        name = "TimedOut" if isinstance(exc, RunTimeout) else "Failed"
        return _end(ctx, flow, StateType.FAILED, name, describe(exc), exc)
    except BaseException as exc:
        what = str(exc) if isinstance(exc, Terminated) else f"interrupted by {type(exc).__name__}"
        _end(ctx, flow, StateType.CRASHED, "Crashed", what, exc)
        if isinstance(exc, Terminated):
            exc.run_id = run.id  # the outermost run's id is what is left when it arrives
        if isinstance(exc, KeyboardInterrupt):
            raise RunInterrupted(run.id) from exc  # each level names its own run
        raise
    try:
        result = journal.store(
            value, flow.result_serializer, f"result of flow {flow.name!r}", run.id, inline=False
        )
    except SerializationError as exc:
        return _end(ctx, flow, StateType.FAILED, "Failed", str(exc), exc)
    return _end(ctx, flow, StateType.COMPLETED, "Completed", "", value, result=result)


def _run_subflow(parent: FlowRunContext, flow: Any, params: dict[str, Any]) -> State:
    """A flow called inside a flow: a child run, recorded in the parent as one call."""
    journal = parent.journal
    position, dynamic_key = parent.allocate(flow.name)
    recorded = parent.recorded.get(position)
    child: FlowRun | None = None
    if recorded is not None:
        check_recorded(parent, position, recorded, flow.name, "flow")
        if recorded.state_type is StateType.COMPLETED:
            parent.replayed += 1
            return load_recorded(journal, recorded)
        child = journal.child_flow_run(recorded.id)
        call = journal.restart_task_run(recorded, "re-run on resume")
    else:
        call = journal.start_task_run(parent.run.id, position, flow.name, dynamic_key, "flow")
    if child is None:
        stored, ops = parameters.encode(journal, params, fence=parent.run.id)
        journal.flush(ops)
        child = journal.create_flow_run(
            flow_name=flow.name,
            entrypoint=entrypoints.entrypoint_of(flow.fn),
            parameters=stored,
            parent_flow_run_id=parent.run.id,
            parent_task_run_id=call.id,
            owner=this_process(),
        )
    if child.state_type is StateType.COMPLETED:
        state = completed_state(journal, child)
    else:
        try:
            state, child = execute(journal, flow, child, params)
        except LeaseLost:
            raise
        except BaseException as exc:
            if isinstance(exc, Terminated) and signals.cancel_requested(journal, parent.run.id):
                journal.finish_task_run(call, StateType.CANCELLED, "Cancelled", "cancelled")
                raise
            message = f"interrupted by {type(exc).__name__}"
            journal.finish_task_run(call, StateType.CRASHED, "Crashed", message)
            raise
    parent.executed += 1
    result = None
    if state.type is StateType.COMPLETED and child.result_id:
        result = StoredResult(flow.result_serializer, None, child.result_id, None)
    journal.finish_task_run(call, state.type, state.name, state.message, result)
    return state
