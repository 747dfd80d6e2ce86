"""The SQL persevere writes, and pure builders of the writes a transition needs.

Nothing here touches a connection: each builder returns the :class:`Op` list
that the :class:`~persevere.journal.journal.Journal` hands to its writer, so
the same statements serve one transaction or many batched together, and the
statements are constants that SQLite prepares once.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from dataclasses import replace
from typing import Any

from .. import clock
from ..statemachine import StateType, check_move, path_to_pending
from .hooks import HooksDue
from .records import FlowRun, StoredResult, TaskRun, TaskStart
from .writer import Op, Writes

FLOW_COLUMNS = (
    "id, flow_name, entrypoint, parameters, state_type, state_name, state_message, version, "
    "run_key, parent_flow_run_id, parent_task_run_id, lease_token, owner_host, owner_pid, "
    "owner_started, lease_expires_ms, scheduled_ms, created_ms, started_ms, ended_ms, result_id, "
    "run_count, retries_used, deployment_id, work_queue, worker_name, auto_resumes, "
    "max_auto_resumes, tags, schedule_id, schedule_ms, pause_deadline_ms, pause_on_timeout, "
    "pause_input"
)
TASK_COLUMNS = (
    "id, flow_run_id, position, task_key, dynamic_key, kind, state_type, state_name, "
    "state_message, version, attempt, next_attempt_ms, retries_used, result_serializer, result, "
    "result_id, created_ms, started_ms, ended_ms, upstream"
)
INSERT_STATE = "INSERT INTO states VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_TASK = (
    "INSERT INTO task_runs (id, flow_run_id, position, task_key, dynamic_key, kind, "
    "state_type, state_name, version, attempt, created_ms, upstream) "
    "VALUES (?, ?, ?, ?, ?, ?, 'PENDING', 'Pending', 1, 1, ?, ?)"
)
# A task run that must wait for concurrency slots before its first attempt.
_INSERT_WAITING_TASK = (
    "INSERT INTO task_runs (id, flow_run_id, position, task_key, dynamic_key, kind, "
    "state_type, state_name, version, attempt, created_ms, upstream) "
    "VALUES (?, ?, ?, ?, ?, ?, 'PENDING', 'Pending', 1, 0, ?, ?)"
)
_TASK_RUNNING = (
    "UPDATE task_runs SET state_type = 'RUNNING', state_name = ?, state_message = '', "
    "version = ?, attempt = ?, retries_used = ?, started_ms = ?, ended_ms = NULL "
    "WHERE id = ? AND version = ?"
)
_TASK_FINISHED = (
    "UPDATE task_runs SET state_type = ?, state_name = ?, state_message = ?, version = ?, "
    "result_serializer = ?, result = ?, result_id = ?, ended_ms = ? WHERE id = ? AND version = ?"
)
# A task that finished before its start was committed: one row, three history rows.
_INSERT_FINISHED_TASK = (
    "INSERT INTO task_runs (id, flow_run_id, position, task_key, dynamic_key, kind, "
    "state_type, state_name, state_message, version, attempt, result_serializer, result, "
    "result_id, created_ms, started_ms, ended_ms, upstream) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 3, 1, ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_THREE_STATES = (
    "INSERT INTO states VALUES (?, 1, NULL, 'PENDING', 'Pending', ?, '', NULL), "
    "(?, 2, 'PENDING', 'RUNNING', 'Running', ?, '', NULL), "
    "(?, 3, 'RUNNING', ?, ?, ?, ?, NULL)"
)
#: Results up to this size are kept in the task run's row.
INLINE_LIMIT = 256
INSERT_RESULT_FILE = (
    "INSERT OR IGNORE INTO results (id, serializer, path, size, created_ms) VALUES (?, ?, ?, ?, ?)"
)
INSERT_RESULT = (
    "INSERT OR IGNORE INTO results (id, serializer, data, size, created_ms) VALUES (?, ?, ?, ?, ?)"
)


def new_id() -> str:
    """A new run id: 32 hex digits, time-ordered (so ids sort by creation)."""
    return f"{clock.now_ms():012x}{os.urandom(10).hex()}"


def task_run_id(flow_run_id: str, position: int) -> str:
    """The id of the task run at a position of a flow run: the same on every execution."""
    return f"{flow_run_id}.{position:08d}"


def moved_upstream(upstream: str | None, source_id: str, run_id: str) -> str | None:
    """Upstream ids of a task run copied into a new run, pointing at the copies."""
    if not upstream:
        return upstream
    prefix = source_id + "."
    return " ".join(
        run_id + "." + i[len(prefix) :] if i.startswith(prefix) else i for i in upstream.split()
    )


def move(
    table: str,
    run_id: str,
    source: StateType | None,
    version: int,
    target: StateType,
    name: str,
    message: str,
    now: int,
    sets: dict[str, Any] | None = None,
    fence: str | None = None,
) -> list[Op]:
    """The two writes of one transition: a compare-and-set update and a history row."""
    check_move(source, target, name, run_id)
    columns = "state_type = ?, state_name = ?, state_message = ?, version = ?"
    params: list[Any] = [target.value, name, message, version + 1]
    if table == "flow_runs":  # the time of its event (journal/schema.py)
        columns += ", state_ms = ?"
        params.append(now)
    for column, value in (sets or {}).items():
        columns += f", {column} = ?"
        params.append(value)
    params += [run_id, version]
    return [
        Op(
            f"UPDATE {table} SET {columns} WHERE id = ? AND version = ?",
            params,
            fence=fence,
            expect=(run_id, version, table),
        ),
        Op(
            INSERT_STATE,
            (
                run_id,
                version + 1,
                source.value if source else None,
                target.value,
                name,
                now,
                message,
                None,
            ),
            fence=fence,
        ),
    ]


def start_task(
    flow_run_id: str,
    position: int,
    task_key: str,
    dynamic_key: int,
    kind: str,
    now: int,
    upstream: str | None = None,
) -> TaskStart:
    """A new task run, Pending then Running: the writes are in ``TaskStart.ops``.

    ``upstream`` holds the ids of the task runs its inputs came from. The
    writes are built only if they are committed before the task run ends
    (see :class:`~persevere.journal.writer.Writes`).
    """
    task_id = task_run_id(flow_run_id, position)
    insert = (task_id, flow_run_id, position, task_key, dynamic_key, kind, now, upstream)
    writes = Writes(_start_ops, insert)
    return TaskStart(
        task_id, flow_run_id, position, task_key, dynamic_key, kind, now, 2, (writes,),
        upstream=upstream,
    )  # fmt: skip


def _start_ops(*insert: Any) -> tuple[Op, ...]:
    """The writes of a task run's start: the row in Pending, then Running."""
    task_id, fence, now = insert[0], insert[1], insert[6]
    return (
        Op(_INSERT_TASK, insert, fence=fence),
        Op(INSERT_STATE, (task_id, 1, None, "PENDING", "Pending", now, "", None), fence=fence),
        Op(
            _TASK_RUNNING,
            ("Running", 2, 1, 0, now, task_id, 1),
            fence=fence,
            expect=(task_id, 1, "task_runs"),
        ),
        Op(INSERT_STATE, (task_id, 2, "PENDING", "RUNNING", "Running", now, "", None), fence=fence),
    )


