"""The scheduler: makes the runs of schedules ahead of time, marks runs Late, catches up.

Every worker runs one pass (:meth:`Scheduler.tick`) each housekeeping round;
``persevere scheduler`` runs them on their own. A pass, at ``clock.now_ms()``:

1. reads every active schedule with how many runs it has made ahead and how
   many never started past their grace (one query), and decides from that and
   its next time after its cursor whether it needs anything; an idle pass
   takes no write lock;
2. for each schedule that does, one transaction
   (:meth:`~persevere.journal.schedules.Schedules.advance`) applies the plan
   of :func:`~persevere.statemachine.planning.plan`: catch-up, the runs on
   time, the runs ahead;
3. marks Late the runs on a work queue still Scheduled past their grace;
4. wakes what waits for a time (:func:`persevere.worker.waits.housekeeping`);
5. evaluates the automations and runs their due actions
   (:class:`~persevere.worker.evaluator.Evaluator`), and now and then deletes
   events older than ``PERSEVERE_EVENT_RETENTION_DAYS``.

Any number of schedulers may run at once, in any processes: each schedule's
transaction re-reads the cursor under the write lock, and the unique index
on (schedule, time) is the last guard, so a time never gets two runs and is
never skipped.

Rejected: a single elected scheduler (a lease to renew, a failover to wait
for) when the transactions are idempotent anyway.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from types import FrameType

from .. import clock
from ..journal import Journal
from ..journal.schedules import Advanced, DueSchedule, Schedule, Snapshot
from ..statemachine.calendar import local_iso, next_times
from ..statemachine.catchup import Plan, Waiting, grace_label, needs_pass
from ..statemachine.planning import plan
from . import waits
from .evaluator import Evaluator

#: How often a scheduler deletes old events.
PRUNE_EVERY_MS = 10 * 60_000

__all__ = ["Scheduler"]


class Scheduler:
    """Makes the runs of the journal's schedules; one :meth:`tick` per pass."""

    def __init__(
        self,
        journal: Journal,
        horizon_seconds: float = 3600,
        max_ahead: int = 10,
        say: Callable[[str], None] | None = None,
    ) -> None:
        if horizon_seconds < 0:
            raise ValueError(f"horizon {horizon_seconds} s must be 0 or more")
        if max_ahead < 1:
            raise ValueError(f"max_ahead {max_ahead} must be at least 1")
        self.journal = journal
        self.horizon_ms = round(horizon_seconds * 1000)
        self.max_ahead = max_ahead
        self.say = say
        self.stopping = False
        self._next: dict[str, tuple[tuple[object, ...], int | None]] = {}
        self._failing: dict[str, str] = {}
        self.evaluator = Evaluator(journal)
        self._pruned_ms = 0

    def tick(self) -> list[str]:
        """One pass at ``clock.now_ms()``; returns what it did, a line each (also said)."""
        now = clock.now_ms()
        lines: list[str] = []
        due = self.journal.schedules.due(now)
        for item in due:
            lines += self._one(item, now)
        live = {d.schedule.id for d in due}
        self._next = {k: v for k, v in self._next.items() if k in live}
        for run, grace in self.journal.schedules.mark_late(now):
            lines.append(
                f"run {run.id} ({run.flow_name}) Late: not started within "
                f"{grace_label(grace)} of its time"
            )
        lines += waits.housekeeping(self.journal)
        lines += self.evaluator.tick()
        if now - self._pruned_ms >= PRUNE_EVERY_MS:
            self._pruned_ms = now
            retention_ms = round(self.journal.settings.event_retention_days * 86_400_000)
            for _ in range(100):  # 10,000 a batch, each its own short transaction
                if self.journal.events.prune(now - retention_ms) == 0:
                    break
        if self.say is not None:
            for line in lines:
                self.say(line)
        return lines

    def _one(self, item: DueSchedule, now: int) -> list[str]:
        """A schedule's part of a pass; a failure is one line (said once until it changes)."""
        schedule = item.schedule
        try:
            if not needs_pass(
                self._next_after(schedule),
                now,
                self.horizon_ms,
                item.ahead,
                self.max_ahead,
                item.overdue,
                schedule.catchup,
                schedule.catchup_cap,
            ):
                return []
            done = self.journal.schedules.advance(schedule.id, now, self._plan)
        except Exception as exc:  # one broken schedule must not stop the others
            line = f"schedule {schedule.short_id} failed: {type(exc).__name__}: {exc}"
            if self._failing.get(schedule.id) == line:
                return []
            self._failing[schedule.id] = line
            return [line]
        self._failing.pop(schedule.id, None)
        return [] if done is None else describe(done)

    def _next_after(self, schedule: Schedule) -> int | None:
        """The schedule's first time after its cursor (remembered while the cursor stays)."""
        key = (schedule.cursor_ms, schedule.kind, schedule.expression, schedule.timezone,
               schedule.anchor_ms)  # fmt: skip
        known = self._next.get(schedule.id)
        if known is not None and known[0] == key:
            return known[1]
        found = next_times(schedule.calendar, schedule.cursor_ms or 0, 1)
        value = found[0] if found else None
        self._next[schedule.id] = (key, value)
        return value

    def _plan(self, snapshot: Snapshot) -> Plan:
        schedule = snapshot.schedule
        waiting = [
            Waiting(r.id, r.schedule_ms or 0, r.scheduled_ms or 0, r.run_count)
            for r in snapshot.waiting
        ]
        return plan(
            schedule.calendar,
            short_id=schedule.short_id,
            policy=schedule.catchup,
            cap=schedule.catchup_cap,
            grace_ms=schedule.grace_ms,
            now_ms=snapshot.now_ms,
            cursor_ms=schedule.cursor_ms or 0,
            waiting=waiting,
            taken=snapshot.taken,
            ahead=snapshot.ahead,
            horizon_ms=self.horizon_ms,
            max_ahead=self.max_ahead,
        )

    # -- on its own: `persevere scheduler` ---------------------------------------------------

    def stop(self, signum: int = signal.SIGTERM, frame: FrameType | None = None) -> None:
        """Finish the pass under way, then stop."""
        self.stopping = True

    def run(self, poll_seconds: float = 5.0, once: bool = False) -> None:
        """Pass after pass, every ``poll_seconds``, until SIGTERM or SIGINT (or one, ``once``).

        A pass that fails is said in one line; the next one tries again.
        """
        if poll_seconds <= 0:
            raise ValueError(f"poll seconds {poll_seconds} must be greater than zero")
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        while not self.stopping:
            try:
                self.tick()
            except Exception as exc:
                if self.say is not None:
                    self.say(f"scheduler pass failed: {type(exc).__name__}: {exc}")
            if once:
                return
            deadline = time.monotonic() + poll_seconds
            while not self.stopping and time.monotonic() < deadline:
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))


def describe(done: Advanced) -> list[str]:
    """What one schedule's transaction did, a line each."""
    schedule, catchup = done.schedule, done.plan.catchup
    head = f"schedule {schedule.short_id} ({done.deployment.name})"
    tz = schedule.timezone
    lines = []
    late = [t.time_ms for t, _ in done.made if t.late]
    on_time = [t.time_ms for t, _ in done.made if not t.late]
    if late:
        lines.append(
            f"{head}: caught up {_count(len(late), 'missed time')} "
            f"(catch-up {schedule.catchup}), made Late: {_span(late, tz)}"
        )
    if on_time:
        lines.append(f"{head}: made {_count(len(on_time), 'run')} for {_span(on_time, tz)}")
    if done.cancelled or catchup.dropped_times:
        more = "+" if catchup.more_dropped else ""
        lines.append(
            f"{head}: catch-up {schedule.catchup} dropped {catchup.dropped}{more}: "
            f"{_count(len(done.cancelled), 'run')} cancelled, "
            f"{catchup.dropped_times}{more} missed times not made"
        )
    return lines


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _span(times: list[int], timezone: str) -> str:
    first = local_iso(times[0], timezone)
    return first if len(times) == 1 else f"{first} .. {local_iso(times[-1], timezone)}"
