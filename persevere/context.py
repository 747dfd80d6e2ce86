"""The run context: which flow run and task run the current code executes in.

Held in ``contextvars`` so that threads and asyncio tasks started for a run
see their own run, and so that logs are tagged with run ids without passing
them around.
"""

from __future__ import annotations

import threading
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .journal import FlowRun, Journal, TaskRun


@dataclass
class FlowRunContext:
    """What the engine knows about the flow run executing now."""

    journal: Journal
    run: FlowRun
    flow: Any
    recorded: dict[int, TaskRun]
    log_prints: bool = False
    next_position: int = 0
    dynamic_keys: dict[str, int] = field(default_factory=dict)
    owed: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    replayed: int = 0
    executed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    executor: Any = None
    futures: list[Any] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def executor_for(self, runner: Any) -> Any:
        """The flow run's executor for submitted tasks, started on first use."""
        with self.lock:
            if self.executor is None:
                self.executor = runner.start()
            return self.executor

    def drain(self, wait: bool = True, cancel: bool | None = None) -> None:
        """Let every submitted task call end, then close the task runner.

        ``cancel``: cancel the calls that have not started (default: when not
        waiting). Without ``wait``, running bodies are abandoned.
        """
        cancelling = not wait if cancel is None else cancel
        if cancelling:
            self.stopping.set()  # calls waiting for a concurrency slot give up too
        if self.executor is None:
            return
        self.executor.shutdown(wait=wait, cancel_futures=cancelling)

    @property
    def flow_run_id(self) -> str:
        """The id of the flow run."""
        return self.run.id

    def allocate(self, key: str) -> tuple[int, int]:
        """The position and dynamic key of the next call, in program order."""
        with self.lock:
            position = self.next_position
            self.next_position += 1
            dynamic_key = self.dynamic_keys.get(key, 0)
            self.dynamic_keys[key] = dynamic_key + 1
        return position, dynamic_key


@dataclass(frozen=True)
class TaskRunContext:
    """What the engine knows about the task run executing now."""

    flow_run_id: str
    task_run_id: str
    task_key: str
    dynamic_key: int
    attempt: int

    @property
    def idempotency_key(self) -> str:
        """A key for this task call that is the same on every re-execution.

        Pass it to outside systems (payment APIs, ``INSERT ... ON CONFLICT``)
        so that a task run again after a crash does not act twice.
        """
        return f"{self.flow_run_id}:{self.task_key}:{self.dynamic_key}"


flow_run_context: ContextVar[FlowRunContext | None] = ContextVar("persevere_flow_run", default=None)
task_run_context: ContextVar[TaskRunContext | None] = ContextVar("persevere_task_run", default=None)


def get_run_context() -> TaskRunContext | FlowRunContext:
    """The innermost run context: the task run's if inside a task, else the flow run's.

    Raises ``RuntimeError`` outside a flow run.
    """
    task_ctx = task_run_context.get()
    if task_ctx is not None:
        return task_ctx
    flow_ctx = flow_run_context.get()
    if flow_ctx is not None:
        return flow_ctx
    raise RuntimeError("no flow run is executing here: call this inside a @flow or @task")


def idempotency_key() -> str:
    """The stable idempotency key of the task run executing now.

    The same on every re-execution of this call (after a crash or a resume).
    """
    task_ctx = task_run_context.get()
    if task_ctx is None:
        raise RuntimeError("idempotency_key() is only available inside a @task")
    return task_ctx.idempotency_key
