"""Executing task calls inside a flow run: the hot path, and replay.

A call gets its identity in program order: its position in the flow run
(the n-th call of any task or subflow) and its dynamic key (the n-th call of
this task). If the journal holds a completed task run at that position, its
stored result is returned and the body does not run (replay). Otherwise the
task runs: Pending and Running are deferred writes, the final state with the
result is one durable commit, so a sequential task costs one commit.
"""

from __future__ import annotations

import contextvars
import random
from itertools import repeat
from typing import Any

from .. import clock
from ..context import FlowRunContext, TaskRunContext, flow_run_context, task_run_context
from ..exceptions import (
    Abort,
    NonDeterminismError,
    RunTimeout,
    SerializationError,
    TaskRunCancelled,
    Terminated,
)
from ..journal import Journal, Op, StoredResult, TaskRun, TaskStart, task_run_id
from ..statemachine import State, StateType, allow_failure, resolve
from ..statemachine.retries import next_attempt_ms
from . import caching, hooks, signals
from .concurrency import Slots, admit_task
from .dispatch import Call, Dispatching, hand_over
from .futures import PersevereFuture, PersevereFutureList
from .logs import get_run_logger
from .outcomes import Outcome, finished
from .runners import run_body


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


def _settle(value: Any) -> Any:
    """A future among the inputs, waited for and replaced by its final State."""
    if isinstance(value, PersevereFuture):
        value.wait()
        return value.state
    if isinstance(value, allow_failure) and isinstance(value.value, PersevereFuture):
        value.value.wait()
        return allow_failure(value.value.state)
    return value


_UPSTREAM = (State, allow_failure, PersevereFuture)
_CONTAINERS = (list, tuple, set, frozenset, dict)


def _holds_upstream(value: Any) -> bool:
    """True if a value is, or holds (in lists, tuples, sets, dicts), a future or State."""
    if isinstance(value, _UPSTREAM):
        return True
    if isinstance(value, dict):
        return any(_holds_upstream(v) for v in value.values())
    if isinstance(value, _CONTAINERS):
        return any(_holds_upstream(v) for v in value)
    return False


def _resolved(value: Any) -> Any:
    """A value with every future and State in it replaced by its result.

    A container that holds none is passed on as it is (the same object).
    """
    if isinstance(value, _UPSTREAM):
        return resolve(_settle(value))
    if not isinstance(value, _CONTAINERS) or not _holds_upstream(value):
        return value
    if isinstance(value, dict):
        return {k: _resolved(v) for k, v in value.items()}
    if isinstance(value, PersevereFutureList):
        return [_resolved(v) for v in value]
    items = [_resolved(v) for v in value]
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple
        return type(value)(*items)
    return type(value)(items)


def _upstream_ids(value: Any, found: dict[str, None]) -> None:
    if isinstance(value, allow_failure):
        value = value.value
    if isinstance(value, PersevereFuture):
        if value.task_run_id:
            found[value.task_run_id] = None
    elif isinstance(value, State):
        if value.run_id:
            found[value.run_id] = None
    elif isinstance(value, dict):
        for v in value.values():
            _upstream_ids(v, found)
    elif isinstance(value, _CONTAINERS):
        for v in value:
            _upstream_ids(v, found)


def upstream_of(
    args: tuple[Any, ...], kwargs: dict[str, Any], wait_for: list[Any] | None = None
) -> str | None:
    """The ids of the task runs a call's inputs (and ``wait_for``) come from, for the journal."""
    found: dict[str, None] = {}
    for value in (*args, *kwargs.values(), *(wait_for or ())):
        if _holds_upstream(value):
            _upstream_ids(value, found)
    return " ".join(found) or None


