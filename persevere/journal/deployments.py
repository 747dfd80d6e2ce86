"""Deployments and work queues: what a worker may run, and where runs wait for one.

A deployment names a flow by its entrypoint, with default parameters and a
work queue. Running it makes a flow run in Scheduled on that queue; a worker
that polls the queue claims it (see :mod:`.workers`). A queue can be paused
(its runs wait) and given a limit (at most that many of its runs Pending or
Running at once, across all workers).
"""

from __future__ import annotations

import difflib
import json
import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import clock
from ..exceptions import DeploymentNotFound, QueueNotFound, RunKeyConflict, VersionConflict
from ..statemachine import StateType, check_move
from .records import FlowRun, from_row
from .results import to_json
from .statements import FLOW_COLUMNS, INSERT_STATE, new_id
from .writer import Op

if TYPE_CHECKING:
    from .journal import Journal

DEFAULT_QUEUE = "default"


@dataclass(frozen=True)
class Deployment:
    """A deployment as the journal holds it."""

    id: str
    name: str
    flow_name: str
    entrypoint: str
    parameters: str
    signature: str
    work_queue: str
    tags: str
    description: str
    created_ms: int
    updated_ms: int

    @property
    def deployment_name(self) -> str:
        """The part of ``name`` after the flow's name (which holds no ``/``)."""
        return self.name.rsplit("/", 1)[1]

    @property
    def tag_list(self) -> list[str]:
        return list(json.loads(self.tags))


@dataclass(frozen=True)
class WorkQueue:
    """A work queue, with how many of its runs wait and run now."""

    name: str
    concurrency_limit: int | None
    paused: int
    description: str
    created_ms: int
    updated_ms: int
    scheduled: int = 0
    active: int = 0


_QUEUE_COUNTS = (
    "SELECT q.*, "
    "(SELECT count(*) FROM flow_runs r WHERE r.work_queue = q.name "
    " AND r.state_type = 'SCHEDULED') AS scheduled, "
    "(SELECT count(*) FROM flow_runs r WHERE r.work_queue = q.name "
    " AND r.state_type IN ('PENDING', 'RUNNING')) AS active "
    "FROM work_queues q"
)


