"""persevere: durable workflow orchestration for Python on one SQLite file.

>>> from persevere import flow, task
>>> @task
... def double(x: int) -> int:
...     return 2 * x
>>> @flow
... def pipeline(x: int = 21) -> int:
...     return double(x)
"""

from typing import TYPE_CHECKING, Any

from .context import get_run_context, idempotency_key
from .exceptions import (
    Abort,
    ConcurrencyError,
    ConcurrencySlotTimeout,
    DeploymentNotFound,
    InputError,
    InvalidTransition,
    LeaseLost,
    NonDeterminismError,
    ParameterError,
    PauseRejected,
    PersevereError,
    RemoteTaskError,
    RunInterrupted,
    RunKeyConflict,
    RunNotFound,
    RunNotResumable,
    RunSuspended,
    RunTimeout,
    SchemaTooNew,
    SerializationError,
    TaskProcessDied,
    TaskRunCancelled,
)
from .flows import Flow, flow
from .statemachine import State, StateType, allow_failure
from .statemachine.caching import FLOW_PARAMETERS, INPUTS, NO_CACHE, TASK_SOURCE, CachePolicy
from .statemachine.retries import exponential_backoff
from .tasks import Task, task
from .worker import get_run_logger
from .worker.answers import approve_flow_run, reject_flow_run, resume_flow_run
from .worker.concurrency import concurrency, rate_limit
from .worker.deploying import Deployment, run_deployment
from .worker.futures import PersevereFuture, as_completed, wait
from .worker.runners import (
    DaskTaskRunner,
    ProcessPoolTaskRunner,
    TaskRunner,
    ThreadPoolTaskRunner,
)
from .worker.task_runs import unmapped
from .worker.waits import pause_flow_run, sleep, suspend_flow_run

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .automations import emit_event
    from .schedules import Cron, Interval, RRule


def __getattr__(name: str) -> Any:
    """``Cron``, ``Interval``, ``RRule`` and ``emit_event``, loaded on first use: a plain
    flow needs no calendar and no automations (PEP 562)."""
    if name in ("Cron", "Interval", "RRule"):
        from . import schedules

        return getattr(schedules, name)
    if name == "emit_event":
        from .automations import emit_event

        return emit_event
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FLOW_PARAMETERS",
    "INPUTS",
    "NO_CACHE",
    "TASK_SOURCE",
    "Abort",
    "CachePolicy",
    "ConcurrencyError",
    "ConcurrencySlotTimeout",
    "Cron",
    "DaskTaskRunner",
    "Deployment",
    "DeploymentNotFound",
    "Flow",
    "InputError",
    "Interval",
    "InvalidTransition",
    "LeaseLost",
    "NonDeterminismError",
    "ParameterError",
    "PauseRejected",
    "PersevereError",
    "PersevereFuture",
    "ProcessPoolTaskRunner",
    "RRule",
    "RemoteTaskError",
    "RunInterrupted",
    "RunKeyConflict",
    "RunNotFound",
    "RunNotResumable",
    "RunSuspended",
    "RunTimeout",
    "SchemaTooNew",
    "SerializationError",
    "State",
    "StateType",
    "Task",
    "TaskProcessDied",
    "TaskRunCancelled",
    "TaskRunner",
    "ThreadPoolTaskRunner",
    "__version__",
    "allow_failure",
    "approve_flow_run",
    "as_completed",
    "concurrency",
    "emit_event",
    "exponential_backoff",
    "flow",
    "get_run_context",
    "get_run_logger",
    "idempotency_key",
    "pause_flow_run",
    "rate_limit",
    "reject_flow_run",
    "resume_flow_run",
    "run_deployment",
    "sleep",
    "suspend_flow_run",
    "task",
    "unmapped",
    "wait",
]