def waiting_task(
    flow_run_id: str,
    position: int,
    task_key: str,
    dynamic_key: int,
    upstream: str | None,
    message: str,
    now: int,
) -> list[Op]:
    """A new task run that waits for concurrency slots: Pending -> AwaitingConcurrencySlot.

    Its attempt count is 0: the attempt starts once it is admitted.
    """
    task_id, fence = task_run_id(flow_run_id, position), flow_run_id
    insert = (task_id, flow_run_id, position, task_key, dynamic_key, "task", now, upstream)
    return [
        Op(_INSERT_WAITING_TASK, insert, fence=fence),
        Op(INSERT_STATE, (task_id, 1, None, "PENDING", "Pending", now, "", None), fence=fence),
        *move(
            "task_runs",
            task_id,
            StateType.PENDING,
            1,
            StateType.SCHEDULED,
            "AwaitingConcurrencySlot",
            message,
            now,
            None,
            fence,
        ),
    ]


def restart_task(task: TaskRun, message: str, now: int) -> tuple[list[Op], TaskStart]:
    """The moves that bring a recorded, unfinished task run back to Running.

    A task run that was waiting for a retry keeps its count of retries used;
    one that failed (its retries spent) or crashed starts a new count: a
    resume is a new chance.
    """
    state = task.state_type
    if state in (StateType.RUNNING, StateType.PENDING):
        # Its execution died with an earlier process: say so before re-running.
        moves = [(StateType.CRASHED, "Crashed"), *path_to_pending(StateType.CRASHED)]
    else:
        moves = path_to_pending(state)
    retrying = state is StateType.SCHEDULED and task.state_name == "AwaitingRetry"
    start = TaskStart(
        task.id,
        task.flow_run_id,
        task.position,
        task.task_key,
        task.dynamic_key,
        task.kind,
        task.created_ms,
        task.version,
        (),
        task.attempt,
        task.retries_used if retrying else 0,
        task.upstream,
    )
    return rerun_task(start, state, moves, message, now, "Retrying" if retrying else "Running")


def rerun_task(
    start: TaskStart,
    state: StateType,
    moves: list[tuple[StateType, str]],
    message: str,
    now: int,
    running_name: str,
) -> tuple[list[Op], TaskStart]:
    """Make ``moves`` from ``state``, then Running (as ``running_name``) for a new attempt."""
    version, fence, ops = start.version, start.flow_run_id, []
    for target, name in moves:
        ops += move("task_runs", start.id, state, version, target, name, message, now, {}, fence)
        state, version = target, version + 1
    check_move(state, StateType.RUNNING, running_name, start.id)
    attempt = start.attempt + 1
    ops.append(
        Op(
            _TASK_RUNNING,
            (running_name, version + 1, attempt, start.retries_used, now, start.id, version),
            fence=fence,
            expect=(start.id, version, "task_runs"),
        )
    )
    ops.append(
        Op(
            INSERT_STATE,
            (start.id, version + 1, state.value, "RUNNING", running_name, now, message, None),
            fence=fence,
        )
    )
    return ops, replace(start, version=version + 1, ops=(), attempt=attempt)


