"""Catch-up and the scheduler's plan, as pure functions: properties (hypothesis) and tables.

The journal side (the same decisions applied to real runs) is in test_schedules.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from persevere.statemachine.calendar import Calendar, make_calendar, times_between
from persevere.statemachine.catchup import (
    POLICIES,
    CatchUp,
    Plan,
    Waiting,
    decide,
    is_candidate,
    keeps,
    needs_pass,
)
from persevere.statemachine.planning import plan

MIN = 60_000
HOUR = 60 * MIN


@dataclass(frozen=True)
class Situation:
    """A schedule's state at some instant: runs that wait, missed times, a cursor."""

    policy: str
    cap: int
    grace_ms: int
    now_ms: int
    cursor_ms: int
    waiting: list[Waiting]
    missed: list[int]

    def decide(self) -> CatchUp:
        return decide(self.policy, self.cap, self.grace_ms, self.now_ms, self.cursor_ms,
                      self.waiting, self.missed)  # fmt: skip

    def candidates(self) -> list[tuple[int, str | None]]:
        """The overdue candidates, by the rules as written here (not by the code under test)."""
        threshold = self.now_ms - self.grace_ms
        runs = [
            (w.schedule_ms, w.run_id)
            for w in self.waiting
            if w.run_count == 0 and w.scheduled_ms == w.schedule_ms and w.schedule_ms <= threshold
        ]
        taken = {w.schedule_ms for w in self.waiting}
        times = [(t, None) for t in self.missed
                 if self.cursor_ms < t <= threshold and t not in taken]  # fmt: skip
        return sorted(runs + times, key=lambda c: (c[0], c[1] or ""))


@st.composite
def situations(draw: st.DrawFn) -> Situation:
    now = draw(st.integers(10 * HOUR, 20 * HOUR))
    times = draw(st.lists(st.integers(0, now + HOUR), unique=True, max_size=30))
    split = draw(st.integers(0, len(times)))
    waiting = []
    for i, t in enumerate(times[:split]):
        backfill = draw(st.booleans())
        late_by = draw(st.integers(1, HOUR))
        started = draw(st.sampled_from([0, 0, 0, 1, 2]))
        waiting.append(Waiting(f"r{i:03d}", t, t + late_by if backfill else t, started))
    return Situation(
        policy=draw(st.sampled_from(POLICIES)),
        cap=draw(st.integers(1, 5)),
        grace_ms=draw(st.integers(0, 2 * HOUR)),
        now_ms=now,
        cursor_ms=draw(st.integers(0, now)),
        waiting=waiting,
        missed=sorted(times[split:]),
    )


@settings(max_examples=300, deadline=None)
@given(situations())
def test_catch_up_keeps_the_newest_candidates_and_drops_the_rest(s: Situation) -> None:
    result = s.decide()
    candidates = s.candidates()
    keep = min({"skip": 0, "latest": 1, "all": s.cap}[s.policy], len(candidates))
    kept, dropped = candidates[len(candidates) - keep :], candidates[: len(candidates) - keep]
    # It makes exactly the kept missed times, each once, and cancels exactly the dropped runs.
    assert list(result.make) == [t for t, run in kept if run is None]
    assert len(set(result.make)) == len(result.make)
    assert sorted(run for run, _ in result.cancel) == sorted(r for _, r in dropped if r)
    assert result.dropped_times == sum(1 for _, r in dropped if r is None)
    assert result.dropped == len(dropped)
    if s.policy == "skip":
        assert result.make == ()
        assert len(result.cancel) == sum(1 for _, r in candidates if r)
    if s.policy == "latest" and candidates:
        newest = max(t for t, _ in candidates)
        assert newest in result.make or newest in {w.schedule_ms for w in s.waiting}
        assert result.dropped == len(candidates) - 1
    if s.policy == "all":
        assert len(candidates) - result.dropped == min(s.cap, len(candidates))
    # Never a time that has a run; never a backfill's run or a started one; never back.
    assert not set(result.make) & {w.schedule_ms for w in s.waiting}
    by_id = {w.run_id: w for w in s.waiting}
    for run_id, _ in result.cancel:
        run = by_id[run_id]
        assert run.run_count == 0 and run.scheduled_ms == run.schedule_ms
        assert run.schedule_ms <= s.now_ms - s.grace_ms
    assert result.cursor_ms >= s.cursor_ms
    assert all(t <= result.cursor_ms for t, r in candidates if r is None)


@pytest.mark.parametrize(
    ("policy", "make", "cancelled", "dropped"),
    [
        ("skip", [], ["a", "b"], 5),
        ("latest", [5 * HOUR], ["a", "b"], 4),
        ("all", [3 * HOUR, 4 * HOUR, 5 * HOUR], ["a", "b"], 2),
    ],
)
def test_a_table_of_the_three_policies(
    policy: str, make: list[int], cancelled: list[str], dropped: int
) -> None:
    # Two runs made ahead for 1h and 2h that nobody took; the scheduler was down 3h-5h.
    waiting = [Waiting("a", HOUR, HOUR, 0), Waiting("b", 2 * HOUR, 2 * HOUR, 0)]
    waiting.append(Waiting("started", 30 * MIN, 30 * MIN, 1))  # resumed after a crash
    waiting.append(Waiting("backfill", 40 * MIN, 5 * HOUR, 0))
    result = decide(
        policy, 3, MIN, 5 * HOUR + MIN, 2 * HOUR, waiting, [3 * HOUR, 4 * HOUR, 5 * HOUR]
    )
    assert list(result.make) == make
    assert [r for r, _ in result.cancel] == cancelled
    assert result.dropped == dropped
    assert result.cursor_ms == 5 * HOUR
    why = {r: w for r, w in result.cancel}
    if policy == "latest":
        assert why["a"] == "superseded by the run for 18000000 (catch-up latest)"
    if policy == "skip":
        assert why["a"] == "skipped: not started within 60 s of its time (catch-up skip)"


