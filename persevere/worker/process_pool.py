"""Worker processes for task bodies (``ProcessPoolTaskRunner``).

Design note. Each engine thread of a flow run owns at most one worker
process, started with the ``spawn`` (or ``forkserver``) method on its first
body and reused for the next ones. A body goes to it over a pipe as bytes
(see ``remote``) and its outcome comes back the same way. So the pool always
knows which call a process was running: if the process dies (SIGKILL, the
out-of-memory killer), only that call fails, with
:class:`~persevere.exceptions.TaskProcessDied` (retries apply), and the
engine thread starts a new process for its next call. At a task's deadline
the body's own timer in the child raises ``RunTimeout`` in it; if the body
does not return (stuck in C code), the process is killed a moment later.

Workers ignore SIGINT (Ctrl-C is the flow's to handle: it kills them through
:meth:`BodyProcesses.close`) and leave on their own when the flow's process
dies, so a SIGKILLed flow does not leave bodies running for long.

Rejected: ``concurrent.futures.ProcessPoolExecutor`` (when one worker dies it
fails every pending call with ``BrokenProcessPool``, and it cannot stop one
call at its deadline), and the ``fork`` method (the flow's process has journal
threads that may hold locks at the moment of the fork).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from typing import Any

from ..exceptions import RunTimeout, TaskProcessDied, TaskRunnerClosed
from . import remote

#: How long after a task's deadline its process is killed if the body's own
#: timer has not stopped it.
KILL_GRACE_SECONDS = 1.0


class _Worker:
    """One worker process and the parent's end of its pipe."""

    def __init__(self, process: Any, conn: multiprocessing.connection.Connection) -> None:
        self.process = process
        self.conn = conn


class BodyProcesses:
    """The worker processes of one flow run; engine threads call :meth:`run`."""

    def __init__(self, start_method: str) -> None:
        self._context = multiprocessing.get_context(start_method)
        self._mine = threading.local()  # the engine thread's own worker
        self._lock = threading.Lock()
        self._workers: set[_Worker] = set()
        self._closed = False

    def run(self, task: Any, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: Any) -> Any:
        """Run a task body in this engine thread's worker; its value, or raise its exception."""
        payload = remote.pack(task, args, kwargs)
        worker = self._worker(task.name)
        seconds = None if timeout is None else timeout.seconds + KILL_GRACE_SECONDS
        outcome = self._exchange(worker, payload, task.name, seconds, timeout)
        return remote.unpack(outcome, task, timeout)

    def _exchange(
        self,
        worker: _Worker,
        payload: bytes,
        task_name: str,
        seconds: float | None,
        timeout: RunTimeout | None,
    ) -> bytes:
        ready: list[Any] = []
        with contextlib.suppress(OSError):  # a worker that died: its pipe is broken
            worker.conn.send_bytes(payload)
            ready = multiprocessing.connection.wait([worker.conn, worker.process.sentinel], seconds)
            if worker.conn in ready:
                with contextlib.suppress(EOFError):
                    return worker.conn.recv_bytes()
        timed_out = not ready and worker.process.is_alive()
        self._discard(worker)
        if self._closed:
            raise TaskRunnerClosed(task_name)
        if timed_out and timeout is not None:
            raise timeout
        raise TaskProcessDied(task_name, worker.process.pid, worker.process.exitcode)

    def _worker(self, task_name: str) -> _Worker:
        worker: _Worker | None = getattr(self._mine, "worker", None)
        if worker is not None and worker.process.is_alive():
            return worker
        if worker is not None:
            self._discard(worker)
        if self._closed:
            raise TaskRunnerClosed(task_name)
        mine, theirs = self._context.Pipe(duplex=True)
        process = self._context.Process(  # type: ignore[attr-defined]
            target=serve, args=(theirs,), name="persevere-body", daemon=True
        )
        process.start()
        theirs.close()
        worker = _Worker(process, mine)
        with self._lock:
            closed = self._closed
            if not closed:
                self._workers.add(worker)
        if closed:
            self._stop(worker, kill=True)
            raise TaskRunnerClosed(task_name)
        self._mine.worker = worker
        return worker

    def _discard(self, worker: _Worker) -> None:
        with self._lock:
            self._workers.discard(worker)
        if getattr(self._mine, "worker", None) is worker:
            self._mine.worker = None
        self._stop(worker, kill=True)

    @staticmethod
    def _stop(worker: _Worker, kill: bool) -> None:
        if kill and worker.process.is_alive():
            worker.process.kill()
        worker.conn.close()  # an idle worker reads end of file and leaves
        worker.process.join(5)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()

    def close(self, abort: bool) -> None:
        """Stop the workers: idle ones leave; with ``abort``, running bodies are killed."""
        with self._lock:
            self._closed = True
            workers = list(self._workers)
            self._workers.clear()
        if abort:
            for worker in workers:  # their engine threads see them die and stop
                worker.process.kill()
            return
        for worker in workers:  # every engine thread has finished: all are idle
            worker.conn.close()
        for worker in workers:
            self._stop(worker, kill=False)


def serve(conn: multiprocessing.connection.Connection) -> None:
    """A worker process's loop: run each body sent, send back its outcome."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _leave_with_parent()
    while True:
        try:
            payload = conn.recv_bytes()
        except (EOFError, OSError):
            return
        conn.send_bytes(remote.run_packed(payload))


def _leave_with_parent() -> None:
    """End this process soon after the flow's process is gone (it is then adopted)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="persevere-parent-watch", daemon=True).start()
