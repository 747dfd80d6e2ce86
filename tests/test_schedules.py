"""Schedules: creation and checks, the scheduler (ahead of time, idempotent, catch-up, Late),
backfill, pause and resume, preview, DST, and schedulers racing on one database.

Time is a test clock (``persevere.clock.use``): a day of downtime is a call,
not a wait. The scheduler runs in this process (``Scheduler(journal).tick()``);
tests/test_schedule_processes.py runs it as real processes.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import sqlite3
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import persevere
from persevere import clock
from persevere.journal import FlowRun, Journal, new_id, open_journal
from persevere.journal.deployments import Deployment
from persevere.journal.records import from_row
from persevere.journal.schedules import Schedule
from persevere.journal.statements import FLOW_COLUMNS
from persevere.settings import Settings
from persevere.statemachine import StateType, fold
from persevere.statemachine.calendar import local_iso, parse_time
from persevere.testing import Harness, TestClock
from persevere.worker import deploying, scheduling
from persevere.worker.owners import this_process
from persevere.worker.scheduler import Scheduler
from persevere.worker.scheduling import ScheduleSpec

from .conftest import FLOWS, error_line, invoke, ok
from .flows import scheduled

pytestmark = pytest.mark.timeout(60)

FLOW_FILE = FLOWS / "scheduled.py"
START = "2026-03-28T12:00:30+00:00"  # a Saturday; Europe/Berlin springs forward on Sunday
MIN, HOUR = 60_000, 3_600_000


@pytest.fixture
def tc() -> Iterator[TestClock]:
    """The test clock, from START, in place of the system clock."""
    test_clock = TestClock(START)
    previous = clock.use(test_clock)
    yield test_clock
    clock.use(previous)


@pytest.fixture(autouse=True)
def _isolate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith(("scheduled", "persevere_entrypoint")):
            del sys.modules[name]


def ep(name: str = "nightly") -> str:
    return f"{FLOW_FILE}:{name}"


def at(text: str, timezone: str = "UTC") -> int:
    return parse_time(text, timezone)


def make_deployment(
    journal: Journal, flow: Any = scheduled.nightly, queue: str = "q"
) -> Deployment:
    return journal.deployments.put(
        flow_name=flow.name,
        name="n",
        entrypoint=f"{FLOW_FILE}:{flow.name}",
        parameters={"day": "monday"} if flow is scheduled.nightly else {},
        signature=deploying.describe(flow.fn),
        work_queue=queue,
        tags=["nightly"],
    )


def add(
    journal: Journal, deployment: Deployment, kind: str, expression: str, **kw: Any
) -> Schedule:
    return scheduling.add(journal, deployment, ScheduleSpec(kind, expression, **kw))


def runs_of(journal: Journal, schedule: Schedule) -> list[FlowRun]:
    rows = journal.query(
        f"SELECT {FLOW_COLUMNS} FROM flow_runs WHERE schedule_id = ? ORDER BY schedule_ms",
        (schedule.id,),
    )
    return [from_row(FlowRun, r) for r in rows]


def times(runs: list[FlowRun], state: str | None = None) -> list[str]:
    """The schedule times of runs (of one state name), as UTC ISO text, in order."""
    return [
        local_iso(r.schedule_ms or 0, "UTC")[11:16]
        for r in runs
        if state is None or r.state_name == state
    ]


def tick(journal: Journal, **kw: Any) -> list[str]:
    return Scheduler(journal, **kw).tick()


def as_json(*args: str) -> Any:
    return json.loads(ok(*args, "--json").stdout)


# -- making schedules --------------------------------------------------------------------


def test_deploy_with_schedules_shows_them_and_keeps_them_until_told(
    db: Path, tc: TestClock
) -> None:
    out = ok(
        "deploy", ep(), "--name", "n", "--cron", "0 7 * * 1-5", "--interval", "15m",
        "--timezone", "Europe/Berlin",
    ).stdout  # fmt: skip
    docs = as_json("deployments", "schedule", "ls", "nightly/n")
    assert [(d["kind"], d["expression"], d["timezone"]) for d in docs] == [
        ("cron", "0 7 * * 1-5", "Europe/Berlin"),
        ("interval", "900", "Europe/Berlin"),
    ]
    assert [d["next_run"] for d in docs] == [
        "2026-03-30T07:00:00+02:00",
        "2026-03-28T13:15:00+01:00",
    ]
    assert {(d["active"], d["catchup"], d["catchup_cap"], d["grace_seconds"]) for d in docs} == {
        (True, "latest", 100, 60.0)
    }
    assert docs[0]["cursor"] == "2026-03-28T12:00:30.000+00:00"  # nothing before it is missed
    cron_id = docs[0]["id"][:8]
    assert f"schedule {cron_id}  cron '0 7 * * 1-5' in Europe/Berlin, catch-up latest" in out
    assert "next run 2026-03-30T07:00:00+02:00" in out
    assert out.endswith(f"next run: 2026-03-28T13:15:00+01:00 (schedule {docs[1]['id'][:8]})\n")
    # Deploying again: the same schedules are kept (ids, cursors), others replace them,
    # and no schedule option keeps what there is.
    tc.advance(minutes=5)
    ok("deploy", ep(), "--name", "n", "--cron", "0 7 * * 1-5", "--timezone", "Europe/Berlin")
    assert [d["id"] for d in as_json("deployments", "schedule", "ls", "nightly/n")] == [
        docs[0]["id"]
    ]
    ok("deploy", ep(), "--name", "n", "-p", "full=true")
    again = as_json("deployments", "schedule", "ls", "nightly/n")
    assert again == [docs[0]]
    [listed] = as_json("deployments", "ls")
    assert listed["schedules"] == {"active": 1, "total": 1}
    table = ok("deployments", "ls").stdout.splitlines()
    assert table[1].split()[:3] == ["nightly/n", "default", "1/1"]
    shown = as_json("deployments", "inspect", "nightly/n")
    assert shown["next_run"] == "2026-03-30T07:00:00+02:00"
    assert [s["id"] for s in shown["schedules"]] == [docs[0]["id"]]
    text = ok("deployments", "inspect", "nightly/n").stdout
    assert "schedules:\n  schedule " in text and "next run: 2026-03-30T07:00:00+02:00" in text


def test_deploying_again_keeps_a_paused_schedule_as_it_is(db: Path, tc: TestClock) -> None:
    ok("deploy", ep(), "--name", "n", "--cron", "@daily", "--interval", "1h")
    ok("deployments", "pause-schedule", "nightly/n")
    before = as_json("deployments", "schedule", "ls", "nightly/n")
    tc.advance(hours=2)
    ok("deploy", ep(), "--name", "n", "--cron", "@daily", "--interval", "1h")
    assert as_json("deployments", "schedule", "ls", "nightly/n") == before
    assert [d["active"] for d in before] == [False, False]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--cron", "0 7 * *"], "cron"),
        (["--cron", "0 7 * * * *"], "seconds"),
        (["--interval", "soon"], "interval 'soon' is not a duration"),
        (["--interval", "0"], "must be longer than 0 seconds"),
        (["--cron", "@daily", "--timezone", "Mars/Olympus"], "Mars/Olympus"),
        (["--interval", "1h", "--anchor", "yesterday"], "is not an ISO date"),
        (["--cron", "@daily", "--grace", "a while"], "a while"),
        (["--timezone", "Europe/Berlin"], "--timezone is an option of schedules; give --cron"),
        (["--catchup", "all"], "--catchup is an option of schedules"),
        (["--rrule", "FREQ=SOMETIMES"], "FREQ=SOMETIMES"),
    ],
)
def test_deploy_refuses_bad_schedules_in_one_line_and_changes_nothing(
    db: Path, tc: TestClock, args: list[str], expected: str
) -> None:
    line = error_line(invoke("deploy", ep(), "--name", "n", *args))
    assert expected in line
    assert as_json("deployments", "ls") == []  # checked before anything is written


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "give exactly one of --cron, --interval, --rrule (got none)"),
        (["--cron", "@daily", "--interval", "1h"], "(got --cron, --interval)"),
        (["--cron", "@daily", "-p", "nope=1"], "has no parameter 'nope'; it takes: day, full"),
        (["--cron", "@daily", "--catchup", "some"], "--catchup 'some' must be one of: latest"),
        (["--cron", "@daily", "--catchup-cap", "0"], "--catchup-cap 0 must be at least 1"),
        (["--cron", "@daily", "--catchup-cap", "lots"], "--catchup-cap 'lots' must be a whole"),
        (["--cron", "@daily", "-p", "oops"], "parameter 'oops' must look like NAME=VALUE"),
    ],
)
def test_schedule_add_refuses_bad_input(
    db: Path, tc: TestClock, args: list[str], expected: str
) -> None:
    ok("deploy", ep(), "--name", "n")
    line = error_line(invoke("deployments", "schedule", "add", "nightly/n", *args))
    assert expected in line


def test_schedule_parameters_are_checked_against_the_stored_signature(
    db: Path, tc: TestClock, journal: Journal
) -> None:
    ok("deploy", ep("needs"), "--name", "n")
    line = error_line(invoke("deployments", "schedule", "add", "needs/n", "--cron", "@daily"))
    assert "needs parameter 'region', which it has no default for" in line
    out = ok(
        "deployments", "schedule", "add", "needs/n", "--cron", "@daily", "-p", "region=eu",
        "-p", "retries=2", "--catchup", "all", "--catchup-cap", "5", "--grace", "2m", "--inactive",
    ).stdout  # fmt: skip
    assert out.startswith("added schedule to needs/n: ")
    assert "catch-up all (cap 5), grace 120 s" in out and out.endswith("; paused\n")
    [doc] = as_json("deployments", "schedule", "ls", "needs/n")
    assert doc["parameters"] == {"region": "eu", "retries": 2}
    assert (doc["active"], doc["next_run"]) == (False, None)


def test_unknown_deployment_and_schedule_ids_are_one_line(db: Path, tc: TestClock) -> None:
    ok("deploy", ep(), "--name", "n", "--cron", "@daily")
    assert "no deployment 'nightly/x'" in error_line(
        invoke("deployments", "schedule", "ls", "nightly/x")
    )
    line = error_line(invoke("deployments", "schedule", "delete", "nightly/n", "zzzz"))
    assert "deployment 'nightly/n' has no schedule 'zzzz'" in line
    line = error_line(invoke("deployments", "pause-schedule", "nightly/n", "zzzz"))
    assert "has no schedule 'zzzz'" in line
    ok("deploy", ep("quick"), "--name", "n")
    line = error_line(invoke("deployments", "resume-schedule", "quick/n"))
    assert "deployment 'quick/n' has no schedules" in line


def test_flow_deploy_takes_cron_interval_and_rrule(
    db: Path, tc: TestClock, journal: Journal
) -> None:
    flow = scheduled.nightly
    schedules = [
        persevere.Cron("0 7 * * 1-5", timezone="Europe/Berlin", parameters={"full": True}),
        persevere.Interval("15m", anchor="2026-01-01T00:05", catchup="skip"),
        persevere.RRule("FREQ=WEEKLY;BYDAY=MO", timezone="America/New_York", grace_seconds=300),
    ]
    deployment = flow.deploy("n", schedules=schedules)
    cron, interval, rule = journal.schedules.of(deployment)
    assert json.loads(cron.parameters) == {"full": True}
    assert (interval.expression, interval.anchor_ms, interval.catchup) == (
        "900", at("2026-01-01T00:05"), "skip"
    )  # fmt: skip
    # An rrule without DTSTART counts from midnight of the day it was made, in its zone.
    assert rule.anchor_ms == at("2026-03-28T00:00", "America/New_York")
    assert rule.grace_ms == 300_000
    assert scheduling.next_run(rule, clock.now_ms()) == at("2026-03-30T00:00", "America/New_York")
    # The same again keeps them; None keeps them; [] removes them; a bad one is refused.
    assert flow.deploy("n", schedules=schedules) and journal.schedules.of(deployment) == [
        cron, interval, rule
    ]  # fmt: skip
    flow.deploy("n")
    assert len(journal.schedules.of(deployment)) == 3
    with pytest.raises(ValueError, match="cron"):
        flow.deploy("n", schedules=[persevere.Cron("every day")])
    assert len(journal.schedules.of(deployment)) == 3
    with pytest.raises(persevere.ParameterError, match="has no parameter 'nope'"):
        flow.deploy("n", schedules=[persevere.Cron("@daily", parameters={"nope": 1})])
    flow.deploy("n", schedules=[])
    assert journal.schedules.of(deployment) == []


# -- the scheduler makes runs ahead of time ---------------------------------------------------


def test_runs_are_made_ahead_within_the_horizon_and_max_ahead(
    db: Path, tc: TestClock, journal: Journal
) -> None:
    deployment = make_deployment(journal)
    quarter = add(journal, deployment, "interval", "15m", parameters={"full": True})
    minute = add(journal, deployment, "cron", "* * * * *")
    weekly = add(journal, deployment, "cron", "0 9 * * 1")
    lines = tick(journal)
    assert times(runs_of(journal, quarter)) == ["12:15", "12:30", "12:45", "13:00"]
    assert len(runs_of(journal, minute)) == 10  # max_ahead
    assert times(runs_of(journal, weekly)) == ["09:00"]  # beyond the horizon: the next one
    span = "2026-03-28T12:15:00+00:00 .. 2026-03-28T13:00:00+00:00"
    assert f"schedule {quarter.short_id} (nightly/n): made 4 runs for {span}" in lines
    run = runs_of(journal, quarter)[0]
    assert (run.state_type, run.state_name, run.work_queue) == (
        StateType.SCHEDULED,
        "Scheduled",
        "q",
    )
    assert run.scheduled_ms == run.schedule_ms == at("2026-03-28T12:15")
    assert json.loads(run.parameters) == {"day": "monday", "full": True}
    assert json.loads(run.tags or "[]") == ["nightly"]
    assert run.deployment_id == deployment.id and run.entrypoint == deployment.entrypoint
    [first] = journal.history(run.id)
    assert (
        first.message == f"scheduled by schedule {quarter.short_id} for 2026-03-28T12:15:00+00:00"
    )
    # Ticks again make nothing new; time going on makes the next ones, no more than max_ahead.
    assert tick(journal) == []
    tc.advance(minutes=20)
    tick(journal)
    assert times(runs_of(journal, quarter)) == ["12:15", "12:30", "12:45", "13:00", "13:15"]
    assert len([r for r in runs_of(journal, minute) if (r.schedule_ms or 0) > clock.now_ms()]) == 10
    assert times(runs_of(journal, weekly)) == ["09:00"]
    assert tick(journal, max_ahead=2, horizon_seconds=0) == []


def test_an_idle_pass_only_reads(db: Path, tc: TestClock, journal: Journal) -> None:
    deployment = make_deployment(journal)
    add(journal, deployment, "interval", "15m")
    add(journal, deployment, "cron", "0 9 * * 1")
    scheduler = Scheduler(journal)
    assert scheduler.tick()
    watcher = sqlite3.connect(db)
    before = watcher.execute("PRAGMA data_version").fetchone()[0]
    for _ in range(3):
        tc.advance(seconds=10)
        assert scheduler.tick() == []
    assert Scheduler(journal).tick() == []  # a fresh one too (nothing remembered)
    assert watcher.execute("PRAGMA data_version").fetchone()[0] == before  # nobody committed
    tc.advance(minutes=15)
    assert scheduler.tick()
    assert watcher.execute("PRAGMA data_version").fetchone()[0] != before
    watcher.close()


def test_a_calendar_that_ended_with_its_times_backfilled_leaves_the_schedule_idle(
    db: Path, tc: TestClock, journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = make_deployment(journal)
    rule = "DTSTART:20260328T130000\nRRULE:FREQ=HOURLY;COUNT=3"
    three = add(journal, deployment, "rrule", rule, catchup="skip")
    tc.set("2026-03-28T16:00:30+00:00")  # no scheduler ran since 12:00:30
    done = scheduling.backfill(journal, deployment, [three], at("2026-03-28T13:00"),
                               at("2026-03-28T15:00"))  # fmt: skip
    assert len(done.made) == 3
    passes: list[str] = []
    advance = journal.schedules.advance
    monkeypatch.setattr(journal.schedules, "advance", lambda *a: passes.append(a[0]) or advance(*a))
    scheduler = Scheduler(journal)
    assert scheduler.tick() == [] and passes == [three.id]  # dealt with: nothing to make
    assert scheduler.tick() == [] and passes == [three.id]  # then idle: no transaction
    assert Scheduler(journal).tick() == [] and passes == [three.id]


def test_a_paused_or_deleted_schedule_makes_nothing(
    db: Path, tc: TestClock, journal: Journal
) -> None:
    deployment = make_deployment(journal)
    paused = add(journal, deployment, "interval", "15m", active=False)
    gone = add(journal, deployment, "interval", "10m")
    journal.schedules.delete(gone)
    assert tick(journal) == []
    assert runs_of(journal, paused) == runs_of(journal, gone) == []


# -- catch-up after the scheduler was down ----------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "cap", "cancelled", "made_late", "scheduled", "dropped"),
    [
        ("skip", 100, ["13:00"], [], ["17:00", "18:00"], "dropped 4: 1 run cancelled, 3 missed"),
        ("latest", 100, ["13:00"], ["16:00"], ["17:00", "18:00"], "dropped 3: 1 run cancelled, 2"),
        (
            "all",
            2,
            ["13:00"],
            ["15:00", "16:00"],
            ["17:00", "18:00"],
            "dropped 2: 1 run cancelled, 1",
        ),
        ("all", 100, [], ["14:00", "15:00", "16:00"], ["17:00", "18:00"], None),
    ],
)
def test_catch_up_after_downtime(
    db: Path,
    tc: TestClock,
    journal: Journal,
    policy: str,
    cap: int,
    cancelled: list[str],
    made_late: list[str],
    scheduled: list[str],
    dropped: str | None,
) -> None:
    deployment = make_deployment(journal)
    hourly = add(journal, deployment, "interval", "1h", catchup=policy, catchup_cap=cap)
    tick(journal)
    assert times(runs_of(journal, hourly)) == ["13:00"]
    tc.advance(hours=5)  # 17:00:30: nobody ran the scheduler, nor a worker, since 12:00:30
    lines = tick(journal)
    runs = runs_of(journal, hourly)
    assert times(runs, "Cancelled") == cancelled
    late = [r for r in runs if r.state_name == "Late"]
    assert times(late) == sorted(made_late + ([] if cancelled else ["13:00"]))
    assert times(runs, "Scheduled") == scheduled
    for run in runs:
        assert run.scheduled_ms == run.schedule_ms  # made for their time, due then
    if dropped:
        assert any(dropped in line for line in lines), lines
    if policy == "latest":
        [gone] = [r for r in runs if r.state_name == "Cancelled"]
        assert (
            gone.state_message
            == "superseded by the run for 2026-03-28T16:00:00+00:00 (catch-up latest)"
        )
        [caught] = [r for r in runs if r.schedule_ms == at("2026-03-28T16:00")]
        assert journal.history(caught.id)[0].name == "Late"  # made Late, directly
    if policy == "skip":
        [gone] = [r for r in runs if r.state_name == "Cancelled"]
        assert gone.state_message == "skipped: not started within 60 s of its time (catch-up skip)"
    assert tick(journal) == []  # dealt with: the next pass is idle


def test_latest_keeps_one_late_run_when_no_worker_takes_them(
    db: Path, tc: TestClock, journal: Journal
) -> None:
    deployment = make_deployment(journal)
    hourly = add(journal, deployment, "interval", "1h")
    for _ in range(4):  # a scheduler runs all along, no worker does
        tick(journal)
        tc.advance(minutes=30)
    runs = runs_of(journal, hourly)
    assert times(runs, "Late") == ["13:00"]  # 13:30: late, still the newest candidate
    tc.advance(minutes=31)  # 14:01: 14:00 is late too and supersedes it
    lines = tick(journal)
    runs = runs_of(journal, hourly)
    assert times(runs, "Cancelled") == ["13:00"] and times(runs, "Late") == ["14:00"]
    assert any("catch-up latest dropped 1: 1 run cancelled" in line for line in lines)


def test_a_year_down_on_a_per_minute_cron_catches_up_cheaply(
    db: Path, tc: TestClock, journal: Journal
) -> None:
    deployment = make_deployment(journal)
    minute = add(journal, deployment, "cron", "* * * * *", catchup="all", catchup_cap=3)
    tc.advance(days=365)
    lines = tick(journal)
    runs = runs_of(journal, minute)
    assert len([r for r in runs if r.state_name == "Late"]) == 3
    assert any("dropped 1000+: 0 runs cancelled, 1000+ missed times not made" in x for x in lines)


def test_catch_up_never_drops_backfills_or_runs_that_started(
    db: Path, tc: TestClock, journal: Journal
) -> None:
    deployment = make_deployment(journal)
    hourly = add(journal, deployment, "interval", "1h", catchup="skip")
    tick(journal)
    [made] = runs_of(journal, hourly)
    # A worker started it, it crashed, it came back to its queue: it has run before.
    claimed = journal.workers.claim("w", ["q"], this_process(), new_id())
    assert claimed is None  # not due yet
    tc.set("2026-03-28T13:00:00+00:00")
    claimed = journal.workers.claim("w", ["q"], this_process(), new_id())
    assert claimed is not None and claimed.id == made.id
    started = journal.claim_flow_run(claimed, this_process(), new_id())
    journal.mark_crashed(started, "test: its process died")
    journal.writer.release(made.id)
    back = journal.workers.reschedule(journal.get_flow_run(made.id), "resumed", automatic=True)
    assert back.run_count == 1
    done = scheduling.backfill(journal, deployment, [hourly], at("2026-03-28T08:00"),
                               at("2026-03-28T10:00"))  # fmt: skip
    assert len(done.made) == 3
    tc.advance(hours=3)
    tick(journal)
    runs = {r.id: r for r in runs_of(journal, hourly)}
    assert runs[made.id].state_name == "Late"  # not cancelled, though catch-up is skip
    for _, _, run_id in done.made:
        assert runs[run_id].state_name == "Late"


# -- Late --------------------------------------------------------------------------------------


def test_late_uses_the_schedule_grace_for_its_runs_and_the_setting_for_others(
    db: Path, tc: TestClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERSEVERE_LATE_AFTER_SECONDS", "120")
    journal = open_journal(db)
    assert journal.settings.late_after_seconds == 120
    deployment = make_deployment(journal)
    slow = add(journal, deployment, "interval", "1h", grace="5m")
    tick(journal)
    [run] = runs_of(journal, slow)
    by_hand = journal.deployments.schedule_run(
        deployment, "{}", scheduled_ms=at("2026-03-28T13:00")
    )
    early = journal.deployments.schedule_run(deployment, "{}", scheduled_ms=at("2026-03-28T12:30"))
    # A run whose first attempt failed waits for its retry: AwaitingRetry, type SCHEDULED too.
    journal.deployments.schedule_run(deployment, "{}", scheduled_ms=at("2026-03-28T12:00"))
    claimed = journal.workers.claim("w", ["q"], this_process(), new_id())
    assert claimed is not None
    running = journal.claim_flow_run(claimed, this_process(), new_id())
    retrying = journal.finish_flow_run(
        running,
        StateType.SCHEDULED,
        "AwaitingRetry",
        extra={"scheduled_ms": at("2026-03-28T12:10")},
    )
    journal.writer.release(retrying.id)
    tc.set("2026-03-28T13:01:59.999+00:00")
    tick(journal)
    assert journal.get_flow_run(by_hand.id).state_name == "Scheduled"  # 1 ms inside 120 s
    tc.set("2026-03-28T13:02:00+00:00")
    lines = tick(journal)
    assert journal.get_flow_run(by_hand.id).state_name == "Late"
    assert f"run {by_hand.id} (nightly) Late: not started within 120 s of its time" in lines
    assert journal.get_flow_run(run.id).state_name == "Scheduled"  # the schedule's 5 min
    tc.set("2026-03-28T13:05:00+00:00")
    tick(journal)
    late = journal.get_flow_run(run.id)
    assert (late.state_type, late.state_name) == (StateType.SCHEDULED, "Late")
    assert late.state_message == "not started within 300 s of its time"
    # Only runs in Scheduled: AwaitingRetry (waiting 55 minutes past its time) stays so.
    assert journal.get_flow_run(retrying.id).state_name == "AwaitingRetry"
    # Late runs are claimed like any due run, oldest first; a claimed run is left alone.
    first = journal.workers.claim("w", ["q"], this_process(), new_id())
    assert first is not None and first.id == retrying.id
    second = journal.workers.claim("w", ["q"], this_process(), new_id())
    assert second is not None and second.id == early.id and second.state_name == "Pending"
    tick(journal)
    assert journal.get_flow_run(second.id).state_name == "Pending"
    assert [t.name for t in journal.history(second.id)] == ["Scheduled", "Late", "Pending"]


# -- backfill ------------------------------------------------------------------------------


def test_backfill_makes_runs_due_now_in_time_order_once(
    db: Path, tc: TestClock, journal: Journal
) -> None:
    ok("deploy", ep(), "--name", "n", "--cron", "0 6 * * *", "--timezone", "Europe/Berlin",
       "--catchup", "skip")  # fmt: skip
    tc.set("2026-04-02T12:00:00+00:00")
    out = ok("deployments", "backfill", "nightly/n", "--from", "2026-03-20", "--to", "2026-03-23")
    lines = out.stdout.splitlines()
    assert [line.split()[4] for line in lines] == [
        "2026-03-20T06:00:00+01:00", "2026-03-21T06:00:00+01:00", "2026-03-22T06:00:00+01:00",
        "2026-03-23T06:00:00+01:00",  # --to a date: that whole day
    ]  # fmt: skip
    assert "backfill of nightly/n from 2026-03-20T00:00:00+01:00 to 2026-03-23T23:59:59" \
        in out.stderr and "4 runs made, 0 skipped" in out.stderr  # fmt: skip
    made = [journal.get_flow_run(line.split()[2]) for line in lines]
    now = clock.now_ms()
    assert all(r.state_name == "Scheduled" and (r.scheduled_ms or 0) <= now for r in made)
    assert [r.scheduled_ms for r in made] == sorted(r.scheduled_ms for r in made)  # time order
    days = ["2026-03-20", "2026-03-21", "2026-03-22", "2026-03-23"]
    assert [r.schedule_ms for r in made] == [at(f"{d}T06:00", "Europe/Berlin") for d in days]
    assert journal.history(made[0].id)[0].message.startswith("backfill by schedule ")
    # Again, overlapping: the times that have runs are skipped.
    again = ok("deployments", "backfill", "nightly/n", "--from", "2026-03-21T00:00+01:00",
               "--to", "2026-03-24T23:00", "--timezone", "Europe/Berlin")  # fmt: skip
    assert [line.split()[0] for line in again.stdout.splitlines()] == [
        "made", "skipped", "skipped", "skipped"]  # made first, then what was skipped  # fmt: skip
    # Workers take them oldest first; catch-up (skip) never cancels them, Late marks them.
    claimed = journal.workers.claim("w", [], this_process(), new_id())
    assert claimed is not None and claimed.id == made[0].id
    tc.advance(hours=2)
    tick(journal)
    assert {journal.get_flow_run(r.id).state_name for r in made[1:]} == {"Late"}


def test_backfill_refuses_too_many_future_and_reversed_ranges(db: Path, tc: TestClock) -> None:
    ok("deploy", ep(), "--name", "n", "--interval", "1h")
    cases = [
        (["--from", "2026-03-01", "--to", "2026-03-28", "--max", "100"],
         "backfill would make more than 100 runs; give a shorter range or a larger --max"),
        (["--from", "2026-03-29", "--to", "2026-03-30"], "--from is not in the past"),
        (["--from", "2026-03-20", "--to", "2026-03-10"], "--from is after --to"),
        (["--from", "last week", "--to", "2026-03-10"], "is not an ISO date"),
        (["--from", "2026-03-20", "--to", "2026-03-21", "--schedule", "ffff"],
         "no schedule 'ffff'"),
    ]  # fmt: skip
    for args, expected in cases:
        assert expected in error_line(invoke("deployments", "backfill", "nightly/n", *args))
    assert as_json("runs", "ls") == []


# -- pause, resume ----------------------------------------------------------------------------


def test_pause_deletes_runs_made_ahead_and_resume_makes_them_again(
    db: Path, tc: TestClock, journal: Journal
) -> None:
    ok("deploy", ep(), "--name", "n", "--interval", "15m", "--interval", "1h")
    quarter, hourly = journal.schedules.of(journal.deployments.get("nightly/n"))
    tick(journal)
    tc.set("2026-03-28T12:20:00+00:00")  # 12:15 is due: a worker takes it
    taken = journal.workers.claim("w", [], this_process(), new_id())
    assert taken is not None and taken.schedule_ms == at("2026-03-28T12:15")
    before = {r.id for r in runs_of(journal, hourly)}
    out = ok("deployments", "pause-schedule", "nightly/n", quarter.id[:6]).stdout
    assert out == f"schedule {quarter.short_id} of nightly/n paused\n" \
        "deleted 3 runs made ahead that had not started\n"  # fmt: skip
    assert times(runs_of(journal, quarter)) == ["12:15"]  # the one taken stays
    assert not journal.query("SELECT 1 FROM states WHERE run_id NOT IN (SELECT id FROM flow_runs)")
    assert {r.id for r in runs_of(journal, hourly)} == before  # the other schedule goes on
    assert tick(journal) == []
    again = ok("deployments", "pause-schedule", "nightly/n").stdout
    assert f"schedule {quarter.short_id} of nightly/n was paused already" in again
    assert f"schedule {hourly.short_id} of nightly/n paused" in again
    tc.set("2026-03-28T12:50:00+00:00")
    out = ok("deployments", "resume-schedule", "nightly/n", quarter.short_id).stdout
    assert out == f"schedule {quarter.short_id} of nightly/n resumed; next run " \
        "2026-03-28T13:00:00+00:00\n"  # fmt: skip
    tick(journal)
    # 12:30 and 12:45 passed while it was paused: not made; from now on, each time once.
    assert times(runs_of(journal, quarter)) == ["12:15", "13:00", "13:15", "13:30", "13:45"]
    assert times(runs_of(journal, hourly)) == []  # it stays paused
    assert ok("deployments", "resume-schedule", "nightly/n").stdout.count("resumed") == 1
    tick(journal)
    assert times(runs_of(journal, hourly)) == ["13:00"]  # remade; no second run for 13:00
    assert len({r.id for r in runs_of(journal, hourly)} & before) == 0


def test_resume_straight_after_pause_makes_the_same_times_again(
    db: Path, tc: TestClock, journal: Journal
) -> None:
    deployment = make_deployment(journal)
    quarter = add(journal, deployment, "interval", "15m")
    tick(journal)
    made = times(runs_of(journal, quarter))
    journal.schedules.set_active([quarter], False)
    journal.schedules.set_active(journal.schedules.of(deployment), True)
    tick(journal)
    assert times(runs_of(journal, quarter)) == made


# -- preview, delete ----------------------------------------------------------------------------


def test_preview_merges_the_active_schedules_in_a_timezone(db: Path, tc: TestClock) -> None:
    ok("deploy", ep(), "--name", "n", "--cron", "0 7 * * *", "--timezone", "Europe/Berlin")
    ok("deployments", "schedule", "add", "nightly/n", "--cron", "0 7 * * *",
       "--timezone", "America/New_York")  # fmt: skip
    ok("deployments", "schedule", "add", "nightly/n", "--interval", "1m", "--inactive")
    berlin, new_york, _ = as_json("deployments", "schedule", "ls", "nightly/n")
    shown = ok("deployments", "schedule", "preview", "nightly/n", "--count", "4").stdout
    rows = [line.split()[:2] for line in shown.splitlines()[1:]]
    # 12:00 UTC now: both were at 07:00 today already.
    assert (
        rows
        == [
            ["2026-03-29T07:00:00+02:00", berlin["id"][:8]],  # summer time from tonight
            ["2026-03-29T07:00:00-04:00", new_york["id"][:8]],
            ["2026-03-30T07:00:00+02:00", berlin["id"][:8]],
            ["2026-03-30T07:00:00-04:00", new_york["id"][:8]],
        ]
    )
    tokyo = as_json("deployments", "schedule", "preview", "nightly/n", "--count", "2",
                    "--timezone", "Asia/Tokyo")  # fmt: skip
    assert tokyo == [
        {"time": "2026-03-29T14:00:00+09:00", "schedule": berlin["id"]},
        {"time": "2026-03-29T20:00:00+09:00", "schedule": new_york["id"]},
    ]
    assert "Mars/Base" in error_line(
        invoke("deployments", "schedule", "preview", "nightly/n", "--timezone", "Mars/Base")
    )
    assert as_json("runs", "ls") == []  # it made nothing


def test_deleting_a_deployment_or_a_schedule_deletes_the_runs_made_ahead(
    db: Path, tc: TestClock, journal: Journal
) -> None:
    ok("deploy", ep(), "--name", "n", "--interval", "15m", "--interval", "1h")
    quarter, hourly = journal.schedules.of(journal.deployments.get("nightly/n"))
    tick(journal)
    tc.set("2026-03-28T12:20:00+00:00")
    taken = journal.workers.claim("w", [], this_process(), new_id())
    assert taken is not None
    out = ok("deployments", "schedule", "delete", "nightly/n", hourly.short_id).stdout
    assert out == f"deleted schedule {hourly.short_id} of nightly/n and 1 run it made ahead\n"
    assert runs_of(journal, hourly) == []
    by_hand = ok("deployments", "run", "nightly/n").stdout.strip()
    out = ok("deployments", "delete", "nightly/n").stdout
    assert out == "deleted deployment 'nightly/n'; cancelled 1 scheduled run\n"
    assert journal.get_flow_run(by_hand).state_name == "Cancelled"
    assert [r.id for r in runs_of(journal, quarter)] == [taken.id]  # the one taken stays
    assert journal.query("SELECT count(*) FROM schedules")[0][0] == 0


# -- DST ------------------------------------------------------------------------------------------


def test_a_daily_cron_at_a_time_spring_forward_skips_runs_once_at_three(
    db: Path, journal: Journal
) -> None:
    test_clock = TestClock("2026-03-27T12:00:00+00:00")
    previous = clock.use(test_clock)
    try:
        deployment = make_deployment(journal)
        daily = add(journal, deployment, "cron", "30 2 * * *", timezone="Europe/Berlin")
        for _ in range(4 * 24):  # four days, a pass an hour
            tick(journal)
            test_clock.advance(hours=1)
    finally:
        clock.use(previous)
    shown = [local_iso(r.schedule_ms or 0, "Europe/Berlin") for r in runs_of(journal, daily)]
    assert shown[:4] == [
        "2026-03-28T02:30:00+01:00",
        "2026-03-29T03:00:00+02:00",  # 02:30 does not exist that night: once, at 03:00 CEST
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
    ]


# -- schedulers at once ----------------------------------------------------------------------------


def test_two_schedulers_on_two_connections_make_each_time_once(
    db: Path, tc: TestClock, journal: Journal
) -> None:
    deployment = make_deployment(journal)
    second = add(journal, deployment, "interval", "1s", catchup="all")
    minute = add(journal, deployment, "interval", "1m", catchup="all", catchup_cap=1000)
    errors: list[BaseException] = []
    stop = threading.Event()

    def hammer(connection: Journal) -> None:
        scheduler = Scheduler(connection, horizon_seconds=5)
        try:
            while not stop.is_set():
                scheduler.tick()
        except BaseException as exc:  # the test fails with it below
            errors.append(exc)

    connections = [Journal(db, Settings.from_env()) for _ in range(2)]
    threads = [threading.Thread(target=hammer, args=(c,)) for c in connections]
    for thread in threads:
        thread.start()
    try:
        for _ in range(300):
            tc.advance(seconds=0.7)
            stop.wait(0.002)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        for c in connections:
            c.close()
    assert errors == []
    for schedule, step in ((second, 1000), (minute, 60_000)):
        made = [r.schedule_ms or 0 for r in runs_of(journal, schedule)]
        assert len(made) == len(set(made)) > 2
        assert all(b - a == step for a, b in itertools.pairwise(made))  # no time skipped


def test_the_harness_ticks_at_its_clock(persevere_harness: Harness) -> None:
    h = persevere_harness
    deployment = make_deployment(h.journal)
    add(h.journal, deployment, "interval", "1d", anchor="2026-01-01T06:00")
    assert h.tick() == [
        f"schedule {h.journal.schedules.of(deployment)[0].short_id} (nightly/n): made 1 run for "
        "2026-01-01T06:00:00+00:00"
    ]
    h.clock.advance(days=1)
    made, late = h.tick()
    assert made.endswith("made 1 run for 2026-01-02T06:00:00+00:00")
    assert late.endswith("Late: not started within 60 s of its time")


# -- a state machine: ticks, time, pauses and workers against the invariants --------------------


class SchedulerMachine(RuleBasedStateMachine):
    """One schedule every 10 minutes, a scheduler, a clock that jumps, a worker that
    sometimes takes a due run; after every step the journal must hold each time once,
    only times of the calendar, histories that fold, and after a pass: the runs ahead
    within bounds, no more overdue runs than the policy keeps, nothing Scheduled past
    its grace; with ``all`` and a large cap and no pause, no time skipped."""

    def __init__(self) -> None:
        super().__init__()
        self.folder = tempfile.TemporaryDirectory(prefix="persevere-sched-")
        self.clock = TestClock(START)
        self.previous = clock.use(self.clock)
        settings = dataclasses.replace(Settings.from_env(), late_after_seconds=60.0)
        self.journal = Journal(Path(self.folder.name) / "p.db", settings)
        self.deployment = make_deployment(self.journal)
        self.paused_ever = False
        self.cursor = 0

    @initialize(
        policy=st.sampled_from(["skip", "latest", "all"]),
        cap=st.sampled_from([1, 3, 1000]),
        grace=st.sampled_from([0, 60, 900]),
    )
    def create(self, policy: str, cap: int, grace: int) -> None:
        self.schedule = scheduling.add(
            self.journal, self.deployment,
            ScheduleSpec("interval", "10m", catchup=policy, catchup_cap=cap, grace=grace),
        )  # fmt: skip
        self.cursor = self.schedule.cursor_ms or 0

    @rule(minutes=st.integers(0, 240))
    def advance(self, minutes: int) -> None:
        self.clock.advance(minutes=minutes, seconds=7)

    @rule()
    def tick(self) -> None:
        Scheduler(self.journal, horizon_seconds=1800, max_ahead=4).tick()
        self.after_tick()

    @rule()
    def pause(self) -> None:
        self.journal.schedules.set_active([self._current()], False)
        self.paused_ever = True

    @rule()
    def resume(self) -> None:
        changed, _ = self.journal.schedules.set_active([self._current()], True)
        if changed:
            self.cursor = changed[0].cursor_ms or 0

    @rule()
    def a_worker_takes_one(self) -> None:
        self.journal.workers.claim("w", [], this_process(), new_id())

    def _current(self) -> Schedule:
        [schedule] = self.journal.schedules.of(self.deployment)
        return schedule

    def runs(self) -> list[FlowRun]:
        return runs_of(self.journal, self.schedule)

    @invariant()
    def each_time_once_and_of_the_calendar(self) -> None:
        if not hasattr(self, "schedule"):
            return
        made = [r.schedule_ms or 0 for r in self.runs()]
        assert len(made) == len(set(made))
        assert all(t % (10 * MIN) == 0 for t in made)
        for run in self.runs():
            moves = [(t.to_type, t.name) for t in self.journal.history(run.id)]
            assert fold(moves)[:2] == (run.state_type, run.state_name)
        current = self._current()
        if current.is_active:
            assert (current.cursor_ms or 0) >= self.cursor  # never back while it runs
            self.cursor = current.cursor_ms or 0

    def after_tick(self) -> None:
        current, now = self._current(), clock.now_ms()
        threshold = now - current.grace_ms
        runs = self.runs()
        if current.is_active:  # a paused schedule makes nothing and drops nothing
            ahead = [r for r in runs if (r.schedule_ms or 0) > now]
            assert 1 <= len(ahead) <= 4
            waiting = [
                r for r in runs
                if r.state_name in ("Scheduled", "Late") and r.run_count == 0
                and r.scheduled_ms == r.schedule_ms and (r.schedule_ms or 0) <= threshold
            ]  # fmt: skip
            keeps = {"skip": 0, "latest": 1, "all": current.catchup_cap}[current.catchup]
            assert len(waiting) <= keeps
        assert not [
            r for r in runs if r.state_name == "Scheduled" and (r.scheduled_ms or 0) <= threshold
        ]
        if current.catchup == "all" and current.catchup_cap == 1000 and not self.paused_ever:
            made = [r.schedule_ms or 0 for r in runs]
            assert all(b - a == 10 * MIN for a, b in itertools.pairwise(made))

    def teardown(self) -> None:
        self.journal.close()
        clock.use(self.previous)
        self.folder.cleanup()


TestSchedulerMachine = SchedulerMachine.TestCase
TestSchedulerMachine.settings = hypothesis.settings(
    max_examples=50, stateful_step_count=25, deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)  # fmt: skip