def await_retry(
    start: TaskStart, wake_ms: int, message: str, now: int
) -> tuple[list[Op], TaskStart]:
    """A failed attempt that will be retried: Running -> AwaitingRetry until ``wake_ms``."""
    used = start.retries_used + 1
    ops = move(
        "task_runs",
        start.id,
        StateType.RUNNING,
        start.version,
        StateType.SCHEDULED,
        "AwaitingRetry",
        message,
        now,
        {"next_attempt_ms": wake_ms, "retries_used": used, "ended_ms": now},
        start.flow_run_id,
    )
    return ops, replace(start, version=start.version + 1, ops=(), retries_used=used)


def finish_task(
    start: TaskStart,
    target: StateType,
    name: str,
    message: str,
    result: StoredResult | None,
    now: int,
    collapse: bool,
    fenced: bool = True,
) -> list[Op]:
    """A task run's final state and result.

    With ``collapse`` (its start was never committed), the task run is
    written once, in its final state, with its three history rows in one
    statement, instead of an insert and two updates. ``fenced=False`` for a
    task run written together with its new flow run, before anyone holds
    that run's lease.
    """
    check_move(StateType.RUNNING, target, name, start.id)
    fence = start.flow_run_id if fenced else None
    serializer, data, result_id = None, None, None
    ops = []
    if result is not None:
        serializer = result.serializer if result.data is not None else None
        data, result_id = result.data, result.result_id
        if result.op is not None:
            ops.append(result.op)
    if collapse:
        created = start.created_ms
        ops.append(
            Op(
                _INSERT_FINISHED_TASK,
                (
                    start.id,
                    start.flow_run_id,
                    start.position,
                    start.task_key,
                    start.dynamic_key,
                    start.kind,
                    target.value,
                    name,
                    message,
                    serializer,
                    data,
                    result_id,
                    created,
                    created,
                    now,
                    start.upstream,
                ),
                fence=fence,
            )
        )
        ops.append(
            Op(
                INSERT_THREE_STATES,
                (start.id, created, start.id, created, start.id, target.value, name, now, message),
                fence=fence,
            )
        )
        return ops
    version = start.version
    ops.append(
        Op(
            _TASK_FINISHED,
            (
                target.value,
                name,
                message,
                version + 1,
                serializer,
                data,
                result_id,
                now,
                start.id,
                version,
            ),
            fence=fence,
            expect=(start.id, version, "task_runs"),
        )
    )
    ops.append(
        Op(
            INSERT_STATE,
            (start.id, version + 1, "RUNNING", target.value, name, now, message, None),
            fence=fence,
        )
    )
    return ops


def copied_tasks(
    tasks: Sequence[TaskRun], position: int, source_id: str, run_id: str, now: int
) -> list[Op]:
    """The writes that copy a run's completed task runs before ``position`` into the new
    run ``run_id``, each written once, Completed, with its result and inputs' sources."""
    ops: list[Op] = []
    for task in tasks:
        if task.position >= position or task.state_type is not StateType.COMPLETED:
            continue
        start = TaskStart(
            task_run_id(run_id, task.position), run_id, task.position, task.task_key,
            task.dynamic_key, task.kind, now, 2, (),
            upstream=moved_upstream(task.upstream, source_id, run_id),
        )  # fmt: skip
        stored = StoredResult(task.result_serializer or "json", task.result, task.result_id, None)
        ops += finish_task(
            start, StateType.COMPLETED, task.state_name, f"copied from run {source_id}", stored,
            now, collapse=True,
            fenced=False,  # written with the new run, before anyone holds its lease
        )  # fmt: skip
    return ops


def end_with_tasks(
    run: FlowRun,
    source: StateType,
    version: int,
    target: StateType,
    name: str,
    message: str,
    now: int,
    tasks: Sequence[TaskRun],
    unfinished: Collection[StateType],
    task_hook: str | None = None,
) -> list[Op]:
    """The writes that end a flow run nobody executes any more (its owner died, or it
    was cancelled) in ``target``, with its task runs in ``unfinished`` states, each
    owing ``task_hook`` if given."""
    ops = move(
        "flow_runs",
        run.id,
        source,
        version,
        target,
        name,
        message,
        now,
        {"ended_ms": now, "lease_token": None},
    )
    for task in tasks:
        if task.state_type in unfinished:
            ops += move(
                "task_runs",
                task.id,
                task.state_type,
                task.version,
                target,
                name,
                message,
                now,
                {"ended_ms": now},
            )
            if task_hook is not None:
                ops.append(HooksDue.due_op(task.id, task.version + 1, task_hook))
    return ops
