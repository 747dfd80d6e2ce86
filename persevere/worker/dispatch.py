"""Handing submitted task calls to the task runner's executor, and their futures back.

Each call has an :class:`~persevere.worker.outcomes.Outcome` (a small
future) of its own, not the executor's job's future, because the call may
end after its job has returned: a call whose
task run completes *hands over* its future (:func:`hand_over`) to the commit
of its final state, so that its thread goes on at once instead of waiting to
be woken after the commit (under the GIL, that wake-up costs about as much
as the engine's own work for a no-op task); whichever thread commits the
state sets the future, so a caller still sees a result only once it is
durable. ``wait``, ``as_completed`` and ``cancel`` work on the call's own
future: a call cancelled before it starts is skipped.

Nor is each call a job of its own: one job per call costs, under the GIL, a
work item, a queue hand-off and a thread's wake-up. The calls of a flow run
go into one FIFO queue (:class:`CallQueue`), and the executor is given
*drainers*: jobs that each take the next call, run it, and take the next,
until the queue is empty. A drainer that starts while calls are waiting
submits one more, so drainers grow to as many as the executor has threads
(with never more than one waiting in the executor's own queue), and each
call still starts in submission order on the next free thread, as one job
per call would. Shutting down with ``cancel_futures`` cancels the calls not
started. Rejected: fixed chunks of a mapped batch per job (a chunk of slow
calls would run on one thread while the others idle), and asking the
executor how many threads it has (a private attribute other executors lack).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from .outcomes import Outcome

#: The call this thread runs now, until it returns or hands its future over.
_running = threading.local()


class Call:
    """One submitted call: its future, the context it was submitted in, and what to run.

    It runs in a copy of ``context``, so calls can share one snapshot (a
    mapped batch does) and still not see each other's context changes.

    ``key`` names the call for :func:`hand_over` (the engine uses its task
    run id); ``fn(*args)`` returns the future's result.
    """

    __slots__ = ("args", "context", "failed", "fn", "future", "key", "result")

    def __init__(
        self,
        future: Outcome[Any],
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
        self.result: Any = None  # once handed over: what the future is set to,
        self.failed: Callable[[BaseException], Any] | None = None  # or made of the error

    def run(self) -> None:
        """Run the call unless it was cancelled; set its future unless it was handed over."""
        if not self.future.set_running_or_notify_cancel():
            return
        _running.call = self
        try:
            result = self.context.copy().run(self.fn, *self.args)
        except BaseException as exc:
            if _running.call is self:
                self.future.set_exception(exc)
        else:
            if _running.call is self:
                self.future.set_result(result)
        finally:
            _running.call = None

    def _settle(self, error: BaseException | None) -> None:
        """Set the future of a call handed over (see :func:`hand_over`)."""
        assert self.failed is not None
        self.future.set_result(self.result if error is None else self.failed(error))


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
    call.result, call.failed = result, failed
    return call._settle


class CallQueue:
    """The calls submitted in one flow run, run by drainers on its executor.

    It stands for the executor in the flow run's context: ``shutdown`` shuts
    both down.
    """

    def __init__(self, executor: concurrent.futures.Executor) -> None:
        self.executor = executor
        self._calls: deque[Call] = deque()
        self._lock = threading.Lock()
        self._queued_drainers = 0  # submitted to the executor, not started yet
        self._closed = False

    def put(self, call: Call) -> None:
        """Queue a call; it starts on the next free thread of the executor."""
        if self._closed:
            raise RuntimeError("cannot schedule new futures after shutdown")
        self._calls.append(call)
        if not self._queued_drainers:
            self._add_drainer()

    def _add_drainer(self) -> None:
        with self._lock:
            if self._queued_drainers:
                return  # that one will start
            self._queued_drainers = 1
        try:
            self._submit_drainer()
        except BaseException:
            self._queued_drainers = 0
            raise

    def _submit_drainer(self) -> None:
        self.executor.submit(self._drain).add_done_callback(self._dropped)

    def _drain(self) -> None:
        self._queued_drainers = 0
        calls = self._calls
        while True:
            try:
                call = calls.popleft()
            except IndexError:
                return
            if calls and not self._queued_drainers:
                # More are waiting: another thread may help (unless the executor is
                # shutting down; the drainers running then finish the queue).
                with contextlib.suppress(RuntimeError):
                    self._add_drainer()
            call.run()

    def _dropped(self, job: concurrent.futures.Future[None]) -> None:
        """A drainer the executor cancelled never ran: nobody will run what is queued."""
        if job.cancelled():
            self._queued_drainers = 0
            self.cancel_queued()

    def cancel_queued(self) -> None:
        """Cancel every call that has not started."""
        while True:
            try:
                self._calls.popleft().future.cancel()
            except IndexError:
                return

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Shut the executor down once the calls queued have run (or, with
        ``cancel_futures``, cancel those not started)."""
        self._closed = True
        if cancel_futures:
            self.cancel_queued()
        else:  # a drainer for each call still queued, as one job per call would have had
            with contextlib.suppress(RuntimeError):  # already shut down
                for _ in range(len(self._calls)):
                    self._submit_drainer()
        self.executor.shutdown(wait=wait, cancel_futures=cancel_futures)


class Dispatching:
    """A task runner whose executor is wrapped in a :class:`CallQueue`."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner

    def start(self) -> CallQueue:
        """The flow run's call queue, over a new executor of the runner."""
        return CallQueue(self.runner.start())
