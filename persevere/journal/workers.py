"""Workers, claims, automatic resumes and cancel requests: the journal's side.

A worker announces itself in ``workers`` and heartbeats there. It claims a
Scheduled run with one ``BEGIN IMMEDIATE`` transaction that finds the
oldest due run on its queues (queue not paused, queue under its limit) and
moves it Scheduled -> Pending under the worker's name and a new lease token,
compared and set on the run's version: two workers can never both claim a
run, and a queue's limit holds across every worker on the database.

Whether a worker or a run's process is alive is decided in ``worker``
(pids, leases); here are the reads and writes it needs.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import clock
from ..exceptions import RunNotCancellable
from ..statemachine import Owner, StateType
from .hooks import HooksDue
from .records import DEFAULT_AUTO_RESUMES, FlowRun, from_row
from .statements import FLOW_COLUMNS, end_with_tasks, move
from .writer import Op

if TYPE_CHECKING:
    from .journal import Journal

_ACTIVE = "('PENDING', 'RUNNING')"


@dataclass(frozen=True)
class WorkerRecord:
    """A worker as it announced itself, with how many runs it holds now."""

    name: str
    host: str
    pid: int
    owner_started: str
    queues: str
    run_limit: int
    started_ms: int
    heartbeat_ms: int
    stopped_ms: int | None
    held: int = 0

    @property
    def owner(self) -> Owner:
        return Owner(self.host, self.pid, self.owner_started)

    @property
    def queue_list(self) -> list[str]:
        """The queues it polls; empty: every queue."""
        return list(json.loads(self.queues))


class Workers:
    """The worker registry, claims, automatic resumes, releases and cancel requests."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal

    # -- the registry -------------------------------------------------------------

    def get(self, name: str) -> WorkerRecord | None:
        rows = self._journal.query(f"{_WORKERS} WHERE w.name = ?", (name,))
        return from_row(WorkerRecord, rows[0]) if rows else None

    def all(self) -> list[WorkerRecord]:
        rows = self._journal.query(f"{_WORKERS} ORDER BY w.name")
        return [from_row(WorkerRecord, r) for r in rows]

    def register(self, name: str, owner: Owner, queues: Sequence[str], limit: int) -> None:
        """Announce a worker (durable); replaces a stopped or dead one of that name."""
        now = clock.now_ms()
        self._journal.flush(
            [
                Op(
                    "INSERT OR REPLACE INTO workers (name, host, pid, owner_started, queues, "
                    "run_limit, started_ms, heartbeat_ms, stopped_ms) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                    (
                        name,
                        owner.host,
                        owner.pid,
                        owner.started,
                        json.dumps(list(queues)),
                        limit,
                        now,
                        now,
                    ),
                )
            ]
        )

    def heartbeat(self, name: str) -> None:
        """Say the worker lives, and renew the leases of the runs it holds (durable).

        A run's own process renews its lease too; the worker's renewal keeps
        it alive while that process is busy in code that holds the GIL.
        """
        now = clock.now_ms()
        expires = now + int(self._journal.settings.lease_seconds * 1000)
        self._journal.flush(
            [
                Op("UPDATE workers SET heartbeat_ms = ? WHERE name = ?", (now, name)),
                Op(
                    "UPDATE flow_runs SET lease_expires_ms = ? WHERE worker_name = ? "
                    f"AND state_type IN {_ACTIVE} AND lease_token IS NOT NULL",
                    (expires, name),
                ),
            ]
        )

    def stopped(self, name: str) -> None:
        """The worker has stopped (durable)."""
        self._journal.flush(
            [Op("UPDATE workers SET stopped_ms = ? WHERE name = ?", (clock.now_ms(), name))]
        )

    def forget(self, names: Sequence[str]) -> None:
        """Remove workers from the registry (durable)."""
        self._journal.flush([Op("DELETE FROM workers WHERE name = ?", (n,)) for n in names])

    # -- claims -------------------------------------------------------------------

    def claim(self, worker: str, queues: Sequence[str], owner: Owner, token: str) -> FlowRun | None:
        """Claim the next due Scheduled run on ``queues`` (all if empty) for ``worker``.

        One transaction: the run moves Scheduled -> Pending with the worker
        as its owner and ``token`` as its lease, or nothing happens. None if
        no run is due, every due run's queue is paused or at its limit.
        """
        now = clock.now_ms()
        lease_ms = int(self._journal.settings.lease_seconds * 1000)
        where = ""
        params: list[object] = [now]
        if queues:
            where = f"AND r.work_queue IN ({', '.join('?' * len(queues))})"
            params = [*queues, now]

        due = (
            "SELECT r.id, r.version FROM flow_runs r "
            "JOIN work_queues q ON q.name = r.work_queue "
            f"WHERE r.state_type = 'SCHEDULED' {where} AND q.paused = 0 "
            "AND COALESCE(r.scheduled_ms, 0) <= ? "
            "AND (q.concurrency_limit IS NULL OR q.concurrency_limit > "
            "  (SELECT count(*) FROM flow_runs a WHERE a.work_queue = q.name "
            f"   AND a.state_type IN {_ACTIVE})) "
            "ORDER BY r.scheduled_ms, r.id LIMIT 1"
        )
        if not self._journal.query(due, params):
            return None  # an idle poll reads; it takes no write lock

        def work(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(due, params).fetchone()
            if row is None:
                return None
            run_id, version = row[0], row[1]
            sets = {
                "worker_name": worker,
                "lease_token": token,
                "owner_host": owner.host,
                "owner_pid": owner.pid,
                "owner_started": owner.started,
                "lease_expires_ms": now + lease_ms,
            }
            ops = move(
                "flow_runs",
                run_id,
                StateType.SCHEDULED,
                version,
                StateType.PENDING,
                "Pending",
                f"claimed by worker {worker}",
                now,
                sets,
            )
            for op in ops:
                if conn.execute(op.sql, op.params).rowcount != 1:
                    raise sqlite3.IntegrityError(f"claim of run {run_id} lost its race")
            return str(run_id)

        claimed = self._journal.writer.transaction(work)
        return self._journal.get_flow_run(claimed) if claimed else None

    def held_by(self, worker: str) -> list[FlowRun]:
        """The unfinished runs a worker claimed (Pending, Running, Cancelling)."""
        rows = self._journal.query(
            f"SELECT {FLOW_COLUMNS} FROM flow_runs WHERE worker_name = ? "
            f"AND state_type IN {_ACTIVE}",
            (worker,),
        )
        return [from_row(FlowRun, r) for r in rows]

    # -- crashed runs come back -----------------------------------------------------

    def crashed_to_resume(self, limit: int = 100) -> list[FlowRun]:
        """Crashed runs on a work queue that may still be resumed automatically."""
        rows = self._journal.query(
            f"SELECT {FLOW_COLUMNS} FROM flow_runs WHERE state_type = 'CRASHED' "
            "AND work_queue IS NOT NULL AND parent_flow_run_id IS NULL "
            "AND auto_resumes < COALESCE(max_auto_resumes, ?) ORDER BY ended_ms LIMIT ?",
            (DEFAULT_AUTO_RESUMES, limit),
        )
        return [from_row(FlowRun, r) for r in rows]

    def reschedule(self, run: FlowRun, message: str, automatic: bool) -> FlowRun:
        """Put an unfinished run back on its queue: -> Scheduled, due now (durable, CAS).

        ``automatic`` (a resume after a crash) counts against the flow's
        automatic resumes; a release by a worker that stops does not.
        Raises :class:`VersionConflict` if somebody moved the run first.
        """
        now = clock.now_ms()
        sets = {
            "scheduled_ms": now,
            "worker_name": None,
            "lease_token": None,
            "retries_used": 0,
            "auto_resumes": run.auto_resumes + 1 if automatic else run.auto_resumes,
        }
        self._journal.flush(
            move(
                "flow_runs",
                run.id,
                run.state_type,
                run.version,
                StateType.SCHEDULED,
                "Scheduled",
                message,
                now,
                sets,
            )
        )
        return self._journal.get_flow_run(run.id)

    @staticmethod
    def _resumes_left(run: FlowRun) -> bool:
        """True if a worker would still resume this crashed run by itself."""
        top = run.work_queue is not None and run.parent_flow_run_id is None
        return top and run.auto_resumes < run.auto_resumes_allowed

    # -- cancel ------------------------------------------------------------------------

    def request_cancel(self, run: FlowRun, message: str) -> FlowRun:
        """Cancel a run (durable, CAS).

        A run that is not executing (Scheduled, Pending, Paused) becomes
        Cancelled at once; a Running one becomes Cancelling, and whoever
        stops its process then calls :meth:`finish_cancel`.
        """
        if run.state_type in (StateType.SCHEDULED, StateType.PENDING, StateType.PAUSED):
            return self.finish_cancel(run, message)
        if run.state_type is StateType.CRASHED and self._resumes_left(run):
            # A worker would resume it: cancel it on its way back (Crashed -> Scheduled -> ...).
            ops = move(
                "flow_runs",
                run.id,
                run.state_type,
                run.version,
                StateType.SCHEDULED,
                "Scheduled",
                message,
                clock.now_ms(),
            )
            ops += self._cancel_ops(run, StateType.SCHEDULED, run.version + 1, message)
            self._journal.flush(ops)
            return self._journal.get_flow_run(run.id)
        if run.state_type is not StateType.RUNNING:
            raise RunNotCancellable(
                run.id,
                f"run {run.id} is {run.state_name}: it has ended, there is nothing to cancel",
            )
        if run.state_name == "Cancelling":
            return run
        now = clock.now_ms()
        self._journal.flush(
            move(
                "flow_runs",
                run.id,
                run.state_type,
                run.version,
                StateType.RUNNING,
                "Cancelling",
                message,
                now,
            )
        )
        return self._journal.get_flow_run(run.id)

    def finish_cancel(self, run: FlowRun, message: str) -> FlowRun:
        """The run (and its unfinished task runs) becomes Cancelled (durable, CAS).

        The flow's ``on_cancellation`` hooks are recorded as owed when the run
        had started; its process runs them if it ended the run itself.
        """
        self._journal.flush(self.cancel_ops(run, message))
        return self._journal.get_flow_run(run.id)

    def cancel_ops(self, run: FlowRun, message: str) -> list[Op]:
        """The writes of :meth:`finish_cancel`, for a caller that makes them part of a
        transaction of its own."""
        return self._cancel_ops(run, run.state_type, run.version, message)

    def _cancel_ops(self, run: FlowRun, state: StateType, version: int, message: str) -> list[Op]:
        """The writes that cancel a run from ``state`` at ``version``, with its unfinished
        task runs and subflow runs (theirs too)."""
        unfinished = (StateType.PENDING, StateType.RUNNING, StateType.SCHEDULED)
        ops = end_with_tasks(
            run, state, version, StateType.CANCELLED, "Cancelled", message,
            clock.now_ms(), self._journal.task_runs(run.id), unfinished,
        )  # fmt: skip
        if state in (StateType.RUNNING, StateType.PAUSED):  # it had started
            ops.append(HooksDue.due_op(run.id, version + 1, "on_cancellation"))
        rows = self._journal.query(
            f"SELECT {FLOW_COLUMNS} FROM flow_runs WHERE parent_flow_run_id = ? "
            "AND state_type IN ('SCHEDULED', 'PENDING', 'RUNNING', 'PAUSED')",
            (run.id,),
        )
        for row in rows:
            child = from_row(FlowRun, row)
            ops += self._cancel_ops(child, child.state_type, child.version, message)
        return ops


_WORKERS = (
    "SELECT w.*, (SELECT count(*) FROM flow_runs r WHERE r.worker_name = w.name "
    f"AND r.state_type IN {_ACTIVE}) AS held FROM workers w"
)
