"""The scheduler as real processes: two `persevere scheduler`s on one database, and a
worker that makes its own scheduled runs and executes them. Also the worker's pass
in this process: on by default, off with ``scheduler=False``, and a pass that fails
does not stop the worker.
"""

from __future__ import annotations

import itertools
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from persevere import clock
from persevere.journal import Journal
from persevere.testing import TestClock
from persevere.worker import deploying, scheduling
from persevere.worker.scheduler import Scheduler
from persevere.worker.scheduling import ScheduleSpec
from persevere.worker.supervisor import Worker

from .conftest import FLOWS, run_cli, start, wait_for
from .flows import scheduled

pytestmark = pytest.mark.timeout(90)

FLOW_FILE = FLOWS / "scheduled.py"


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=30)


def schedule_times(journal: Journal, schedule_id: str) -> list[int]:
    rows = journal.query(
        "SELECT schedule_ms FROM flow_runs WHERE schedule_id = ? ORDER BY schedule_ms",
        (schedule_id,),
    )
    return [int(r[0]) for r in rows]


def test_two_scheduler_processes_make_each_time_once(
    db: Path, journal: Journal, processes: list[subprocess.Popen[bytes]]
) -> None:
    deployment = journal.deployments.put(
        flow_name="quick", name="n", entrypoint=f"{FLOW_FILE}:quick", parameters={},
        signature=deploying.describe(scheduled.quick.fn), work_queue="q",
    )  # fmt: skip
    every = {
        scheduling.add(journal, deployment, ScheduleSpec("interval", "1s")).id: 1000,
        scheduling.add(journal, deployment, ScheduleSpec("interval", "2s")).id: 2000,
    }
    first, first_log = start(processes, db, "scheduler", "--poll-seconds", "0.05")
    second, second_log = start(processes, db, "scheduler", "--poll-seconds", "0.05")
    one_second = next(iter(every))
    # 10 runs are made ahead at once; 15 means the schedulers went on for 4 s more.
    wait_for(lambda: len(schedule_times(journal, one_second)) >= 15, timeout=30, every=0.1)
    assert (stop(first), stop(second)) == (0, 0)
    logs = [first_log.read_text(), second_log.read_text()]
    for log in logs:
        assert "Traceback" not in log and "Error" not in log, log
        assert "scheduler started: a pass every 0.05 s" in log and "scheduler stopped" in log
    made_by = [log.count(": made ") for log in logs]
    print(f"passes that made runs, by process: {made_by}")  # shown with -s
    assert sum(made_by) >= 5
    duplicates = journal.query(
        "SELECT schedule_id, schedule_ms FROM flow_runs GROUP BY schedule_id, schedule_ms "
        "HAVING count(*) > 1"
    )
    assert duplicates == []
    for schedule_id, step in every.items():
        made = schedule_times(journal, schedule_id)
        assert len(made) >= 5
        gaps = [b - a for a, b in itertools.pairwise(made) if b - a != step]
        assert gaps == [], f"a time skipped: {gaps}"
        histories = journal.query(
            "SELECT count(*) FROM states s JOIN flow_runs r ON r.id = s.run_id "
            "WHERE r.schedule_id = ?",
            (schedule_id,),
        )
        assert histories[0][0] == len(made)  # one first transition each, none orphaned


def test_a_worker_makes_its_scheduled_runs_and_runs_them(
    db: Path, journal: Journal, processes: list[subprocess.Popen[bytes]]
) -> None:
    deployed = run_cli(db, "deploy", f"{FLOW_FILE}:quick", "--name", "n", "--interval", "1s")
    assert deployed.returncode == 0, deployed.stderr
    worker, log = start(processes, db, "worker", "start", "--poll-seconds", "0.1")

    def completed() -> int:
        rows = journal.query(
            "SELECT count(*) FROM flow_runs WHERE schedule_id IS NOT NULL "
            "AND state_type = 'COMPLETED'"
        )
        return int(rows[0][0])

    wait_for(lambda: completed() >= 2, timeout=45, every=0.1)
    assert stop(worker) == 0
    text = log.read_text()
    assert "Traceback" not in text, text
    # 10 ahead, and those due since the deploy (how many depends on how long it took to start)
    assert re.search(r"\(quick/n\): made 1\d runs for ", text), text


# -- the worker's pass, in this process ---------------------------------------------------------


@pytest.fixture
def tc() -> Iterator[TestClock]:
    test_clock = TestClock("2026-03-28T12:00:30+00:00")
    previous = clock.use(test_clock)
    yield test_clock
    clock.use(previous)


def test_a_worker_runs_the_scheduler_unless_told_not_to(
    db: Path, tc: TestClock, journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = journal.deployments.put(
        flow_name="quick", name="n", entrypoint=f"{FLOW_FILE}:quick", parameters={},
        signature=deploying.describe(scheduled.quick.fn),
    )  # fmt: skip
    scheduling.add(journal, deployment, ScheduleSpec("interval", "15m"))
    said: list[str] = []
    quiet = Worker(journal, scheduler=False, say=said.append)
    quiet.housekeeping()
    assert quiet.scheduler is None and journal.list_flow_runs() == []
    busy = Worker(journal, say=said.append)
    busy.housekeeping()
    assert len(journal.list_flow_runs()) == 4
    short_id = journal.schedules.of(deployment)[0].short_id
    span = "2026-03-28T12:15:00+00:00 .. 2026-03-28T13:00:00+00:00"
    assert said == [f"schedule {short_id} (quick/n): made 4 runs for {span}"]

    def broken(self: Scheduler) -> list[str]:
        raise RuntimeError("the disk is on fire")

    monkeypatch.setattr(Scheduler, "tick", broken)
    busy._last_poll = 0.0
    busy.housekeeping()  # said, not raised: the worker goes on
    assert said[-1] == "scheduler pass failed: RuntimeError: the disk is on fire"

    def interrupted(self: Scheduler) -> list[str]:
        raise KeyboardInterrupt

    monkeypatch.setattr(Scheduler, "tick", interrupted)
    busy._last_poll = 0.0
    with pytest.raises(KeyboardInterrupt):
        busy.housekeeping()


def test_the_scheduler_command_makes_one_pass_with_once(db: Path, journal: Journal) -> None:
    deployment = journal.deployments.put(
        flow_name="quick", name="n", entrypoint=f"{FLOW_FILE}:quick", parameters={},
        signature=deploying.describe(scheduled.quick.fn),
    )  # fmt: skip
    scheduling.add(journal, deployment, ScheduleSpec("cron", "0 0 1 1 *"))
    started = time.monotonic()
    done = run_cli(db, "scheduler", "--once")
    assert done.returncode == 0 and time.monotonic() - started < 30
    assert "(quick/n): made 1 run for " in done.stderr and "Traceback" not in done.stderr
    assert len(journal.list_flow_runs()) == 1
