"""Running a recorded flow run again: resume it, or retry it from a chosen task.

Both load the flow from the run's entrypoint and call it with the run's
stored parameters; replay does the rest. A resume goes on with the same run.
A retry from a task makes a new run (a finished run cannot move again: its
state is absorbing) holding copies of the completed task runs before that
task, so they replay and everything from that task on runs again.
"""

from __future__ import annotations

from typing import Any

from ..exceptions import RunNotFound, RunNotResumable
from ..journal import FlowRun, Journal, TaskRun
from ..statemachine import FINAL_TYPES, State, StateType
from . import entrypoints, parameters, recovery
from .flow_runs import execute
from .owners import this_process

RESUMABLE = (StateType.CRASHED, StateType.FAILED, StateType.CANCELLED)


def _top_level(journal: Journal, run_id: str) -> FlowRun:
    run = recovery.refresh(journal, journal.resolve_flow_run(run_id))
    if run.parent_flow_run_id is not None:
        raise RunNotResumable(
            run.id,
            run.state_name,
            f"run {run.id} is a subflow of run {run.parent_flow_run_id}; use that run",
        )
    return run


def flow_of(run: FlowRun) -> Any:
    if not run.entrypoint:
        raise RunNotResumable(
            run.id,
            run.state_name,
            f"run {run.id} has no entrypoint (its flow was defined interactively)",
        )
    flow = entrypoints.load(run.entrypoint)
    if flow.name != run.flow_name:
        raise RunNotResumable(
            run.id,
            run.state_name,
            f"{run.entrypoint} is now flow {flow.name!r}, but run {run.id} is of flow "
            f"{run.flow_name!r}",
        )
    return flow


def resume(journal: Journal, run_id: str) -> tuple[State, FlowRun]:
    """Execute a Crashed, Failed or Cancelled run again from its entrypoint (or a
    paused one, not on a work queue, whose pause was answered).

    Completed task runs are replayed from the journal; the rest run. A run
    whose process died while it waited for a retry goes on after the delay.
    """
    run = _top_level(journal, run_id)
    answered = run.state_name == "Scheduled" and run.work_queue is None  # a pause, answered
    if run.state_type not in RESUMABLE and run.state_name != "AwaitingRetry" and not answered:
        raise RunNotResumable(run.id, run.state_name)
    flow = flow_of(run)
    return execute(journal, flow, run, parameters.decode(journal, run.parameters))


def find_task(tasks: list[TaskRun], label: str) -> TaskRun:
    """The task run ``label`` names: ``key-N`` (as ``runs show`` prints) or ``key`` (its first)."""
    for task in tasks:
        if f"{task.task_key}-{task.dynamic_key}" == label:
            return task
    for task in tasks:
        if task.task_key == label:
            return task
    names = ", ".join(f"{t.task_key}-{t.dynamic_key}" for t in tasks) or "none"
    raise RunNotFound(label, f"the run has no task run {label!r}; it has: {names}")


def retry_from(journal: Journal, run_id: str, task_label: str) -> tuple[State, FlowRun]:
    """Run a finished run again as a new run, from the task run ``task_label`` on."""
    source = _top_level(journal, run_id)
    if source.state_type not in FINAL_TYPES:
        raise RunNotResumable(
            source.id,
            source.state_name,
            f"run {source.id} is {source.state_name}; only a finished run can be retried",
        )
    task = find_task(journal.task_runs(source.id), task_label)
    flow = flow_of(source)
    label = f"{task.task_key}-{task.dynamic_key}"
    run = journal.fork_flow_run(
        source, task.position, this_process(), f"retry of run {source.id} from {label}"
    )
    return execute(journal, flow, run, parameters.decode(journal, run.parameters))
