"""Timeouts that stop work: an interrupt in this process, or a child process killed.

Design note. Python cannot stop a thread from outside. So:

- ``timeout_mode="interrupt"`` (the default): in the main thread, a deadline
  is a ``SIGALRM`` timer whose handler raises :class:`RunTimeout` inside the
  running code, which stops Python code and ``time.sleep`` at once, but not a
  long call inside a C extension that does not check for signals. Deadlines
  nest (a task's inside its flow's): the timer is set for the earliest. In
  any other thread, the body runs in a helper thread and is *abandoned* at the
  deadline: the run is TimedOut on time, but the body goes on in the
  background until it returns.
- ``timeout_mode="process"``: the body runs in a forked child process in its
  own process group, and the whole group is killed (SIGKILL) at the deadline,
  shell commands the body started included. Arguments reach the child by
  fork; the result comes back pickled through a pipe, so it must be
  picklable. The child does not write to the journal (its log lines go to
  stderr only). Unix only.

Rejected: ``ctypes.pythonapi.PyThreadState_SetAsyncExc`` (it cannot interrupt
a blocking call either, and can leave locks held), and a multiprocessing pool
(it needs every argument picklable and keeps processes around).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pickle
import select
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..context import flow_run_context
from ..exceptions import RunTimeout

_deadlines: dict[int, tuple[float, RunTimeout]] = {}
_ids = itertools.count()


def _arm() -> None:
    if not _deadlines:
        signal.setitimer(signal.ITIMER_REAL, 0)
        return
    earliest = min(when for when, _ in _deadlines.values())
    signal.setitimer(signal.ITIMER_REAL, max(earliest - time.monotonic(), 0.001))


def _expire(signum: int, frame: Any) -> None:
    now = time.monotonic()
    expired = [(when, error) for when, error in _deadlines.values() if when <= now]
    if not expired:
        _arm()  # woken early: wait on
        return
    raise min(expired, key=lambda item: item[0])[1]


@contextlib.contextmanager
def deadline(seconds: float, error: RunTimeout) -> Iterator[None]:
    """Raise ``error`` in this (main) thread if the block runs longer than ``seconds``."""
    key = next(_ids)
    previous = signal.signal(signal.SIGALRM, _expire)
    _deadlines[key] = (time.monotonic() + seconds, error)
    _arm()
    try:
        yield
    finally:
        del _deadlines[key]
        _arm()
        if not _deadlines:
            signal.signal(signal.SIGALRM, previous)


def call_with_timeout(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    seconds: float,
    mode: str,
    error: RunTimeout,
) -> Any:
    """``fn(*args, **kwargs)``, stopped by ``error`` after ``seconds`` (see the module note)."""
    if mode == "process":
        return _in_child(fn, args, kwargs, seconds, error)
    if threading.current_thread() is threading.main_thread():
        with deadline(seconds, error):
            return fn(*args, **kwargs)
    return _in_helper_thread(fn, args, kwargs, seconds, error)


def _in_helper_thread(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    seconds: float,
    error: RunTimeout,
) -> Any:
    outcome: list[tuple[bool, Any]] = []

    def body() -> None:
        try:
            outcome.append((True, fn(*args, **kwargs)))
        except BaseException as exc:
            outcome.append((False, exc))

    helper = threading.Thread(target=body, name="persevere-timed-body", daemon=True)
    helper.start()
    helper.join(seconds)
    if not outcome:
        raise error  # the body goes on in its thread: Python cannot stop it
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def _in_child(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    seconds: float,
    error: RunTimeout,
) -> Any:
    import cloudpickle  # deferred: only the process mode needs it

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: run the body, send back the outcome, leave at once
        os.close(read_end)
        os.setpgid(0, 0)
        flow_run_context.set(None)  # never touch the parent's journal connection
        try:
            payload = cloudpickle.dumps((True, fn(*args, **kwargs)))
        except BaseException as exc:
            try:
                payload = cloudpickle.dumps((False, exc))
            except Exception:
                payload = cloudpickle.dumps((False, RuntimeError(f"{type(exc).__name__}: {exc}")))
        with os.fdopen(write_end, "wb") as out:
            out.write(payload)
        os._exit(0)
    os.close(write_end)
    with contextlib.suppress(OSError):
        os.setpgid(pid, pid)  # also here: no race with the child's own call
    data = _read_until(read_end, time.monotonic() + seconds)
    os.close(read_end)
    if data is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise error
    _, status = os.waitpid(pid, 0)
    if not data:
        raise RuntimeError(f"the task's process ended without a result (status {status})")
    ok, value = pickle.loads(data)  # from our own child, through a pipe: trusted
    if not ok:
        raise value
    return value


def _read_until(fd: int, deadline_at: float) -> bytes | None:
    """Everything from ``fd`` until end of file, or None if the deadline comes first."""
    chunks: list[bytes] = []
    while True:
        remaining = deadline_at - time.monotonic()
        if remaining <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            return None
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
