"""Regression tests for bugs found in review 6 of schedules."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from persevere import clock
from persevere.cli import cli
from persevere.journal import open_journal
from persevere.statemachine.calendar import make_calendar
from persevere.testing import TestClock
from persevere.worker import deploying, scheduling
from persevere.worker.scheduler import Scheduler
from persevere.worker.scheduling import ScheduleSpec

from .conftest import FLOWS, error_line, invoke
from .flows import scheduled

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    "rule",
    [
        "FREQ=DAILY;INTERVAL=0",
        "FREQ=WEEKLY;INTERVAL=00;BYDAY=MO",
        "DTSTART:20260101T070000\nRRULE:INTERVAL=0;FREQ=HOURLY",
        "FREQ=DAILY;INTERVAL=-1",
    ],
)
def test_an_rrule_interval_below_one_is_refused(rule: str) -> None:
    # dateutil iterates INTERVAL=0 for ever: stored, such a schedule hung every
    # scheduler pass (and every worker's loop) on its next time.
    with pytest.raises(ValueError) as raised:
        make_calendar("rrule", rule, "UTC", 0)
    assert "INTERVAL=" in str(raised.value)
    assert "must be a whole number of at least 1" in str(raised.value)
    assert "\n" not in str(raised.value)


# -- a redeploy and the runs made ahead ----------------------------------------------------


@pytest.fixture
def tc() -> Iterator[TestClock]:
    test_clock = TestClock("2026-03-28T12:00:30+00:00")
    previous = clock.use(test_clock)
    yield test_clock
    clock.use(previous)


@pytest.mark.parametrize("with_schedules", [True, False])
def test_a_redeploy_gives_the_runs_made_ahead_its_new_queue_and_parameters(
    tmp_path: Path, tc: TestClock, with_schedules: bool
) -> None:
    journal = open_journal(tmp_path / "p.db")
    given = f"{FLOWS / 'scheduled.py'}:nightly"
    weekly = [ScheduleSpec("cron", "0 7 * * 1", parameters={"full": True})]
    deploying.deploy(
        scheduled.nightly, "n", {"day": "mon"}, queue="old", tags=["a"], given=given,
        journal=journal, schedules=weekly,
    )  # fmt: skip
    Scheduler(journal).tick()
    again = weekly if with_schedules else None
    deployment, _ = deploying.deploy(
        scheduled.nightly, "n", {"day": "tue"}, queue="new", tags=["b"], given=given,
        journal=journal, schedules=again,
    )  # fmt: skip
    Scheduler(journal).tick()
    [run] = journal.query("SELECT work_queue, parameters, tags FROM flow_runs")
    # Before: the Monday run stayed on queue 'old' with day=mon, where no worker of the
    # deployment as it is now would ever take it.
    assert run["work_queue"] == "new"
    assert json.loads(run["parameters"]) == {"day": "tue", "full": True}
    assert run["tags"] == deployment.tags


@pytest.mark.parametrize(("text", "ms"), [("0s", 0), ("0m", 0), ("0", 0), ("90s", 90_000)])
def test_a_grace_of_zero_may_be_written_with_a_unit(text: str, ms: int) -> None:
    assert scheduling.grace_ms(text) == ms


@pytest.mark.parametrize("text", ["soon", "1.5m", "-5s", "s"])
def test_a_bad_grace_is_named_as_the_grace(text: str) -> None:
    with pytest.raises(ValueError) as raised:
        scheduling.grace_ms(text)
    assert str(raised.value).startswith(f"grace {text!r}")


def test_the_no_scheduler_help_says_what_else_stops() -> None:
    # A worker started --no-scheduler does not wake suspended sleeps nor time out pauses
    # either (the scheduler's pass does): its help said only "the runs of schedules".
    text = " ".join(CliRunner().invoke(cli, ["worker", "start", "--help"]).output.split())
    assert "suspended sleeps" in text
    assert "pauses" in text


def test_an_rrule_with_exrule_is_refused() -> None:
    # dateutil may search to year 9999 for the next time of a rule an EXRULE empties.
    rule = "DTSTART:20260101T070000\nRRULE:FREQ=DAILY\nEXRULE:FREQ=DAILY;BYHOUR=7"
    with pytest.raises(ValueError, match="EXRULE, which RFC 5545 deprecates") as raised:
        make_calendar("rrule", rule, "UTC")
    assert "\n" not in str(raised.value)


def test_a_missing_input_file_is_one_line(tmp_path: Path, db: Path) -> None:
    line = error_line(invoke("runs", "resume", "0" * 32, "--input-file", str(tmp_path / "no")))
    assert "--input-file" in line and "No such file" in line


def test_a_test_clock_reads_a_trailing_z() -> None:
    assert TestClock("2026-03-28T12:00:00Z").iso() == "2026-03-28T12:00:00+00:00"