def resolve_inputs(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Inputs as the task receives them: futures and States become their values,
    also inside lists, tuples, sets and dicts.

    A failed upstream raises its exception here (the task does not run),
    unless it is wrapped in ``allow_failure``.
    """
    if not any(_holds_upstream(a) for a in (*args, *kwargs.values())):
        return args, kwargs
    return (
        tuple(_resolved(a) for a in args),
        {k: _resolved(v) for k, v in kwargs.items()},
    )


def run_task(
    task: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    return_state: bool,
    identity: tuple[int, int] | None = None,
    wait_for: list[Any] | None = None,
) -> Any:
    """Run one task call (the body of ``Task.__call__``).

    ``identity`` is the (position, dynamic key) a submitted call was given
    when it was submitted; a direct call takes the next one now. ``wait_for``
    holds futures to wait for first (a failed one stops the call, unless
    wrapped in ``allow_failure``).
    """
    ctx = flow_run_context.get()
    if ctx is None:  # outside a flow: a plain function call, nothing journaled
        for prior in wait_for or ():
            resolve(_settle(prior))
        args, kwargs = resolve_inputs(args, kwargs)
        value = task.fn(*args, **kwargs)
        return State(StateType.COMPLETED, "Completed", data=value) if return_state else value
    key = task.task_key
    position, dynamic_key = identity or ctx.allocate(key)
    upstream = upstream_of(args, kwargs, wait_for)
    for prior in wait_for or ():
        resolve(_settle(prior))  # raises if it failed, unless allow_failure
    args, kwargs = resolve_inputs(args, kwargs)
    journal, flow_run_id = ctx.journal, ctx.run.id
    recorded = ctx.recorded.get(position) if ctx.recorded else None
    if recorded is not None:
        check_recorded(ctx, position, recorded, key, "task")
        owed = ctx.owed.get(recorded.id)
        if owed:  # hooks an earlier execution owed for this task run
            was = State(
                recorded.state_type, recorded.state_name, recorded.state_message, 0, recorded.id
            )
            hooks.run_owed(journal, task, recorded, was, owed)
        if recorded.state_type is StateType.COMPLETED:
            ctx.replayed += 1
            state = load_recorded(journal, recorded)
            return state if return_state else state.data
        if recorded.next_attempt_ms and recorded.state_name == "AwaitingRetry":
            sleep_until(recorded.next_attempt_ms)  # only what is left of the delay
    slots = None
    if task.tags:  # concurrency limits: wait for a slot of each limited tag
        slots, recorded = admit_task(ctx, key, task.tags, position, dynamic_key, recorded, upstream)
    try:
        if recorded is None:
            start = journal.start_task_run(
                flow_run_id, position, key, dynamic_key, "task", upstream
            )
        elif recorded.state_name == "AwaitingConcurrencySlot":
            start = journal.restart_task_run(recorded, "admitted: a concurrency slot is free")
        else:
            start = journal.restart_task_run(recorded, "run again after the flow run resumed")
        return _attempts(ctx, task, start, args, kwargs, return_state, slots)
    finally:
        if slots is not None:
            slots.release()


def _attempts(
    ctx: FlowRunContext,
    task: Any,
    start: TaskStart,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    return_state: bool,
    slots: Slots | None,
) -> Any:
    """Run a started task run's body until it completes, or fails with no retry left."""
    journal, key, dynamic_key = ctx.journal, start.task_key, start.dynamic_key
    cache_key = caching.key_for(task, ctx, start, args, kwargs)
    hit = caching.lookup(ctx, task, cache_key)
    if hit is not None:
        value = journal.load_stored(hit.stored)
        state = _finish(
            journal, task, start, StateType.COMPLETED, "Cached", "", hit.stored, value=value
        )
        return state if return_state else value
    while True:
        if task.on_running:
            _running(journal, task, start)
        token = task_run_context.set(
            TaskRunContext(start.flow_run_id, start.id, key, dynamic_key, start.attempt)
        )
        timeout = None
        try:
            if task.timeout_seconds is not None:
                timeout = RunTimeout(f"task {task.name!r}", task.timeout_seconds)
            value = run_body(task, args, kwargs, timeout)  # inline, or on the runner's workers
        except Exception as exc:
            # An enclosing deadline (the flow's) is not this task's failure to retry.
            outer = isinstance(exc, RunTimeout) and exc is not timeout
            wake = None if outer else retry_time(task, start.retries_used, exc, start)
            if wake is None:
                name = "TimedOut" if isinstance(exc, RunTimeout) else "Failed"
                state = _finish(
                    journal, task, start, StateType.FAILED, name, describe(exc), value=exc
                )
                if return_state:
                    return state
                raise
            start = journal.await_retry(start, wake, describe(exc))
            _log_retry(task, start, exc, wake)
            if slots is not None:  # nobody waits for a slot while this one waits to retry
                slots.release()
            sleep_until(wake)
            if slots is not None:
                slots.take_again()
            start = journal.retry_task_run(start)
            continue
        except BaseException as exc:
            if _flow_cancelling(ctx, exc):
                message = "cancelled with its flow run"
                _finish(journal, task, start, StateType.CANCELLED, "Cancelled", message, value=exc)
                raise
            message = f"interrupted by {type(exc).__name__}"
            _finish(journal, task, start, StateType.CRASHED, "Crashed", message, value=exc)
            raise
        finally:
            task_run_context.reset(token)
        return _complete(ctx, task, start, value, return_state, cache_key)


def _flow_cancelling(ctx: FlowRunContext, exc: BaseException) -> bool:
    """True if SIGTERM stopped the task because its flow run is being cancelled."""
    return isinstance(exc, Terminated) and signals.cancel_requested(ctx.journal, ctx.run.id)


def _complete(
    ctx: FlowRunContext,
    task: Any,
    start: TaskStart,
    value: Any,
    return_state: bool,
    cache_key: str | None,
) -> Any:
    journal = ctx.journal
    try:
        result = journal.store(
            value, task.result_serializer, f"result of task {task.name!r}", start.flow_run_id
        )
    except SerializationError as exc:
        _finish(journal, task, start, StateType.FAILED, "Failed", str(exc), value=exc)
        raise
    also = [caching.store_op(ctx, task, cache_key, start, result)] if cache_key else []
    state = _finish(journal, task, start, StateType.COMPLETED, "Completed", "", result, also, value)
    ctx.executed += 1
    return state if return_state else value


def _finish(
    journal: Journal,
    task: Any,
    start: TaskStart,
    target: StateType,
    name: str,
    message: str = "",
    result: StoredResult | None = None,
    also: list[Op] | None = None,
    value: Any = None,
) -> State:
    """Journal how a task run ended (with the hooks that owes) and run those hooks."""
    version = start.version + 1
    owed = hooks.due(task, start.id, version, target, start.flow_run_id)
    state = State(target, name, message, 0, start.id, value)
    # A submitted call's thread goes on; its future is set once the state is durable.
    later = target is StateType.COMPLETED and not owed
    then = hand_over(start.id, state, _failed) if later else None
    journal.finish_task_run(start, target, name, message, result, [*(also or ()), *owed], then)
    if owed:
        hooks.run_hooks(journal, task, start, state, start.id, version, hooks.event_of(target))
    return state


def _running(journal: Journal, task: Any, start: TaskStart) -> None:
    """Run a task's on_running hooks for this attempt (recorded first)."""
    journal.flush(hooks.due(task, start.id, start.version, StateType.RUNNING, start.flow_run_id))
    state = State(StateType.RUNNING, "Running", "", 0, start.id)
    hooks.run_hooks(journal, task, start, state, start.id, start.version, "on_running")


def retry_time(owner: Any, retries_used: int, exc: Exception, run: Any) -> int | None:
    """When a task or flow may try again after this failure, or None if it may not.

    ``owner`` is the Task or Flow (its ``retry_policy`` and
    ``retry_condition_fn``), ``run`` the run record handed to the condition.
    """
    policy = owner.retry_policy
    if not policy.retries or isinstance(exc, Abort):
        return None
    condition = owner.retry_condition_fn
    if condition is not None:
        failed = State(StateType.FAILED, "Failed", describe(exc), 0, run.id, exc)
        if not condition(owner, run, failed):
            return None
    return next_attempt_ms(policy, retries_used, clock.now_ms(), random.random())


def _log_retry(task: Any, start: TaskStart, exc: Exception, wake_ms: int) -> None:
    seconds = max(0, wake_ms - clock.now_ms()) / 1000
    get_run_logger("persevere.task_runs").warning(
        f"Task run {task.name!r} failed on attempt {start.attempt} ({describe(exc)}); "
        f"retry {start.retries_used} of {task.retry_policy.retries} in {seconds:g} s"
    )


def sleep_until(wake_ms: int) -> None:
    """Wait until an instant recorded in the journal (at once if it has passed)."""
    clock.sleep((wake_ms - clock.now_ms()) / 1000)


def submit_task(
    task: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    wait_for: list[Any] | None = None,
    context: contextvars.Context | None = None,
) -> PersevereFuture:
    """Run a task call on the flow's task runner; returns its future at once.

    The call's identity is taken now, in program order, not when it runs. It
    runs in a copy of ``context`` (default: of the current context, now).
    """
    ctx = flow_run_context.get()
    if ctx is None:  # outside a flow: run it now
        return PersevereFuture(
            finished(_state_of(task, args, kwargs, wait_for, None)), task.name, None
        )
    identity = ctx.allocate(task.task_key)
    run_id = task_run_id(ctx.run.id, identity[0])
    inner: Outcome[State] = Outcome()
    call = (task, args, kwargs, wait_for, identity)
    calls = ctx.executor or ctx.executor_for(Dispatching(ctx.flow.task_runner))
    calls.put(Call(inner, run_id, context or contextvars.copy_context(), _state_of, call))
    future = PersevereFuture(inner, task.name, run_id)
    with ctx.lock:
        ctx.futures.append(future)
    return future


def _failed(exc: BaseException) -> State:
    return State(StateType.FAILED, "Failed", describe(exc), 0, None, exc)


def _state_of(
    task: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    wait_for: list[Any] | None,
    identity: tuple[int, int] | None,
) -> State:
    """One submitted call, run to its final State (a failed upstream included)."""
    try:
        state: State = run_task(task, args, kwargs, True, identity, wait_for)
        return state
    except TaskRunCancelled as exc:  # it waited for a slot while the flow body failed
        return State(StateType.CANCELLED, "Cancelled", str(exc), 0, exc.task_run_id, exc)
    except Exception as exc:
        return _failed(exc)


def map_task(
    task: Any, args: tuple[Any, ...], kwargs: dict[str, Any], wait_for: list[Any] | None = None
) -> PersevereFutureList:
    """Submit one call per element of the iterable arguments (``unmapped`` ones repeat)."""
    iterables = {i: list(a) for i, a in enumerate(args) if _is_mapped(a)}
    named = {k: list(v) for k, v in kwargs.items() if _is_mapped(v)}
    lengths = {len(v) for v in (*iterables.values(), *named.values())}
    if len(lengths) > 1:
        raise ValueError(f"task {task.name!r}: .map() got iterables of lengths {sorted(lengths)}")
    count = lengths.pop() if lengths else 0
    columns = [iterables[i] if i in iterables else repeat(_plain(a)) for i, a in enumerate(args)]
    named_columns = [named[k] if k in named else repeat(_plain(v)) for k, v in kwargs.items()]
    each_args = zip(*columns, strict=False) if columns else repeat(())
    each_kwargs = zip(*named_columns, strict=False) if named_columns else repeat(())
    context = contextvars.copy_context()  # one snapshot: each call runs in a copy of it
    futures = PersevereFutureList()
    for _, call_args, values in zip(range(count), each_args, each_kwargs, strict=False):
        call_kwargs = dict(zip(kwargs, values, strict=True))
        futures.append(submit_task(task, call_args, call_kwargs, wait_for, context))
    return futures


class unmapped:
    """Pass the same value to every call of ``.map()``."""

    def __init__(self, value: Any) -> None:
        self.value = value


def _is_mapped(value: Any) -> bool:
    if isinstance(value, (unmapped, str, bytes, dict)) or not hasattr(value, "__iter__"):
        return False
    return not isinstance(value, (State, PersevereFuture, allow_failure))


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, unmapped) else value
