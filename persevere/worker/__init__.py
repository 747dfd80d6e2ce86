"""Execution: run engines, replay, crash detection, logging."""

from .flow_runs import completed_state, execute, run_flow
from .logs import get_run_logger
from .recovery import reap, refresh
from .reruns import RESUMABLE, resume, retry_from
from .task_runs import run_task

__all__ = [
    "RESUMABLE",
    "completed_state",
    "execute",
    "get_run_logger",
    "reap",
    "refresh",
    "resume",
    "retry_from",
    "run_flow",
    "run_task",
]
