"""Handing submitted task calls to the task runner's executor, and their futures back.

Each call has a ``concurrent.futures.Future`` of its own, not the executor's
job's, because the call may end after its job has returned: a call whose
task run completes *hands over* its future (:func:`hand_over`) to the commit
of its final state, so that its thread goes on at once instead of waiting to
be woken after the commit (under the GIL, that wake-up costs about as much
as the engine's own work for a no-op task); whichever thread commits the
state sets the future, so a caller still sees a result only once it is
durable. ``wait``, ``as_completed`` and ``cancel`` work on the call's own
future: a call cancelled before it starts is skipped, and a job the executor
cancels (``shutdown`` with ``cancel_futures``) cancels its call.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import threading
from collections.abc import Callable
from typing import Any

#: The call this thread runs now, until it returns or hands its future over.
_running = threading.local()


class Call:
    """One submitted call: its future, the context it was submitted in, and what to run.

    ``key`` names the call for :func:`hand_over` (the engine uses its task
    run id); ``fn(*args)`` returns the future's result.
    """

    __slots__ = ("args", "context", "fn", "future", "key")

    def __init__(
        self,
        future: concurrent.futures.Future[Any],
        key: str,
        context: contextvars.Context,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
    ) -> None:
        self.future = future
        self.key = key
        self.context = context
        self.fn = fn
        self.args = args

    def run(self) -> None:
        """Run the call unless it was cancelled; set its future unless it was handed over."""
        if not self.future.set_running_or_notify_cancel():
            return
        _running.call = self
        try:
            result = self.context.run(self.fn, *self.args)
        except BaseException as exc:
            if _running.call is self:
                self.future.set_exception(exc)
        else:
            if _running.call is self:
                self.future.set_result(result)
        finally:
            _running.call = None


def hand_over(
    key: str, result: Any, failed: Callable[[BaseException], Any]
) -> Callable[[BaseException | None], None] | None:
    """Take over setting the future of the call this thread runs, if its key is ``key``.

    Returns the callback to give the commit that makes ``result`` durable:
    it sets the future to ``result``, or to ``failed(error)`` if the commit
    failed. None when this thread runs no such call (a direct call, also one
    made in a submitted call's body): the caller then waits for its commit.
    """
    call: Call | None = getattr(_running, "call", None)
    if call is None or call.key != key:
        return None
    _running.call = None
    future = call.future

    def then(error: BaseException | None) -> None:
        future.set_result(result if error is None else failed(error))

    return then


def submit_call(executor: concurrent.futures.Executor, call: Call) -> None:
    """Run a call on an executor, as one job."""
    job = executor.submit(call.run)
    job.add_done_callback(lambda job: call.future.cancel() if job.cancelled() else None)
