"""Durable waits: sleeps, pauses and suspensions of flow runs, and their answers.

A wait is a call inside a flow, recorded like a task call at its position in
the run (a task run of kind ``sleep`` or ``pause``), so replay knows whether
it is over:

- a sleep's task run holds its wake-up time (``next_attempt_ms``) from the
  moment it starts: a process that dies during the sleep is resumed and
  sleeps only the remainder. A long sleep under a worker suspends the run
  (Paused/Suspended, ``scheduled_ms`` = the wake-up time) and a scheduler
  makes it Scheduled again when the time comes;
- a pause's task run stays Running until it is answered: Completed with the
  input as its result (a resume), or Failed (a rejection, or a timeout). The
  flow run is Paused (its process waits) or Suspended (its process let go),
  with the pause's deadline, what a timeout does, and the JSON schema of the
  input it waits for in ``pause_*`` columns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import clock
from ..statemachine import StateType
from .hooks import HooksDue
from .records import FlowRun, TaskRun, TaskStart, from_row
from .statements import FLOW_COLUMNS, TASK_COLUMNS, end_with_tasks, finish_task, move
from .writer import Op

if TYPE_CHECKING:
    from .journal import Journal

_CLEARED = {"pause_deadline_ms": None, "pause_on_timeout": None, "pause_input": None}


class Pauses:
    """The journal's side of sleeps, pauses, suspensions, resumes and timeouts."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal

    # -- inside the run --------------------------------------------------------------

    def begin_wait(self, start: TaskStart, until_ms: int | None, message: str) -> None:
        """Journal that a started sleep or pause call waits until ``until_ms`` (durable)."""
        self._journal.writer.commit(
            [
                Op(
                    "UPDATE task_runs SET next_attempt_ms = ?, state_message = ? WHERE id = ?",
                    (until_ms, message, start.id),
                    fence=start.flow_run_id,
                )
            ]
        )

    def pause(
        self,
        run: FlowRun,
        suspend: bool,
        message: str,
        deadline_ms: int | None = None,
        on_timeout: str = "fail",
        schema: str | None = None,
        wake_ms: int | None = None,
        sleeping: TaskStart | None = None,
    ) -> FlowRun:
        """Move the run Running -> Paused (its process waits) or Suspended (it lets go)
        (durable, CAS, fenced by the run's lease).

        ``wake_ms``: when a scheduler wakes a Suspended run by itself (a sleep),
        whose task run ``sleeping`` then waits in Scheduled until it is re-run.
        """
        now = clock.now_ms()
        sets: dict[str, Any] = {
            "pause_deadline_ms": deadline_ms,
            "pause_on_timeout": on_timeout if deadline_ms is not None else None,
            "pause_input": schema,
        }
        if suspend:
            sets.update(lease_token=None, ended_ms=now, scheduled_ms=wake_ms)
        name = "Suspended" if suspend else "Paused"
        ops = move(
            "flow_runs", run.id, run.state_type, run.version, StateType.PAUSED, name, message,
            now, sets, fence=run.id,
        )  # fmt: skip
        if sleeping is not None:
            ops += move(
                "task_runs", sleeping.id, StateType.RUNNING, sleeping.version,
                StateType.SCHEDULED, "Scheduled", message, now, None, run.id,
            )  # fmt: skip
        self._journal.writer.commit(ops)
        if suspend:
            self._journal.writer.release(run.id)
        return self._journal.get_flow_run(run.id)

    # -- answers -----------------------------------------------------------------------

    def open_pause(self, run_id: str) -> TaskRun | None:
        """The pause call a run waits at (its pause task run still Running), if any."""
        rows = self._journal.query(
            f"SELECT {TASK_COLUMNS} FROM task_runs WHERE id > ? AND id < ? "
            "AND kind = 'pause' AND state_type = 'RUNNING' ORDER BY id DESC LIMIT 1",
            (run_id + ".", run_id + "/"),
        )
        return from_row(TaskRun, rows[0]) if rows else None

    def answer(
        self,
        run: FlowRun,
        pause: TaskRun,
        value: Any,
        rejected: str | None,
        message: str,
        in_process: bool,
    ) -> FlowRun:
        """Answer a paused run (durable, CAS): its pause call Completed with ``value`` as
        its result, or Failed if ``rejected`` (the reason); the run goes back to Running
        under the process that waits for it (``in_process``), else to Scheduled, due now.
        """
        journal, now = self._journal, clock.now_ms()
        start = TaskStart(
            pause.id, run.id, pause.position, pause.task_key, pause.dynamic_key, pause.kind,
            pause.created_ms, pause.version, (), pause.attempt,
        )  # fmt: skip
        if rejected is None:
            stored = journal.store(value, "json", f"input of pause {pause.task_key!r}", None)
            ops = finish_task(
                start, StateType.COMPLETED, "Completed", message, stored, now, False, False
            )
        else:
            ops = finish_task(start, StateType.FAILED, "Failed", rejected, None, now, False, False)
        if in_process:
            ops += move(
                "flow_runs", run.id, run.state_type, run.version, StateType.RUNNING, "Running",
                message, now, dict(_CLEARED),
            )  # fmt: skip
        else:
            ops += self._to_scheduled(run, message, now)
        journal.flush(ops)
        return journal.get_flow_run(run.id)

    def wake(self, run: FlowRun, message: str) -> FlowRun:
        """Paused or Suspended -> Scheduled, due now, for a worker (or a resume) to
        execute it again (durable, CAS)."""
        self._journal.flush(self._to_scheduled(run, message, clock.now_ms()))
        return self._journal.get_flow_run(run.id)

    @staticmethod
    def _to_scheduled(run: FlowRun, message: str, now: int) -> list[Op]:
        sets = {**_CLEARED, "scheduled_ms": now, "worker_name": None, "lease_token": None}
        return move(
            "flow_runs", run.id, run.state_type, run.version, StateType.SCHEDULED, "Scheduled",
            message, now, sets,
        )  # fmt: skip

    # -- for schedulers ----------------------------------------------------------------

    def due_wakeups(self, now_ms: int, limit: int = 100) -> list[FlowRun]:
        """Suspended runs whose wake-up time has come."""
        rows = self._journal.query(
            f"SELECT {FLOW_COLUMNS} FROM flow_runs WHERE state_type = 'PAUSED' "
            "AND state_name = 'Suspended' AND scheduled_ms IS NOT NULL AND scheduled_ms <= ? "
            "ORDER BY scheduled_ms LIMIT ?",
            (now_ms, limit),
        )
        return [from_row(FlowRun, r) for r in rows]

    def past_deadline(self, now_ms: int, limit: int = 100) -> list[FlowRun]:
        """Paused or Suspended runs whose pause has timed out."""
        rows = self._journal.query(
            f"SELECT {FLOW_COLUMNS} FROM flow_runs WHERE state_type = 'PAUSED' "
            "AND pause_deadline_ms IS NOT NULL AND pause_deadline_ms <= ? "
            "ORDER BY pause_deadline_ms LIMIT ?",
            (now_ms, limit),
        )
        return [from_row(FlowRun, r) for r in rows]

    def expire(self, run: FlowRun, message: str) -> FlowRun:
        """End a run whose pause timed out and that no process waits for: Failed
        (TimedOut), or Cancelled if its pause said so, its pause call with it (durable, CAS)."""
        cancel = run.pause_on_timeout == "cancel"
        target = StateType.CANCELLED if cancel else StateType.FAILED
        name = "Cancelled" if cancel else "TimedOut"
        ops = end_with_tasks(
            run, run.state_type, run.version, target, name, message, clock.now_ms(),
            self._journal.task_runs(run.id), (StateType.RUNNING,),
        )  # fmt: skip
        ops.append(
            HooksDue.due_op(run.id, run.version + 1, "on_cancellation" if cancel else "on_failure")
        )
        self._journal.flush(ops)
        return self._journal.get_flow_run(run.id)