def test_candidates_are_the_runs_made_for_their_time_that_never_started() -> None:
    assert is_candidate(Waiting("r", 10, 10, 0), 10)
    assert not is_candidate(Waiting("r", 11, 11, 0), 10)  # within its grace
    assert not is_candidate(Waiting("r", 10, 12, 0), 10)  # a backfill
    assert not is_candidate(Waiting("r", 10, 10, 1), 10)  # started before


def test_policies_and_caps_are_checked() -> None:
    assert [keeps(p, 7) for p in ("skip", "latest", "all")] == [0, 1, 7]
    with pytest.raises(ValueError, match="catch-up policy 'some' must be one of"):
        keeps("some", 1)
    with pytest.raises(ValueError, match="catch-up cap 0 must be at least 1"):
        keeps("all", 0)


@pytest.mark.parametrize(
    ("next_ms", "ahead", "overdue", "policy", "expected"),
    [
        (None, 0, 0, "latest", False),  # never fires again
        (None, 0, 2, "latest", True),  # but an overdue run to drop
        (None, 0, 1, "latest", False),  # the one latest keeps
        (None, 0, 1, "skip", True),
        (50, 3, 0, "latest", True),  # due
        (150, 3, 0, "latest", True),  # ahead, room for more
        (150, 10, 0, "latest", False),  # ahead, full
        (5000, 1, 0, "latest", False),  # beyond the horizon, one ahead already
        (5000, 0, 0, "latest", True),  # beyond the horizon, but always the next one
    ],
)
def test_an_idle_schedule_needs_no_pass(
    next_ms: int | None, ahead: int, overdue: int, policy: str, expected: bool
) -> None:
    assert needs_pass(next_ms, 100, 1000, ahead, 10, overdue, policy, 100) is expected


# -- the plan: catch-up, on time, ahead -----------------------------------------------------

BASE = 1_767_225_600_000  # 2026-01-01T00:00Z
QUARTER = make_calendar("interval", "15m")


def plan_at(
    now: int, cursor: int, ahead: int = 0, policy: str = "latest", cap: int = 100,
    grace_ms: int = MIN, horizon_ms: int = HOUR, cal: Calendar = QUARTER,
) -> Plan:  # fmt: skip
    return plan(
        cal, short_id="abcd1234", policy=policy, cap=cap, grace_ms=grace_ms, now_ms=now,
        cursor_ms=cursor, waiting=[], taken=frozenset(), ahead=ahead, horizon_ms=horizon_ms,
        max_ahead=10,
    )  # fmt: skip


def test_the_plan_makes_the_runs_within_the_horizon() -> None:
    p = plan_at(BASE + 1000, BASE + 1000)
    assert [r.time_ms - BASE for r in p.runs] == [15 * MIN, 30 * MIN, 45 * MIN, HOUR]
    assert not any(r.late for r in p.runs)
    assert p.cursor_ms == BASE + HOUR
    assert p.runs[0].message == "scheduled by schedule abcd1234 for 2026-01-01T00:15:00+00:00"


def test_the_plan_keeps_to_max_ahead_and_always_makes_the_next_one() -> None:
    assert len(plan_at(BASE, BASE, ahead=8, horizon_ms=10 * HOUR).runs) == 2
    assert plan_at(BASE, BASE, ahead=10, horizon_ms=10 * HOUR).runs == ()
    p = plan_at(BASE, BASE, horizon_ms=0)
    assert [r.time_ms for r in p.runs] == [BASE + 15 * MIN]
    assert plan_at(BASE, BASE, ahead=1, horizon_ms=0).runs == ()


@settings(max_examples=100, deadline=None)
@given(
    st.integers(0, 10**5 * HOUR),
    st.integers(0, 48 * HOUR),
    st.sampled_from(POLICIES),
    st.integers(1, 12),
    st.integers(0, 3 * HOUR),
)
def test_a_plan_makes_each_time_once_in_order_and_skips_none_it_keeps(
    offset: int, down: int, policy: str, cap: int, grace: int
) -> None:
    cursor = BASE + offset
    now = cursor + down
    p = plan_at(now, cursor, policy=policy, cap=cap, grace_ms=grace)
    times = [r.time_ms for r in p.runs]
    assert times == sorted(set(times))
    assert all(cursor < t for t in times)
    late = [r.time_ms for r in p.runs if r.late]
    overdue = times_between(QUARTER, cursor, now - grace, 10**6)
    assert late == overdue[len(overdue) - min(keeps(policy, cap), len(overdue)) :]
    # Past the overdue ones, every time up to the new cursor is made: none on time is skipped.
    on_time = [r.time_ms for r in p.runs if not r.late]
    assert on_time == times_between(QUARTER, max(cursor, now - grace), p.cursor_ms, 10**6)
    assert p.cursor_ms >= cursor
    assert p.cursor_ms > now or not on_time  # at least the next one


def test_a_year_of_downtime_on_a_per_minute_cron_is_cheap() -> None:
    cal = make_calendar("cron", "* * * * *")
    p = plan_at(BASE + 365 * 24 * HOUR, BASE, cal=cal)
    assert [r.late for r in p.runs] == [True] + [False] * 11  # the newest overdue, then on time
    assert p.catchup.more_dropped and p.catchup.dropped_times == 1000
