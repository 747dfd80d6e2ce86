"""persevere.testing: the harness and its clock, as a user of it sees them."""

from __future__ import annotations

import datetime as dt
import itertools
import os
import time
from pathlib import Path

import pytest

import persevere
from persevere import clock, flow, task
from persevere.journal import open_journal
from persevere.testing import Harness, TestClock, harness

START = "2026-03-28T12:00:00+00:00"


def test_clock_moves_only_when_told() -> None:
    c = TestClock(START)
    first = c.now_ms()
    time.sleep(0.01)
    assert c.now_ms() == first
    c.advance(90)
    c.advance(minutes=1, hours=1)
    assert c.iso() == "2026-03-28T13:02:30+00:00"
    c.sleep(0.5)
    assert c.now_ms() == first + (90 + 60 + 3600) * 1000 + 500
    c.set("2026-03-29T00:00:00+00:00")
    assert c.now == dt.datetime(2026, 3, 29, tzinfo=dt.timezone.utc)


def test_clock_refuses_to_go_back_or_guess_a_zone() -> None:
    c = TestClock(START)
    with pytest.raises(ValueError, match="forward only"):
        c.advance(-1)
    with pytest.raises(ValueError, match="in its past"):
        c.set("2026-03-28T11:00:00+00:00")
    with pytest.raises(ValueError, match="no timezone"):
        TestClock("2026-03-28T12:00:00")


def test_harness_swaps_database_and_clock_and_puts_them_back(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PERSEVERE_DB", str(tmp_path / "mine.db"))
    before = clock.now_ms()
    with harness(start=START) as h:
        assert os.environ["PERSEVERE_DB"] == str(h.path)
        assert clock.now_ms() == h.clock.now_ms()
        assert h.journal is open_journal()
        folder = h.path.parent
    assert not folder.exists()
    assert os.environ["PERSEVERE_DB"] == str(tmp_path / "mine.db")
    assert abs(clock.now_ms() - before) < 60_000  # the system clock again


def test_backoff_and_sleep_take_no_time_under_the_harness() -> None:
    attempts: list[int] = []

    @task(retries=3, retry_delay_seconds=3600)
    def flaky() -> str:
        attempts.append(clock.now_ms())
        if len(attempts) < 3:
            raise ValueError("not yet")
        return "ok"

    @flow
    def nightly() -> str:
        value = flaky()
        persevere.sleep(24 * 3600)
        return value

    with harness(start=START) as h:
        started = time.monotonic()
        assert nightly() == "ok"
        assert time.monotonic() - started < 10
        assert [b - a for a, b in itertools.pairwise(attempts)] == [3_600_000, 3_600_000]
        assert h.clock.iso() == "2026-03-29T14:00:00+00:00"  # 2 h of backoff, then a day
        run = h.journal.list_flow_runs()[0]
        assert run.state_name == "Completed"
        sleep = [t for t in h.journal.task_runs(run.id) if t.kind == "sleep"]
        assert sleep[0].next_attempt_ms == h.clock.now_ms()


def test_the_pytest_fixture(persevere_harness: Harness) -> None:
    assert isinstance(persevere_harness.clock, TestClock)
    assert os.environ["PERSEVERE_DB"] == str(persevere_harness.path)
    assert clock.now_ms() == persevere_harness.clock.now_ms()