class Deployments:
    """Deployments, work queues, and the Scheduled runs made from deployments."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal

    # -- work queues ----------------------------------------------------------

    def queue(self, name: str) -> WorkQueue:
        rows = self._journal.query(f"{_QUEUE_COUNTS} WHERE q.name = ?", (name,))
        if not rows:
            raise QueueNotFound(name)
        return from_row(WorkQueue, rows[0])

    def queues(self) -> list[WorkQueue]:
        rows = self._journal.query(f"{_QUEUE_COUNTS} ORDER BY q.name")
        return [from_row(WorkQueue, r) for r in rows]

    def create_queue(
        self, name: str, limit: int | None = None, description: str = "", exist_ok: bool = False
    ) -> WorkQueue:
        """Make a work queue (durable). An existing one is an error unless ``exist_ok``."""
        check_queue_name(name)
        if limit is not None and limit < 0:
            raise ValueError(f"queue limit {limit} must be 0 or more")
        now = clock.now_ms()
        verb = "INSERT OR IGNORE" if exist_ok else "INSERT"
        try:
            self._journal.flush(
                [
                    Op(
                        f"{verb} INTO work_queues (name, concurrency_limit, paused, description, "
                        "created_ms, updated_ms) VALUES (?, ?, 0, ?, ?, ?)",
                        (name, limit, description, now, now),
                    )
                ]
            )
        except sqlite3.IntegrityError:
            raise ValueError(
                f"work queue {name!r} exists already; change it with "
                f"`persevere queues set-limit {name} N` or pause/resume it"
            ) from None
        return self.queue(name)

    def _update_queue(self, name: str, sets: str, params: tuple[Any, ...]) -> WorkQueue:
        self.queue(name)  # a clear error for an unknown name
        self._journal.flush(
            [
                Op(
                    f"UPDATE work_queues SET {sets}, updated_ms = ? WHERE name = ?",
                    (*params, clock.now_ms(), name),
                )
            ]
        )
        return self.queue(name)

    def pause_queue(self, name: str, paused: bool = True) -> WorkQueue:
        """Stop (or let again) workers claiming the queue's runs (durable)."""
        return self._update_queue(name, "paused = ?", (1 if paused else 0,))

    def set_queue_limit(self, name: str, limit: int | None) -> WorkQueue:
        """Cap how many of the queue's runs are Pending or Running at once; None: no cap."""
        if limit is not None and limit < 0:
            raise ValueError(f"queue limit {limit} must be 0 or more")
        return self._update_queue(name, "concurrency_limit = ?", (limit,))

    def delete_queue(self, name: str) -> None:
        """Delete a queue that no deployment uses and no run waits on (durable)."""
        queue = self.queue(name)
        users = self._journal.query(
            "SELECT name FROM deployments WHERE work_queue = ? ORDER BY name", (name,)
        )
        if users:
            names = ", ".join(r[0] for r in users)
            raise ValueError(
                f"work queue {name!r} is used by deployments {names}; delete them first"
            )
        # A Paused or Crashed run comes back to its queue (resumed, automatically or not).
        unfinished = self._journal.query(
            "SELECT count(*) FROM flow_runs WHERE work_queue = ? "
            "AND state_type NOT IN ('COMPLETED', 'FAILED', 'CANCELLED')",
            (name,),
        )[0][0]
        if unfinished:
            raise ValueError(
                f"work queue {name!r} has {unfinished} unfinished runs ({queue.scheduled} "
                f"scheduled, {queue.active} running, the rest paused or crashed); cancel them "
                "or let them finish first"
            )
        self._journal.flush([Op("DELETE FROM work_queues WHERE name = ?", (name,))])

    # -- deployments ------------------------------------------------------------

    def put(
        self,
        *,
        flow_name: str,
        name: str,
        entrypoint: str,
        parameters: dict[str, Any],
        signature: dict[str, Any],
        work_queue: str = DEFAULT_QUEUE,
        tags: list[str] | None = None,
        description: str = "",
    ) -> Deployment:
        """Register a deployment, or update the one of that name (durable).

        ``parameters`` are stored as typed JSON, as a flow run's are. The
        work queue is made if it does not exist.
        """
        check_flow_name(flow_name)
        check_deployment_name(name)
        check_queue_name(work_queue)
        full = f"{flow_name}/{name}"
        now = clock.now_ms()
        self.create_queue(work_queue, exist_ok=True)
        self._journal.flush(
            [
                Op(
                    "INSERT INTO deployments (id, name, flow_name, entrypoint, parameters, "
                    "signature, work_queue, tags, description, created_ms, updated_ms) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                    "entrypoint = excluded.entrypoint, parameters = excluded.parameters, "
                    "signature = excluded.signature, work_queue = excluded.work_queue, "
                    "tags = excluded.tags, description = excluded.description, "
                    "updated_ms = excluded.updated_ms",
                    (
                        new_id(),
                        full,
                        flow_name,
                        entrypoint,
                        to_json(parameters),
                        json.dumps(signature, sort_keys=True),
                        work_queue,
                        json.dumps(sorted(set(tags or []))),
                        description,
                        now,
                        now,
                    ),
                )
            ]
        )
        return self.get(full)

    def find(self, name: str) -> Deployment | None:
        """The deployment ``flow-name/deployment-name`` (or its id), if there is one."""
        rows = self._journal.query(
            "SELECT * FROM deployments WHERE name = ? OR id = ?", (name, name)
        )
        return from_row(Deployment, rows[0]) if rows else None

    def get(self, name: str) -> Deployment:
        """The deployment ``flow-name/deployment-name`` (or its id)."""
        found = self.find(name)
        if found is None:
            raise DeploymentNotFound(name, self._near(name))
        return found

    def _near(self, name: str) -> list[str]:
        """Names close to ``name``: same deployment name, or a likely typo."""
        names = [r[0] for r in self._journal.query("SELECT name FROM deployments ORDER BY name")]
        tail = name.rsplit("/", 1)[-1]
        near = [n for n in names if n.rsplit("/", 1)[1] == tail]
        near += difflib.get_close_matches(name, names, n=3, cutoff=0.6)
        return list(dict.fromkeys(near))[:5]

    def all(self) -> list[Deployment]:
        rows = self._journal.query("SELECT * FROM deployments ORDER BY name")
        return [from_row(Deployment, r) for r in rows]

    def delete(self, name: str) -> tuple[Deployment, list[FlowRun]]:
        """Delete a deployment (durable); returns it and the runs cancelled.

        Its schedules are deleted, with the runs they made ahead that have not
        started. Its other runs stay: those waiting for a worker (Scheduled,
        Late) are cancelled; a run a process holds (waiting for its retry, say)
        goes on.
        """
        deployment = self.get(name)
        self._journal.flush(
            [
                *self._journal.schedules.deployment_ops(deployment.id, clock.now_ms()),
                Op("DELETE FROM deployments WHERE id = ?", (deployment.id,)),
            ]
        )
        # After the delete, so that no new run of it can be made meanwhile.
        waiting = self._journal.query(
            f"SELECT {FLOW_COLUMNS} FROM flow_runs WHERE deployment_id = ? "
            "AND state_type = 'SCHEDULED' AND state_name IN ('Scheduled', 'Late')",
            (deployment.id,),
        )
        cancelled = []
        for row in waiting:
            try:
                cancelled.append(
                    self._journal.workers.finish_cancel(
                        from_row(FlowRun, row), f"deployment {deployment.name} was deleted"
                    )
                )
            except VersionConflict:
                continue  # a worker claimed it meanwhile: it runs
        return deployment, cancelled

    def runs(self, deployment: Deployment, limit: int = 20) -> list[FlowRun]:
        """A deployment's runs, newest first."""
        rows = self._journal.query(
            f"SELECT {FLOW_COLUMNS} FROM flow_runs WHERE deployment_id = ? "
            "ORDER BY created_ms DESC, rowid DESC LIMIT ?",
            (deployment.id, limit),
        )
        return [from_row(FlowRun, r) for r in rows]

    def schedule_run(
        self,
        deployment: Deployment,
        parameters: str,
        run_key: str | None = None,
        scheduled_ms: int | None = None,
        message: str = "",
    ) -> FlowRun:
        """Make a Scheduled run of a deployment on its queue (durable).

        ``parameters`` is the stored JSON of the run's parameters. With a
        ``run_key`` that a run holds already, that run is returned instead,
        if it is a run of this deployment with these parameters; else
        :class:`RunKeyConflict`.
        """
        if run_key is not None:
            existing = self._journal.find_flow_run_by_key(run_key)
            if existing is not None:
                return _same_request(existing, deployment, parameters, run_key)
        run_id, now = new_id(), clock.now_ms()
        check_move(None, StateType.SCHEDULED, "Scheduled", run_id)
        try:
            self._journal.flush(
                new_run_ops(
                    deployment,
                    run_id,
                    parameters,
                    now,
                    scheduled_ms=now if scheduled_ms is None else scheduled_ms,
                    message=message,
                    run_key=run_key,
                )
            )
        except sqlite3.IntegrityError:
            existing = self._journal.find_flow_run_by_key(run_key) if run_key else None
            if existing is None or run_key is None:
                raise
            return _same_request(existing, deployment, parameters, run_key)
        return self._journal.get_flow_run(run_id)


