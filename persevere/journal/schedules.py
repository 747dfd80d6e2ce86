"""Schedules of deployments, and the runs the scheduler makes from them.

A schedule says when a deployment runs by itself: a calendar (cron, interval
or rrule, read in a timezone), parameters laid over the deployment's, a
catch-up policy and a grace period. Its ``cursor_ms`` is the latest time the
scheduler has dealt with: made a run for, or decided not to.

The scheduler works on one schedule in one ``BEGIN IMMEDIATE`` transaction
(:meth:`Schedules.advance`): it reads the schedule (its cursor as it is
now), its runs that wait and how many are made ahead, lets a pure planner
decide, then cancels, inserts and moves the cursor (compare-and-set on the
cursor it read). The unique index on ``flow_runs (schedule_id, schedule_ms)``
is the last guard: however many schedulers run at once, a schedule has at
most one run per time. The planner is handed in (see
``persevere.worker.scheduler``) because what it needs, the calendar, is no
business of the journal's and costs an import that ``import persevere``
should not pay.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import clock
from ..exceptions import ScheduleNotFound
from ..statemachine import StateType, check_move
from ..statemachine.catchup import NewRun, Plan, grace_label
from .deployments import Deployment, new_run_ops, overlay
from .records import FlowRun, from_row
from .statements import FLOW_COLUMNS, move, new_id
from .writer import Op

if TYPE_CHECKING:
    from ..statemachine.calendar import Calendar
    from .journal import Journal

#: Runs that never started, in Scheduled or Late (type SCHEDULED), made for their time.
_NOT_STARTED = (
    "state_type = 'SCHEDULED' AND state_name IN ('Scheduled', 'Late') AND run_count = 0 "
    "AND scheduled_ms = schedule_ms"
)


_OF_DEPLOYMENT = "SELECT * FROM schedules WHERE deployment_id = ? ORDER BY created_ms, rowid"
_INSERT_SCHEDULE = (
    "INSERT INTO schedules (id, deployment_id, kind, expression, timezone, anchor_ms, "
    "parameters, active, catchup, catchup_cap, grace_ms, cursor_ms, created_ms, updated_ms) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


@dataclass(frozen=True)
class Schedule:
    """A schedule as the journal holds it."""

    id: str
    deployment_id: str
    kind: str
    expression: str
    timezone: str
    anchor_ms: int | None
    parameters: str
    active: int
    catchup: str
    catchup_cap: int
    grace_ms: int
    cursor_ms: int | None
    created_ms: int
    updated_ms: int

    @property
    def short_id(self) -> str:
        """The first 8 characters of the id: what people see (any unique prefix works)."""
        return self.id[:8]

    @property
    def is_active(self) -> bool:
        return bool(self.active)

    @property
    def calendar(self) -> Calendar:
        """When it fires (validated when the schedule was made)."""
        # Deferred: the calendar loads zoneinfo, which `import persevere` does not need.
        from ..statemachine.calendar import Calendar

        return Calendar(self.kind, self.expression, self.timezone, self.anchor_ms)


@dataclass(frozen=True)
class NewSchedule:
    """A schedule to add, checked already: a valid calendar, parameters stored as typed JSON."""

    kind: str
    expression: str
    timezone: str = "UTC"
    anchor_ms: int | None = None
    parameters: str = "{}"
    active: bool = True
    catchup: str = "latest"
    catchup_cap: int = 100
    grace_ms: int = 60_000

    def same_as(self, schedule: Schedule, anchor_given: bool = True) -> bool:
        """True if ``schedule`` is this one (its anchor too, if one was given), paused
        or not."""
        return (
            (self.kind, self.expression, self.timezone, self.parameters)
            == (schedule.kind, schedule.expression, schedule.timezone, schedule.parameters)
            and (self.catchup, self.catchup_cap, self.grace_ms)
            == (schedule.catchup, schedule.catchup_cap, schedule.grace_ms)
            and (not anchor_given or self.anchor_ms == schedule.anchor_ms)
        )


@dataclass(frozen=True)
class Snapshot:
    """What the scheduler's planner sees of one schedule, read inside its transaction."""

    schedule: Schedule
    deployment: Deployment
    now_ms: int
    waiting: list[FlowRun]  # its runs in Scheduled or Late whose grace has passed
    taken: frozenset[int]  # times in (cursor, now - grace] that have a run
    ahead: int  # its runs for times after now


