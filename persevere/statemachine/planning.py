"""One scheduler pass over one schedule: catch up, then make the runs ahead of time.

Given the schedule's calendar and cursor, what the journal holds of its runs
and the time, :func:`plan` says which runs to cancel and make and where the
cursor goes:

1. catch-up (:func:`~persevere.statemachine.catchup.decide`) over the
   overdue candidates: the runs that never started past their grace, and the
   missed times in ``(cursor, now - grace]``, found from the newest backwards
   (``times_before``), so a year of downtime on a per-minute cron costs as
   little as an hour of it;
2. the times within the grace that have no run: they are on time;
3. the times ahead, up to ``now + horizon``, while fewer than ``max_ahead``
   runs are not yet due, and always the next one if none is (a weekly
   schedule shows its next run).

Pure: the calendar is a pure function and the time is given.
"""

from __future__ import annotations

from collections.abc import Sequence

from .calendar import Calendar, local_iso, next_times, times_before, times_between
from .catchup import NewRun, Plan, Waiting, decide, keeps

#: Missed times counted (to say how many were dropped) beyond those that may run.
COUNTED = 1000
#: At most this many on-time runs per pass (a huge grace on a dense calendar).
DUE_LIMIT = 1000


def plan(
    cal: Calendar,
    *,
    short_id: str,
    policy: str,
    cap: int,
    grace_ms: int,
    now_ms: int,
    cursor_ms: int,
    waiting: Sequence[Waiting],
    taken: frozenset[int],
    ahead: int,
    horizon_ms: int,
    max_ahead: int,
) -> Plan:
    """The runs to cancel and make for a schedule at ``now_ms``, and its new cursor.

    Args:
        cal: the schedule's calendar; short_id: its id as messages show it.
        policy, cap, grace_ms: its catch-up policy, cap and grace period.
        cursor_ms: its cursor: every time up to it has been dealt with.
        waiting: its runs in Scheduled or Late whose grace has passed.
        taken: its times in ``(cursor, now - grace]`` that have a run.
        ahead: how many of its runs are for times after now.
        horizon_ms, max_ahead: how far ahead, and how many runs not yet due.
    """
    threshold = now_ms - grace_ms
    missed: list[int] = []
    truncated = False
    if cursor_ms < threshold:
        want = keeps(policy, cap) + COUNTED + len(taken)
        found = times_before(cal, threshold, cursor_ms, want)
        truncated = len(found) >= want
        missed = [t for t in found if t not in taken]

    def label(ms: int) -> str:
        return local_iso(ms, cal.timezone)

    decided = decide(policy, cap, grace_ms, now_ms, cursor_ms, waiting, missed, truncated, label)
    start = max(decided.cursor_ms, threshold)
    due = times_between(cal, start, now_ms, DUE_LIMIT)
    future: list[int] = []
    if len(due) < DUE_LIMIT:
        after = max(start, now_ms)
        if max_ahead > ahead:
            future = times_between(cal, after, now_ms + horizon_ms, max_ahead - ahead)
        if not future and ahead == 0:
            future = next_times(cal, after, 1)
    made = f"scheduled by schedule {short_id} for "
    runs = [
        NewRun(t, True, f"{made}{label(t)}; made late, no scheduler ran then (catch-up {policy})")
        for t in decided.make
    ]
    runs += [NewRun(t, False, made + label(t)) for t in (*due, *future)]
    # Times that have a run (a backfill's) are dealt with too: past them, a calendar
    # that has ended leaves the schedule idle.
    cursor = max([decided.cursor_ms, *taken, *(r.time_ms for r in runs)])
    return Plan(decided, tuple(runs), cursor)
