"""Executing task calls inside a flow run: the hot path, and replay.

A call gets its identity in program order: its position in the flow run
(the n-th call of any task or subflow) and its dynamic key (the n-th call of
this task). If the journal holds a completed task run at that position, its
stored result is returned and the body does not run (replay). Otherwise the
task runs: Pending and Running are deferred writes, the final state with the
result is one durable commit, so a sequential task costs one commit.
"""

from __future__ import annotations

from typing import Any

from ..context import FlowRunContext, TaskRunContext, flow_run_context, task_run_context
from ..exceptions import NonDeterminismError, SerializationError
from ..journal import Journal, TaskRun
from ..statemachine import State, StateType


def describe(exc: BaseException) -> str:
    """A one-line account of an exception for a state message."""
    text = str(exc)
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return line if len(line) <= 500 else line[:497] + "..."


def check_recorded(
    ctx: FlowRunContext, position: int, recorded: TaskRun, key: str, kind: str
) -> None:
    """Refuse to replay if the code now calls something else at this position."""
    if recorded.task_key != key or recorded.kind != kind:
        raise NonDeterminismError(
            ctx.run.id, position, f"{recorded.kind} {recorded.task_key}", f"{kind} {key}"
        )


def load_recorded(journal: Journal, recorded: TaskRun) -> State:
    """The State of a completed task run, its result loaded from the journal."""
    value = journal.load_task_result(recorded)
    return State(
        StateType.COMPLETED, recorded.state_name, "", recorded.ended_ms or 0, recorded.id, value
    )


def run_task(task: Any, args: tuple[Any, ...], kwargs: dict[str, Any], return_state: bool) -> Any:
    """Run one task call (the body of ``Task.__call__``)."""
    ctx = flow_run_context.get()
    if ctx is None:  # outside a flow: a plain function call, nothing journaled
        value = task.fn(*args, **kwargs)
        return State(StateType.COMPLETED, "Completed", data=value) if return_state else value
    key = task.task_key
    journal, flow_run_id = ctx.journal, ctx.run.id
    position, dynamic_key = ctx.allocate(key)
    recorded = ctx.recorded.get(position) if ctx.recorded else None
    if recorded is None:
        start = journal.start_task_run(flow_run_id, position, key, dynamic_key, "task")
        attempt = 1
    else:
        check_recorded(ctx, position, recorded, key, "task")
        if recorded.state_type is StateType.COMPLETED:
            ctx.replayed += 1
            state = load_recorded(journal, recorded)
            return state if return_state else state.data
        attempt = recorded.attempt + 1
        start = journal.restart_task_run(recorded, "run again after the flow run resumed")
    token = task_run_context.set(TaskRunContext(flow_run_id, start.id, key, dynamic_key, attempt))
    try:
        value = task.fn(*args, **kwargs)
    except Exception as exc:
        journal.finish_task_run(start, StateType.FAILED, "Failed", describe(exc))
        if return_state:
            return State(StateType.FAILED, "Failed", describe(exc), 0, start.id, exc)
        raise
    except BaseException as exc:
        message = f"interrupted by {type(exc).__name__}"
        journal.finish_task_run(start, StateType.CRASHED, "Crashed", message)
        raise
    finally:
        task_run_context.reset(token)
    try:
        result = journal.store(
            value, task.result_serializer, f"result of task {task.name!r}", flow_run_id
        )
    except SerializationError as exc:
        journal.finish_task_run(start, StateType.FAILED, "Failed", str(exc))
        raise
    journal.finish_task_run(start, StateType.COMPLETED, "Completed", result=result)
    ctx.executed += 1
    if return_state:
        return State(StateType.COMPLETED, "Completed", "", 0, start.id, value)
    return value
