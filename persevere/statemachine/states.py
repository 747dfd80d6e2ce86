"""State types, the named states inside them, and the State value users see."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class StateType(str, enum.Enum):
    """The eight kinds of state a flow run or task run can be in."""

    SCHEDULED = "SCHEDULED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CRASHED = "CRASHED"
    CANCELLED = "CANCELLED"

    def __str__(self) -> str:
        return self.value


#: Every named state and the type it belongs to.
NAMED_STATES: dict[str, StateType] = {
    "Scheduled": StateType.SCHEDULED,
    "Late": StateType.SCHEDULED,
    "AwaitingRetry": StateType.SCHEDULED,
    "AwaitingConcurrencySlot": StateType.SCHEDULED,
    "Pending": StateType.PENDING,
    "Running": StateType.RUNNING,
    "Retrying": StateType.RUNNING,
    "Cancelling": StateType.RUNNING,
    "Paused": StateType.PAUSED,
    "Suspended": StateType.PAUSED,
    "Completed": StateType.COMPLETED,
    "Cached": StateType.COMPLETED,
    "Failed": StateType.FAILED,
    "TimedOut": StateType.FAILED,
    "Crashed": StateType.CRASHED,
    "Cancelled": StateType.CANCELLED,
}

#: States a run ends in (it needs an explicit resume to move again).
FINAL_TYPES = frozenset(
    {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}
)


@dataclass(frozen=True)
class State:
    """A run's state: its type, its name and what came with it.

    ``data`` holds the run's result for a completed state and the exception
    for a failed or crashed one; :meth:`result` returns the first and raises
    the second, as Prefect's ``State.result()`` does.
    """

    type: StateType
    name: str
    message: str = ""
    timestamp_ms: int = 0
    run_id: str | None = None
    data: Any = field(default=None, compare=False, repr=False)

    def is_scheduled(self) -> bool:
        """True for Scheduled, Late, AwaitingRetry, AwaitingConcurrencySlot."""
        return self.type is StateType.SCHEDULED

    def is_pending(self) -> bool:
        """True for Pending."""
        return self.type is StateType.PENDING

    def is_running(self) -> bool:
        """True for Running, Retrying and Cancelling."""
        return self.type is StateType.RUNNING

    def is_paused(self) -> bool:
        """True for Paused and Suspended."""
        return self.type is StateType.PAUSED

    def is_completed(self) -> bool:
        """True for Completed and Cached."""
        return self.type is StateType.COMPLETED

    def is_failed(self) -> bool:
        """True for Failed and TimedOut."""
        return self.type is StateType.FAILED

    def is_crashed(self) -> bool:
        """True for Crashed."""
        return self.type is StateType.CRASHED

    def is_cancelled(self) -> bool:
        """True for Cancelled."""
        return self.type is StateType.CANCELLED

    def is_final(self) -> bool:
        """True once the run has ended (completed, failed, crashed or cancelled)."""
        return self.type in FINAL_TYPES

    def result(self, raise_on_failure: bool = True) -> Any:
        """The run's return value; raises the run's exception if it did not complete.

        With ``raise_on_failure=False`` the exception is returned instead.
        """
        if self.type is StateType.COMPLETED:
            return self.data
        if raise_on_failure:
            if isinstance(self.data, BaseException):
                raise self.data
            raise RuntimeError(f"run {self.run_id} ended {self.name}: {self.message}")
        return self.data

    def __str__(self) -> str:
        return f"{self.name}({self.message!r})" if self.message else f"{self.name}()"


class allow_failure:
    """Mark a task argument whose failure must not stop the task it is passed to.

    ``consume(allow_failure(produce(return_state=True)))``: the task runs and
    gets the upstream value, or the upstream exception if it failed. Without
    the wrapper, a failed State passed as an argument raises its exception
    and the task does not run.
    """

    def __init__(self, value: Any) -> None:
        self.value = value


def resolve(value: Any) -> Any:
    """A task argument as the task receives it: States become their results."""
    if isinstance(value, allow_failure):
        inner = value.value
        return inner.result(raise_on_failure=False) if isinstance(inner, State) else inner
    if isinstance(value, State):
        return value.result()
    return value