def new_run_ops(
    deployment: Deployment,
    run_id: str,
    parameters: str,
    now: int,
    *,
    scheduled_ms: int,
    name: str = "Scheduled",
    message: str = "",
    run_key: str | None = None,
    schedule_id: str | None = None,
    schedule_ms: int | None = None,
    verb: str = "INSERT",
) -> tuple[Op, Op]:
    """The two writes that make a run of a deployment in SCHEDULED (``name``) on its
    queue: the run, and its first history row (write the second only if the first
    inserted a row, with ``verb`` ``INSERT OR IGNORE``)."""
    state_message = "" if name == "Scheduled" else message
    values = (
        run_id, deployment.flow_name, deployment.entrypoint, parameters, name, state_message,
        run_key, deployment.id, deployment.work_queue, deployment.tags, scheduled_ms, now,
        schedule_id, schedule_ms,
    )  # fmt: skip
    insert = Op(
        f"{verb} INTO flow_runs (id, flow_name, entrypoint, parameters, state_type, "
        "state_name, state_message, version, run_key, deployment_id, work_queue, tags, "
        "scheduled_ms, created_ms, schedule_id, schedule_ms) "
        "VALUES (?, ?, ?, ?, 'SCHEDULED', ?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?)",
        values,
    )
    return insert, Op(INSERT_STATE, (run_id, 1, None, "SCHEDULED", name, now, message, None))


def overlay(stored: str, override: str) -> str:
    """Stored parameters (typed JSON of a dict) with other stored ones laid over them,
    one level deep, without decoding the values; one text for the same values (run
    keys compare it)."""
    merged = {**json.loads(stored), **json.loads(override)}
    return json.dumps(dict(sorted(merged.items())), separators=(",", ":"), allow_nan=True)


def _same_request(run: FlowRun, deployment: Deployment, parameters: str, run_key: str) -> FlowRun:
    """The run that holds ``run_key``, if it was asked for with the same deployment
    and parameters."""
    if run.deployment_id != deployment.id:
        whose = "of no deployment" if run.deployment_id is None else "of another deployment"
        raise RunKeyConflict(
            run_key, f"belongs to run {run.id} {whose} (flow {run.flow_name!r}); use another key"
        )
    if run.parameters != parameters:
        raise RunKeyConflict(
            run_key,
            f"was given to run {run.id} with other parameters ({run.parameters}); "
            "use a new run key for new parameters",
        )
    return run


def _check_name(kind: str, name: str, extra: str = "") -> None:
    if not name or name != name.strip() or any(c in name for c in extra + "\n\t"):
        shown = f"{extra!r}, " if extra else ""
        raise ValueError(
            f"{kind} name {name!r} must be non-empty, without {shown}line breaks or "
            "surrounding spaces"
        )


def check_queue_name(name: str) -> None:
    _check_name("work queue", name, ",")


def check_deployment_name(name: str) -> None:
    _check_name("deployment", name, "/")


def check_flow_name(name: str) -> None:
    """A deployed flow's name holds no ``/``: deployment names are flow/deployment."""
    if "/" in name:
        raise ValueError(
            f"flow name {name!r} holds a '/', but deployment names are "
            "flow-name/deployment-name; give the flow another name with @flow(name=...)"
        )
    _check_name("flow", name)
