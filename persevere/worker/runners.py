"""Task runners: where the bodies of submitted tasks run.

Design note. The engine of a task call (replay, journal writes, retries,
hooks) always runs on a thread of the flow's process, which alone holds the
journal; only the *body* (``task.fn(*args, **kwargs)`` with its timeout) may
run elsewhere. So a runner is a configuration that a flow run opens, with
:meth:`TaskRunner.start`, into an executor of *engine threads*; each engine
thread, when it reaches a task's body, hands it to :func:`run_body`:

- ``ThreadPoolTaskRunner``: a plain thread pool; the body runs inline on the
  engine thread (``run_body`` adds one thread-local read, ~0.1 µs a call);
- ``ProcessPoolTaskRunner`` and ``DaskTaskRunner``: a :class:`RunnerExecutor`
  whose engine threads carry the runner's *bodies* backend, which ships the
  body to a worker process or a Dask cluster and returns its value or raises
  its exception (see ``remote``, ``process_pool``, ``dask_bodies``).

Direct (not submitted) task calls run inline in the flow's thread whatever
the runner. Shutting an executor down closes its backend: with ``wait``, after
every call has ended; without, queued calls are cancelled and running bodies
abandoned (killed processes, cancelled Dask futures).

Rejected: submitting the whole engine to a process pool (the journal would
need a writer per process, which SQLite serialises and starves), and passing
the runner down through ``run_task`` (the engine's signature is shared with
other work on it; the engine thread already knows where it belongs).
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from ..exceptions import MissingDependency, RunTimeout
from .timeouts import call_with_timeout

if TYPE_CHECKING:  # an interface only: nothing to build at import time
    from collections.abc import Callable
    from typing import Protocol

    class Bodies(Protocol):
        """Where a remote runner runs task bodies, for one flow run."""

        def run(
            self,
            task: Any,
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
            timeout: RunTimeout | None,
        ) -> Any:
            """Run the body; its value, or raise its exception (``timeout`` if it timed out)."""

        def close(self, abort: bool) -> None:
            """Release the workers; with ``abort``, stop queued and running bodies first."""


P = ParamSpec("P")
T = TypeVar("T")


class _EngineThread(threading.local):
    """What an engine thread of a remote runner knows: where its bodies go."""

    bodies: Bodies | None = None  # a class default: no AttributeError on the hot path


_engine_thread = _EngineThread()


def run_body(
    task: Any, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: RunTimeout | None
) -> Any:
    """Run a task call's body where its runner says; its value, or raise its exception.

    ``timeout`` is the task's own deadline error (None without one): raised
    as this very object when the deadline passes, so the engine can tell it
    from an enclosing (the flow's) deadline.
    """
    bodies = _engine_thread.bodies
    if bodies is None:  # the flow's thread, or a thread runner's engine thread
        if timeout is None:
            return task.fn(*args, **kwargs)
        return call_with_timeout(
            task.fn, args, kwargs, task.timeout_seconds, task.timeout_mode, timeout
        )
    return bodies.run(task, args, kwargs, timeout)


def _serve_bodies_from(bodies: Bodies) -> None:
    _engine_thread.bodies = bodies


class RunnerExecutor(concurrent.futures.Executor):
    """The engine threads of one flow run, whose task bodies go to a :class:`Bodies`.

    It wraps a thread pool rather than subclassing it, so that importing
    persevere does not import the thread pool's module.
    """

    def __init__(self, bodies: Bodies, engines: int) -> None:
        self.bodies = bodies
        self._engines = concurrent.futures.ThreadPoolExecutor(
            max_workers=engines,
            thread_name_prefix="persevere-engine",
            initializer=_serve_bodies_from,
            initargs=(bodies,),
        )

    def submit(
        self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> concurrent.futures.Future[T]:
        """Run an engine call on one of the engine threads."""
        return self._engines.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """End the flow run's calls (see the module note), then close the backend."""
        self._engines.shutdown(wait=wait, cancel_futures=cancel_futures)
        self.bodies.close(abort=not wait)


class TaskRunner:
    """Where submitted task calls run. Subclasses implement :meth:`start`."""

    def start(self) -> concurrent.futures.Executor:
        """An executor of engine threads for one flow run; shut down when the run ends."""
        raise NotImplementedError


def _check_workers(max_workers: int | None) -> None:
    if max_workers is not None and max_workers < 1:
        raise ValueError(f"max_workers={max_workers!r} must be at least 1")


@dataclass(frozen=True)
class ThreadPoolTaskRunner(TaskRunner):
    """Run submitted tasks on threads of the flow's process (the default).

    Good for tasks that wait (I/O, APIs, databases); CPU-bound Python code is
    held to one core by the GIL.
    """

    max_workers: int | None = None

    def __post_init__(self) -> None:
        _check_workers(self.max_workers)

    def start(self) -> concurrent.futures.Executor:
        """A thread pool for one flow run; bodies run on its threads."""
        return concurrent.futures.ThreadPoolExecutor(
            max_workers=self.max_workers, thread_name_prefix="persevere-task"
        )


@dataclass(frozen=True)
class ProcessPoolTaskRunner(TaskRunner):
    """Run the bodies of submitted tasks in worker processes (CPU-bound work).

    Up to ``max_workers`` (default: the number of CPUs) processes, started
    with ``start_method`` (``"spawn"``, or ``"forkserver"`` on Unix; never
    ``"fork"``) when first needed and stopped when the flow run ends. The
    function, its arguments and its result are pickled with cloudpickle. The
    journal stays in the flow's process: log lines a body writes are sent
    back and journaled there. A process that dies fails only the call it was
    running (``TaskProcessDied``; retries apply). A script that runs such a
    flow needs ``if __name__ == "__main__":``, as any multiprocessing program.
    """

    max_workers: int | None = None
    start_method: str = "spawn"

    def __post_init__(self) -> None:
        _check_workers(self.max_workers)
        if self.start_method not in ("spawn", "forkserver"):
            raise ValueError(
                f"start_method={self.start_method!r}; use 'spawn' or 'forkserver' "
                "(a forked child would inherit the journal's threads and their locks)"
            )

    def start(self) -> concurrent.futures.Executor:
        """Engine threads for one flow run, each with a worker process when it needs one."""
        from .process_pool import BodyProcesses  # deferred: multiprocessing, cloudpickle

        workers = self.max_workers or os.cpu_count() or 1
        return RunnerExecutor(BodyProcesses(self.start_method), workers)


@dataclass(frozen=True)
class DaskTaskRunner(TaskRunner):
    """Run the bodies of submitted tasks on a Dask ``distributed`` cluster.

    With ``address`` (``"tcp://host:8786"``), a client of that scheduler; without,
    a cluster started for the flow run and closed at its end:
    ``cluster_class(**cluster_kwargs)`` (default ``distributed.LocalCluster``;
    a class or its dotted name). ``client_kwargs`` go to ``distributed.Client``.
    Needs the ``dask`` extra (``pip install 'persevere[dask]'``) here, and
    persevere installed on the workers.
    """

    address: str | None = None
    cluster_class: Any = None
    cluster_kwargs: dict[str, Any] | None = field(default=None, hash=False)
    client_kwargs: dict[str, Any] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        if importlib.util.find_spec("dask") is None or not _has_distributed():
            raise MissingDependency("DaskTaskRunner", "dask.distributed", "dask")
        if self.address is not None and (self.cluster_class or self.cluster_kwargs):
            raise ValueError(
                "DaskTaskRunner: give either address= (an existing cluster) "
                "or cluster_class=/cluster_kwargs= (a cluster to start), not both"
            )

    def start(self) -> concurrent.futures.Executor:
        """Connect to (or start) the cluster; engine threads for one flow run."""
        from .dask_bodies import DaskBodies  # deferred: dask takes ~0.5 s to import

        bodies = DaskBodies(
            self.address, self.cluster_class, self.cluster_kwargs, self.client_kwargs
        )
        return RunnerExecutor(bodies, bodies.engine_threads())


def _has_distributed() -> bool:
    try:
        return importlib.util.find_spec("distributed") is not None
    except ValueError:
        return False