@dataclass(frozen=True)
class Advanced:
    """What one scheduler transaction did for a schedule."""

    schedule: Schedule
    deployment: Deployment
    plan: Plan
    made: list[tuple[NewRun, str]]  # each run made, with its id
    cancelled: list[str]  # ids of the runs cancelled


@dataclass(frozen=True)
class DueSchedule:
    """An active schedule of an existing deployment, as the scheduler's cheap read sees it."""

    schedule: Schedule
    ahead: int  # its runs for times after now
    overdue: int  # its runs that never started and whose grace has passed


class Schedules:
    """Schedules: add, list, find, delete, pause and resume; the scheduler's transactions."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal

    # -- reading ------------------------------------------------------------------

    def of(self, deployment: Deployment) -> list[Schedule]:
        """A deployment's schedules, oldest first."""
        rows = self._journal.query(
            _OF_DEPLOYMENT,
            (deployment.id,),
        )
        return [from_row(Schedule, r) for r in rows]

    def get(self, deployment: Deployment, id_or_prefix: str) -> Schedule:
        """The deployment's schedule whose id is, or uniquely starts with, ``id_or_prefix``."""
        text = id_or_prefix.strip().lower()
        found = [s for s in self.of(deployment) if text and s.id.startswith(text)]
        if len(found) == 1:
            return found[0]
        if found:
            raise ScheduleNotFound(
                deployment.name,
                id_or_prefix,
                f"schedule id prefix {id_or_prefix!r} matches {len(found)} schedules of "
                f"{deployment.name}; give more of it",
            )
        raise ScheduleNotFound(deployment.name, id_or_prefix)

    def counts(self) -> dict[str, tuple[int, int]]:
        """(active, total) schedules by deployment id."""
        rows = self._journal.query(
            "SELECT deployment_id, sum(active), count(*) FROM schedules GROUP BY deployment_id"
        )
        return {r[0]: (int(r[1]), int(r[2])) for r in rows}

    # -- changing -------------------------------------------------------------------

    def add(self, deployment: Deployment, new: NewSchedule) -> Schedule:
        """Add a schedule to a deployment (durable). Its cursor starts now: times
        before it was made are not caught up."""
        [schedule_id] = self._insert(deployment, [new])
        return self._by_id(schedule_id)

    def replace(
        self, deployment: Deployment, wanted: Sequence[NewSchedule], anchors_given: Sequence[bool]
    ) -> tuple[list[Schedule], list[Schedule], list[Schedule]]:
        """Make the deployment's schedules those ``wanted`` (durable, one transaction).

        A schedule that is already there as wanted is kept as it is (its id,
        its cursor, its runs made ahead, paused or not); the others are
        deleted (with their runs made ahead) and the missing ones added.
        Returns (kept, added, removed).
        """
        writer = self._journal.writer

        def work(conn: sqlite3.Connection) -> tuple[list[Schedule], list[str], list[Schedule]]:
            rows = conn.execute(_OF_DEPLOYMENT, (deployment.id,)).fetchall()
            existing = [from_row(Schedule, r) for r in rows]
            kept: list[Schedule] = []
            to_add: list[NewSchedule] = []
            for new, anchor_given in zip(wanted, anchors_given, strict=True):
                match = next(
                    (s for s in existing if s not in kept and new.same_as(s, anchor_given)), None
                )
                if match is None:
                    to_add.append(new)
                else:
                    kept.append(match)
            removed = [s for s in existing if s not in kept]
            now = clock.now_ms()
            ops = [op for s in removed for op in _delete_ops(s.id, now)]
            ops += _insert_ops(deployment, to_add, now)
            writer.apply(conn, ops)
            return kept, [op.params[0] for op in ops if op.sql == _INSERT_SCHEDULE], removed

        kept, added, removed = writer.transaction(work)
        return kept, [self._by_id(i) for i in added], removed

    def refresh_ahead(self, deployment: Deployment) -> int:
        """Give the runs the deployment's schedules made ahead that have not started the
        deployment as it is now: its entrypoint, work queue, tags and parameters, with
        each schedule's laid over them (durable, one transaction). Returns how many
        runs changed.

        A redeploy calls it: a run made ahead must not keep the queue or the
        parameters the deployment had before.
        """
        writer, now = self._journal.writer, clock.now_ms()

        def work(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT * FROM deployments WHERE id = ?", (deployment.id,))
            found = row.fetchone()
            if found is None:
                return 0
            current = from_row(Deployment, found)
            changed = 0
            for schedule in conn.execute(_OF_DEPLOYMENT, (current.id,)).fetchall():
                values = (
                    current.entrypoint, current.work_queue, current.tags,
                    overlay(current.parameters, schedule["parameters"]),
                )  # fmt: skip
                changed += conn.execute(
                    "UPDATE flow_runs SET entrypoint = ?, work_queue = ?, tags = ?, "
                    f"parameters = ? WHERE schedule_id = ? AND schedule_ms > ? AND {_NOT_STARTED} "
                    "AND (entrypoint, work_queue, tags, parameters) IS NOT (?, ?, ?, ?)",
                    (*values, schedule["id"], now, *values),
                ).rowcount
            return changed

        return writer.transaction(work)

    def _insert(self, deployment: Deployment, wanted: Sequence[NewSchedule]) -> list[str]:
        ops = _insert_ops(deployment, wanted, clock.now_ms())
        self._journal.flush(ops)
        return [op.params[0] for op in ops]

    def _by_id(self, schedule_id: str) -> Schedule:
        rows = self._journal.query("SELECT * FROM schedules WHERE id = ?", (schedule_id,))
        if not rows:
            raise ScheduleNotFound("?", schedule_id, f"schedule {schedule_id} was deleted")
        return from_row(Schedule, rows[0])

    def delete(self, schedule: Schedule) -> int:
        """Delete a schedule and the runs it made ahead that have not started (durable).

        Returns how many runs were deleted. Its other runs stay.
        """
        ops, writer = _delete_ops(schedule.id, clock.now_ms()), self._journal.writer
        changed = writer.transaction(lambda conn: writer.apply(conn, ops))
        return changed[1]  # the runs' rows (the first op deletes their history)

    @staticmethod
    def deployment_ops(deployment_id: str, now: int) -> list[Op]:
        """The writes that delete every schedule of a deployment, with the runs they made
        ahead that have not started (for the deployment's delete)."""
        return [
            *_ahead_ops(deployment_id, now, of_deployment=True),
            Op("DELETE FROM schedules WHERE deployment_id = ?", (deployment_id,)),
        ]

    def set_active(self, schedules: Sequence[Schedule], active: bool) -> tuple[list[Schedule], int]:
        """Pause or resume schedules (durable, one transaction); returns those changed
        (those already so are left alone) and how many runs were deleted.

        Pausing deletes the runs a schedule made ahead that have not started,
        so that resuming makes them again. Resuming starts the cursor at now:
        times that passed while it was paused are not caught up.
        """
        now = clock.now_ms()
        writer = self._journal.writer

        def work(conn: sqlite3.Connection) -> tuple[list[str], int]:
            changed, deleted = [], 0
            for s in schedules:
                row = conn.execute("SELECT active FROM schedules WHERE id = ?", (s.id,)).fetchone()
                if row is None or bool(row[0]) == active:
                    continue  # deleted, or so already (never move a running cursor back)
                changed.append(s.id)
                if active:
                    update = "UPDATE schedules SET active = 1, updated_ms = ?, cursor_ms = ? "
                    conn.execute(update + "WHERE id = ?", (now, now, s.id))
                else:
                    update = "UPDATE schedules SET active = 0, updated_ms = ? WHERE id = ?"
                    conn.execute(update, (now, s.id))
                    deleted += writer.apply(conn, _ahead_ops(s.id, now))[1]
            return changed, deleted

        changed, deleted = writer.transaction(work)
        return [self._by_id(i) for i in changed], deleted

    # -- the scheduler's reads and transactions -------------------------------------------

    def due(self, now_ms: int) -> list[DueSchedule]:
        """Every active schedule of an existing deployment, with how many runs it has made
        ahead and how many never started past their grace. One read, no lock taken."""
        # Both counts stay cheap however many runs a schedule made in its life: runs
        # ahead are a range of the (schedule, time) index, and overdue ones are found
        # among the SCHEDULED runs (the state index), not among a schedule's past.
        rows = self._journal.query(
            "SELECT s.*, (SELECT count(*) FROM flow_runs r WHERE r.schedule_id = s.id "
            "AND r.schedule_ms > ?) AS ahead FROM schedules s "
            "JOIN deployments d ON d.id = s.deployment_id WHERE s.active = 1 ORDER BY s.id",
            (now_ms,),
        )
        waiting = self._journal.query(
            "SELECT r.schedule_id, count(*) FROM flow_runs r "
            "JOIN schedules s ON s.id = r.schedule_id "
            f"WHERE {_NOT_STARTED} AND r.schedule_ms <= ? - s.grace_ms GROUP BY r.schedule_id",
            (now_ms,),
        )
        overdue = {str(r[0]): int(r[1]) for r in waiting}
        return [
            DueSchedule(from_row(Schedule, r), r["ahead"], overdue.get(r["id"], 0)) for r in rows
        ]

    def advance(
        self, schedule_id: str, now_ms: int, planner: Callable[[Snapshot], Plan]
    ) -> Advanced | None:
        """Bring one schedule up to ``now_ms`` in one transaction (durable).

        Reads the schedule as it is inside the transaction (None if it is
        gone, paused or its deployment deleted meanwhile), hands a
        :class:`Snapshot` to ``planner``, then cancels the runs the plan drops,
        makes its runs (``INSERT OR IGNORE``: a time that has a run keeps that
        one) and moves the cursor, compared and set on the one read.
        """

        def work(conn: sqlite3.Connection) -> Advanced | None:
            snapshot = self._snapshot(conn, schedule_id, now_ms)
            if snapshot is None:
                return None
            plan = planner(snapshot)
            schedule, deployment = snapshot.schedule, snapshot.deployment
            by_id = {r.id: r for r in snapshot.waiting}
            cancelled = []
            for run_id, why in plan.catchup.cancel:
                self._journal.writer.apply(
                    conn, self._journal.workers.cancel_ops(by_id[run_id], why)
                )
                cancelled.append(run_id)
            made = []
            for new in plan.runs:
                made_id = self._make(conn, deployment, schedule, new, now_ms)
                if made_id is not None:
                    made.append((new, made_id))
            if plan.cursor_ms != schedule.cursor_ms:
                moved = conn.execute(
                    "UPDATE schedules SET cursor_ms = ? WHERE id = ? AND cursor_ms IS ?",
                    (plan.cursor_ms, schedule.id, schedule.cursor_ms),
                )
                if moved.rowcount != 1:  # cannot happen under the lock; never write blind
                    raise sqlite3.IntegrityError(f"cursor of schedule {schedule.id} moved")
            return Advanced(schedule, deployment, plan, made, cancelled)

        return self._journal.writer.transaction(work)

    def _snapshot(self, conn: sqlite3.Connection, schedule_id: str, now: int) -> Snapshot | None:
        row = conn.execute("SELECT * FROM schedules WHERE id = ?", (schedule_id,)).fetchone()
        if row is None or not row["active"]:
            return None
        schedule = from_row(Schedule, row)
        found = conn.execute(
            "SELECT * FROM deployments WHERE id = ?", (schedule.deployment_id,)
        ).fetchone()
        if found is None:
            return None
        threshold = now - schedule.grace_ms
        waiting = conn.execute(  # +schedule_id: found among the SCHEDULED runs, not its past
            f"SELECT {FLOW_COLUMNS} FROM flow_runs WHERE +schedule_id = ? AND schedule_ms <= ? "
            "AND state_type = 'SCHEDULED' AND state_name IN ('Scheduled', 'Late') "
            "ORDER BY schedule_ms",
            (schedule.id, threshold),
        ).fetchall()
        taken = conn.execute(
            "SELECT schedule_ms FROM flow_runs WHERE schedule_id = ? AND schedule_ms > ? "
            "AND schedule_ms <= ?",
            (schedule.id, schedule.cursor_ms or 0, threshold),
        ).fetchall()
        ahead = conn.execute(
            "SELECT count(*) FROM flow_runs WHERE schedule_id = ? AND schedule_ms > ?",
            (schedule.id, now),
        ).fetchone()[0]
        return Snapshot(
            schedule,
            from_row(Deployment, found),
            now,
            [from_row(FlowRun, r) for r in waiting],
            frozenset(r[0] for r in taken),
            int(ahead),
        )

    def _make(
        self,
        conn: sqlite3.Connection,
        deployment: Deployment,
        schedule: Schedule,
        new: NewRun,
        now: int,
        scheduled_ms: int | None = None,
    ) -> str | None:
        """Insert a run for a schedule time unless that time has one; its id, or None."""
        run_id, name = new_id(), "Late" if new.late else "Scheduled"
        check_move(None, StateType.SCHEDULED, name, run_id)
        insert, state = new_run_ops(
            deployment,
            run_id,
            overlay(deployment.parameters, schedule.parameters),
            now,
            scheduled_ms=new.time_ms if scheduled_ms is None else scheduled_ms,
            name=name,
            message=new.message,
            schedule_id=schedule.id,
            schedule_ms=new.time_ms,
            verb="INSERT OR IGNORE",
        )
        if conn.execute(insert.sql, insert.params).rowcount != 1:
            return None  # the time has a run: the unique index kept it
        conn.execute(state.sql, state.params)
        return run_id

    def backfill(
        self,
        deployment: Deployment,
        items: Sequence[tuple[Schedule, NewRun]],
    ) -> list[tuple[Schedule, NewRun, str | None]]:
        """Make a run for each (schedule, time), due now in the order given (durable, one
        transaction); a time that has a run already is skipped (its id is None).

        The runs are due now, not at their time, so catch-up never drops them.
        """
        now = clock.now_ms()

        def work(conn: sqlite3.Connection) -> list[tuple[Schedule, NewRun, str | None]]:
            done: list[tuple[Schedule, NewRun, str | None]] = []
            for i, (schedule, new) in enumerate(items):
                # Due now, one ms apart, so workers take them in time order; a due time
                # is then never its schedule time (times are before now, strictly).
                due = now - (len(items) - 1 - i)
                run_id = self._make(conn, deployment, schedule, new, now, scheduled_ms=due)
                done.append((schedule, new, run_id))
            return done

        return self._journal.writer.transaction(work)

    def mark_late(self, now_ms: int) -> list[tuple[FlowRun, int]]:
        """Runs on a work queue still Scheduled past their grace become Late (durable).

        The grace is the schedule's for a run of a schedule, else the
        ``late_after_seconds`` setting. Returns each run moved, with its grace.
        """
        default = int(self._journal.settings.late_after_seconds * 1000)
        late = (
            "SELECT r.*, COALESCE(s.grace_ms, ?) AS grace FROM flow_runs r "
            "LEFT JOIN schedules s ON s.id = r.schedule_id "
            "WHERE r.state_type = 'SCHEDULED' AND r.state_name = 'Scheduled' "
            "AND r.work_queue IS NOT NULL AND r.scheduled_ms <= ? - COALESCE(s.grace_ms, ?)"
        )
        params = (default, now_ms, default)
        if not self._journal.query(late + " LIMIT 1", params):
            return []  # an idle pass reads; it takes no write lock

        def work(conn: sqlite3.Connection) -> list[tuple[FlowRun, int]]:
            moved = []
            for row in conn.execute(late, params).fetchall():
                run, grace = from_row(FlowRun, row), int(row["grace"])
                why = f"not started within {grace_label(grace)} of its time"
                self._journal.writer.apply(conn, move(
                    "flow_runs", run.id, StateType.SCHEDULED, run.version, StateType.SCHEDULED,
                    "Late", why, now_ms,
                ))  # fmt: skip
                moved.append((run, grace))
            return moved

        return self._journal.writer.transaction(work)


def _insert_ops(deployment: Deployment, wanted: Sequence[NewSchedule], now: int) -> list[Op]:
    """The writes that add schedules to a deployment, each with a new random id (so the
    first 8 characters, the short id, tell schedules apart), its cursor at ``now``."""
    ops = []
    for new in wanted:
        values = (
            os.urandom(16).hex(), deployment.id, new.kind, new.expression, new.timezone,
            new.anchor_ms, new.parameters, int(new.active), new.catchup, new.catchup_cap,
            new.grace_ms, now, now, now,
        )  # fmt: skip
        ops.append(Op(_INSERT_SCHEDULE, values))
    return ops


def _ahead_ops(schedule_id: str, now: int, of_deployment: bool = False) -> list[Op]:
    """Delete the runs made ahead that have not started, with their history, of a
    schedule (or of every schedule of a deployment, given its id)."""
    which = "SELECT id FROM schedules WHERE deployment_id = ?" if of_deployment else "?"
    ahead = f"schedule_id IN ({which}) AND schedule_ms > ? AND {_NOT_STARTED}"
    return [
        Op(f"DELETE FROM states WHERE run_id IN (SELECT id FROM flow_runs WHERE {ahead})",
           (schedule_id, now)),
        Op(f"DELETE FROM flow_runs WHERE {ahead}", (schedule_id, now)),
    ]  # fmt: skip


def _delete_ops(schedule_id: str, now: int) -> list[Op]:
    return [*_ahead_ops(schedule_id, now), Op("DELETE FROM schedules WHERE id = ?", (schedule_id,))]
