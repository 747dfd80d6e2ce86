"""Task bodies on a Dask ``distributed`` cluster (``DaskTaskRunner``).

Imported only when a DaskTaskRunner starts: dask takes about half a second
to import, and ``import persevere`` must not pay for it.

Each body is one Dask task running :func:`persevere.worker.remote.run_packed`
on the packed call (bytes in, bytes out), so Dask never has to pickle user
values or exceptions itself, and log lines come back with the outcome. Keys
read ``<task name>-<task run id>-<attempt>`` (unique: an attempt is never
submitted twice), so the dashboard shows which task run a Dask task is.
Retries are the engine's, not Dask's. A worker that dies mid-body makes
Dask run it elsewhere, up to its ``allowed-failures``; then the call fails
with Dask's ``KilledWorker``.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from typing import Any

import distributed

from ..context import task_run_context
from ..exceptions import RunTimeout, TaskRunnerClosed
from . import remote

#: How long after a task's deadline its Dask future is cancelled if the body's
#: own timer has not ended it (bodies in worker threads are abandoned, not killed).
CANCEL_GRACE_SECONDS = 1.0


def _cluster_class(spec: Any) -> Any:
    if spec is None:
        return distributed.LocalCluster
    if isinstance(spec, str):
        module, _, name = spec.rpartition(".")
        return getattr(importlib.import_module(module), name)
    return spec


class DaskBodies:
    """A Dask client (and the cluster started for it) serving one flow run's bodies."""

    def __init__(
        self,
        address: str | None,
        cluster_class: Any,
        cluster_kwargs: dict[str, Any] | None,
        client_kwargs: dict[str, Any] | None,
    ) -> None:
        options = {"set_as_default": False, **(client_kwargs or {})}
        self.cluster: Any = None
        if address is not None:
            self.client = distributed.Client(address, **options)
        else:
            self.cluster = _cluster_class(cluster_class)(**(cluster_kwargs or {}))
            try:
                self.client = distributed.Client(self.cluster, **options)
            except BaseException:
                self.cluster.close()
                raise
        self._lock = threading.Lock()
        self._pending: set[Any] = set()
        self._closed = False

    def engine_threads(self) -> int:
        """How many calls to keep in flight: twice the cluster's threads, at least 8."""
        threads = int(sum(self.client.nthreads().values()))
        return max(8, 2 * threads)

    def run(
        self, task: Any, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: RunTimeout | None
    ) -> Any:
        """Run a task body on the cluster; its value, or raise its exception."""
        payload = remote.pack(task, args, kwargs)
        ctx = task_run_context.get()
        key = f"{task.name}-{ctx.task_run_id}-{ctx.attempt}" if ctx else None
        with self._lock:
            if self._closed:
                raise TaskRunnerClosed(task.name)
            future = self.client.submit(remote.run_packed, payload, key=key, pure=False)
            self._pending.add(future)
        seconds = None if timeout is None else timeout.seconds + CANCEL_GRACE_SECONDS
        try:
            data = future.result(timeout=seconds)
        except distributed.TimeoutError:
            future.cancel()
            if timeout is None:
                raise
            raise timeout from None
        except BaseException as exc:
            if self._closed:
                raise TaskRunnerClosed(task.name) from exc
            raise
        finally:
            with self._lock:
                self._pending.discard(future)
        return remote.unpack(data, task, timeout)

    def close(self, abort: bool) -> None:
        """Close the client, and the cluster if it was started here."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pending = list(self._pending)
        if abort and pending:
            with contextlib.suppress(Exception):
                self.client.cancel(pending)
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()
