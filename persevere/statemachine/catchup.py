"""Catch-up: which of a schedule's overdue times still run, and which do not.

A time is *overdue* once its grace period has passed (``time <= now - grace``)
and it has not started. The candidates are the schedule's runs that never
started and wait past their grace (made ahead of time, but no worker took
them), and its *missed* times: overdue times that have no run at all,
because no scheduler ran then. The policy says which candidates run:

- ``skip``: none; the runs are cancelled, the missed times are not made;
- ``latest``: the newest one; the older ones are cancelled or not made;
- ``all``: the newest ``cap``; older ones beyond that are dropped.

A run that has started before (``run_count > 0``, say resumed after a crash)
or that a backfill made (its due time is not its schedule time) is never a
candidate: catch-up leaves it alone.

Pure: the times and runs come in, the decision goes out; no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

#: The catch-up policies, the default first.
POLICIES = ("latest", "skip", "all")
DEFAULT_POLICY = "latest"
DEFAULT_CAP = 100


@dataclass(frozen=True)
class Waiting:
    """A run of the schedule that has not started (Scheduled or Late), as catch-up sees it."""

    run_id: str
    schedule_ms: int  # the schedule time it was made for
    scheduled_ms: int  # when it is due (a backfill's: when the backfill was asked for)
    run_count: int  # how often it has started


@dataclass(frozen=True)
class CatchUp:
    """What catch-up decided for one schedule at one instant."""

    make: tuple[int, ...]  # missed times to make a run for now, ascending
    cancel: tuple[tuple[str, str], ...]  # (run id, why) of runs that must not run
    dropped_times: int  # missed times not made (of those looked at)
    more_dropped: bool  # True: older missed times, not counted, were not made either
    cursor_ms: int  # every time up to here has been dealt with

    @property
    def dropped(self) -> int:
        """How many candidates (runs and counted missed times) do not run."""
        return len(self.cancel) + self.dropped_times

    @property
    def idle(self) -> bool:
        return not self.make and not self.cancel and not self.dropped_times


@dataclass(frozen=True)
class NewRun:
    """A run to make for a schedule time: Late (a missed time caught up) or Scheduled."""

    time_ms: int
    late: bool
    message: str


@dataclass(frozen=True)
class Plan:
    """One scheduler pass over one schedule: what catch-up decided, the runs to make
    (caught up and on time, ascending), and the new cursor."""

    catchup: CatchUp
    runs: tuple[NewRun, ...]
    cursor_ms: int


def check_policy(policy: str, cap: int) -> None:
    """Raise ValueError for an unknown policy or a cap below 1."""
    if policy not in POLICIES:
        raise ValueError(f"catch-up policy {policy!r} must be one of: skip, latest, all")
    if cap < 1:
        raise ValueError(f"catch-up cap {cap} must be at least 1")


def keeps(policy: str, cap: int) -> int:
    """How many of the newest candidates a policy lets run."""
    check_policy(policy, cap)
    return {"skip": 0, "latest": 1}.get(policy, cap)


def is_candidate(run: Waiting, threshold_ms: int) -> bool:
    """True if catch-up may drop this run: it never started, a schedule made it for its
    time (not a backfill), and its grace has passed."""
    return (
        run.run_count == 0
        and run.scheduled_ms == run.schedule_ms
        and run.schedule_ms <= threshold_ms
    )


def needs_pass(
    next_ms: int | None,
    now_ms: int,
    horizon_ms: int,
    ahead: int,
    max_ahead: int,
    overdue: int,
    policy: str,
    cap: int,
) -> bool:
    """True if a schedule has something for the scheduler to do; else a pass only reads.

    ``next_ms`` is its first time after its cursor (None: it never fires
    again), ``ahead`` how many of its runs are for times after now,
    ``overdue`` how many of its runs never started past their grace.
    """
    if overdue > keeps(policy, cap):
        return True  # catch-up drops some
    if next_ms is None:
        return False
    if next_ms <= now_ms:
        return True  # due, or missed
    if ahead == 0:
        return True  # always the next one
    return next_ms <= now_ms + horizon_ms and ahead < max_ahead


def grace_label(grace_ms: int) -> str:
    """``60 s``, ``1.5 s``."""
    return f"{grace_ms / 1000:g} s"


def decide(
    policy: str,
    cap: int,
    grace_ms: int,
    now_ms: int,
    cursor_ms: int,
    waiting: Sequence[Waiting],
    missed: Sequence[int],
    truncated: bool = False,
    label: Callable[[int], str] = str,
) -> CatchUp:
    """Apply a catch-up policy to a schedule's overdue candidates.

    Args:
        policy, cap: the schedule's catch-up policy and its cap (for ``all``).
        grace_ms, now_ms: a time is overdue when ``time <= now - grace``.
        cursor_ms: the schedule's cursor: times up to it have been dealt with.
        waiting: the schedule's runs that have not started (any time; those
            that are not candidates are left alone).
        missed: the newest of its times in ``(cursor, now - grace]``,
            ascending; times that have a run are ignored.
        truncated: True if older missed times exist than those given (they
            are never kept: the newest ``keeps()`` candidates are among those
            given when at least that many are given).
        label: how a time is written in a message.

    Returns:
        The missed times to make, the runs to cancel (with why), and the new cursor.
    """
    threshold = now_ms - grace_ms
    runs = sorted(
        (r for r in waiting if is_candidate(r, threshold)), key=lambda r: (r.schedule_ms, r.run_id)
    )
    taken = {r.schedule_ms for r in waiting}
    times = sorted({t for t in missed if cursor_ms < t <= threshold and t not in taken})
    # The newest ``keep`` candidates run: runs and missed times merged by time.
    candidates: list[tuple[int, str | None]] = [(r.schedule_ms, r.run_id) for r in runs]
    candidates += [(t, None) for t in times]
    candidates.sort(key=lambda c: (c[0], c[1] or ""))
    split = max(0, len(candidates) - keeps(policy, cap))
    kept, dropped = candidates[split:], candidates[:split]
    why = _why(policy, cap, grace_ms, kept, label)
    return CatchUp(
        make=tuple(t for t, run_id in kept if run_id is None),
        cancel=tuple((run_id, why) for _, run_id in dropped if run_id is not None),
        dropped_times=sum(1 for _, run_id in dropped if run_id is None),
        more_dropped=truncated and bool(times),
        cursor_ms=max([cursor_ms, *times]),
    )


def _why(
    policy: str,
    cap: int,
    grace_ms: int,
    kept: list[tuple[int, str | None]],
    label: Callable[[int], str],
) -> str:
    if policy == "skip" or not kept:
        return f"skipped: not started within {grace_label(grace_ms)} of its time (catch-up skip)"
    if policy == "latest":
        return f"superseded by the run for {label(kept[-1][0])} (catch-up latest)"
    return (
        f"superseded: only the newest {cap} overdue runs catch up, from {label(kept[0][0])} "
        "(catch-up all)"
    )
