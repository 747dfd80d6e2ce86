"""The outcome of one submitted call: a small future, and waiting on several.

Design note. A ``concurrent.futures.Future`` builds a ``threading.Condition``
when it is made: with its lock, its deque, its waiter lists and the five
lock methods it binds, nine objects the garbage collector tracks. A flow
that maps 10,000 calls keeps 10,000 of them alive, and the collections
that walk them cost more than the engine's own work per call. An
:class:`Outcome` is one tracked object; a thread that has to
wait for it registers a callback (a lock to release, a queue to put it in)
and nothing is built for outcomes nobody waits on.

It has the part of the ``concurrent.futures.Future`` interface the engine and
``PersevereFuture`` use, with the same exceptions (``CancelledError``,
``TimeoutError``, ``InvalidStateError``). Rejected: a subclass of
``concurrent.futures.Future`` that builds its condition lazily (it would
depend on that class's private attributes), and one condition shared by all
outcomes (every completion would wake every waiter).
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

_PENDING, _RUNNING, _CANCELLED, _FINISHED = range(4)

T = TypeVar("T")
Waiter = Callable[["Outcome[Any]"], None]

#: One lock for every outcome: it guards a few assignments, never a wait, and
#: a lock per outcome would be one more object for the garbage collector.
_lock = threading.Lock()


class Outcome(Generic[T]):
    """The result or exception of a call, set once; see the module note."""

    __slots__ = ("_error", "_state", "_value", "_waiters")

    def __init__(self) -> None:
        self._state = _PENDING
        self._value: T | None = None
        self._error: BaseException | None = None
        self._waiters: list[Waiter] | None = None

    def set_running_or_notify_cancel(self) -> bool:
        """Mark the call started; False if it was cancelled (it must not run)."""
        with _lock:
            if self._state == _CANCELLED:
                return False
            if self._state != _PENDING:
                raise concurrent.futures.InvalidStateError("the call has started already")
            self._state = _RUNNING
            return True

    def cancel(self) -> bool:
        """Cancel the call if it has not started; True if it is cancelled."""
        with _lock:
            if self._state == _CANCELLED:
                return True
            if self._state != _PENDING:
                return False
            self._state = _CANCELLED
            waiters, self._waiters = self._waiters, None
        _tell(waiters, self)
        return True

    def cancelled(self) -> bool:
        """True if the call was cancelled before it started."""
        return self._state == _CANCELLED

    def done(self) -> bool:
        """True once the call has a result or an exception, or was cancelled."""
        return self._state >= _CANCELLED

    def set_result(self, value: T) -> None:
        """The call's result."""
        self._end(value, None)

    def set_exception(self, error: BaseException) -> None:
        """The exception the call raised."""
        self._end(None, error)

    def _end(self, value: T | None, error: BaseException | None) -> None:
        with _lock:
            if self._state >= _CANCELLED:
                raise concurrent.futures.InvalidStateError("the call has ended already")
            self._value, self._error, self._state = value, error, _FINISHED
            waiters, self._waiters = self._waiters, None
        _tell(waiters, self)

    def result(self, timeout: float | None = None) -> T:
        """The call's result, waiting for it up to ``timeout`` seconds; raises its exception."""
        if self._state < _CANCELLED:
            wait_all([self], timeout)
        if self._state == _CANCELLED:
            raise concurrent.futures.CancelledError()
        if self._state != _FINISHED:
            raise concurrent.futures.TimeoutError()  # the builtin from 3.11 on
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]  # set with the state

    def _add_waiter(self, waiter: Waiter) -> bool:
        """Call ``waiter(self)`` when it ends; False (and no call) if it has ended."""
        with _lock:
            if self._state >= _CANCELLED:
                return False
            if self._waiters is None:
                self._waiters = []
            self._waiters.append(waiter)
            return True

    def _remove_waiter(self, waiter: Waiter) -> None:
        with _lock:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)


def _tell(waiters: list[Waiter] | None, outcome: Outcome[Any]) -> None:
    for waiter in waiters or ():
        waiter(outcome)


def finished(value: T) -> Outcome[T]:
    """An outcome that has its result already."""
    outcome: Outcome[T] = Outcome()
    outcome._state, outcome._value = _FINISHED, value
    return outcome


def wait_all(outcomes: Iterable[Outcome[Any]], timeout: float | None = None) -> None:
    """Wait until every outcome has ended, or ``timeout`` seconds have passed."""
    left = {id(o): o for o in outcomes if not o.done()}
    if not left:
        return
    count = [len(left)]
    count_lock = threading.Lock()
    all_done = threading.Lock()
    all_done.acquire()

    def one_done(outcome: Outcome[Any]) -> None:
        with count_lock:
            count[0] -= 1
            last = count[0] == 0
        if last:
            all_done.release()

    for outcome in left.values():
        if not outcome._add_waiter(one_done):
            one_done(outcome)
    try:
        all_done.acquire(timeout=-1 if timeout is None else max(0.0, timeout))
    finally:
        for outcome in left.values():
            outcome._remove_waiter(one_done)


def as_completed(
    outcomes: Iterable[Outcome[T]], timeout: float | None = None
) -> Iterator[Outcome[T]]:
    """The outcomes, each as soon as it has ended; ``TimeoutError`` after ``timeout`` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    pending = {id(o): o for o in outcomes}
    ended: queue.SimpleQueue[Outcome[T]] = queue.SimpleQueue()
    try:
        for outcome in list(pending.values()):
            if not outcome._add_waiter(ended.put):
                ended.put(outcome)
        while pending:
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                raise concurrent.futures.TimeoutError(
                    f"{len(pending)} of the calls did not end within {timeout} s"
                )
            try:
                outcome = ended.get(timeout=wait)
            except queue.Empty:
                continue
            if pending.pop(id(outcome), None) is not None:
                yield outcome
    finally:
        for outcome in pending.values():
            outcome._remove_waiter(ended.put)
