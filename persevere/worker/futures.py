"""Futures of submitted task calls, and waiting on several."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterable, Iterator
from typing import Any

from ..exceptions import TaskRunCancelled
from ..statemachine import State, StateType
from . import outcomes
from .outcomes import Outcome


class PersevereFuture:
    """The pending outcome of a task call made with ``.submit`` or ``.map``.

    Its identity (position and dynamic key, hence its task run id) was fixed
    when it was submitted, in program order, so a resumed run finds the same
    task runs at the same places however the threads finished last time.
    """

    def __init__(self, inner: Outcome[State], task_name: str, task_run_id: str | None) -> None:
        self._inner = inner
        self.task_name = task_name
        self.task_run_id = task_run_id

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the task run has ended (or ``timeout`` seconds)."""
        outcomes.wait_all([self._inner], timeout)

    def cancel(self) -> bool:
        """Cancel the call if it has not started yet; True if it is cancelled.

        A cancelled call never runs and is not journaled; its state is
        Cancelled and ``.result()`` raises ``TaskRunCancelled``. A call that
        is running or done cannot be cancelled (False), as with
        ``concurrent.futures``.
        """
        return self._inner.cancel()

    def cancelled(self) -> bool:
        """True if the call was cancelled before it started."""
        return self._inner.cancelled()

    @property
    def state(self) -> State:
        """The final State if the call has ended, else Pending."""
        if self._inner.cancelled():
            return self._cancelled()
        if self._inner.done():
            return self._inner.result()
        return State(StateType.PENDING, "Pending", run_id=self.task_run_id)

    def _cancelled(self) -> State:
        error = TaskRunCancelled(self.task_name, self.task_run_id)
        return State(StateType.CANCELLED, "Cancelled", str(error), 0, self.task_run_id, error)

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> Any:
        """The task's value; raises its exception if it failed (unless told not to)."""
        try:
            state = self._inner.result(timeout=timeout)
        except concurrent.futures.CancelledError:
            state = self._cancelled()
        except concurrent.futures.TimeoutError:
            raise TimeoutError(
                f"task {self.task_name!r} did not finish within {timeout} s"
            ) from None
        return state.result(raise_on_failure=raise_on_failure)

    def __repr__(self) -> str:
        return f"PersevereFuture({self.task_name!r}, {self.state})"


class PersevereFutureList(list[PersevereFuture]):
    """What ``.map`` returns: a list of futures with ``.result()`` for all of them."""

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> list[Any]:
        """Every future's value, in order."""
        return [f.result(timeout, raise_on_failure) for f in self]

    def wait(self, timeout: float | None = None) -> None:
        """Wait for all of them."""
        wait(self, timeout)


def wait(futures: Iterable[PersevereFuture], timeout: float | None = None) -> None:
    """Wait until every future has ended (or ``timeout`` seconds)."""
    outcomes.wait_all([f._inner for f in futures], timeout)


def as_completed(
    futures: Iterable[PersevereFuture], timeout: float | None = None
) -> Iterator[PersevereFuture]:
    """The futures, each as soon as it has ended."""
    by_inner = {f._inner: f for f in futures}
    for inner in outcomes.as_completed(by_inner, timeout):
        yield by_inner[inner]
