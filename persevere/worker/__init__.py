"""Execution: run engines, replay, crash detection, logging."""

from .flow_runs import RESUMABLE, completed_state, execute, resume, run_flow
from .logs import get_run_logger
from .recovery import reap, refresh
from .task_runs import run_task

__all__ = [
    "RESUMABLE",
    "completed_state",
    "execute",
    "get_run_logger",
    "reap",
    "refresh",
    "resume",
    "run_flow",
    "run_task",
]
