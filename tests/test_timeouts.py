"""Timeouts: TimedOut within a second of the deadline, in both modes."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from persevere import RunTimeout, flow, task
from persevere.journal import Journal
from persevere.worker.owners import process_start

from .conftest import wait_for

DEADLINE = 0.5


def sleepy(seconds: float = 30) -> str:
    time.sleep(seconds)
    return "woke"


def spin() -> int:
    n = 0
    while True:  # pure Python, never sleeps
        n += 1


def run_timed(body: Any, mode: str) -> tuple[Any, float]:
    timed = task(body, name=body.__name__, timeout_seconds=DEADLINE, timeout_mode=mode)

    @flow(result_serializer="pickle")
    def wrapper() -> Any:
        return timed(return_state=True)

    started = time.monotonic()
    state = wrapper()
    return state, time.monotonic() - started


@pytest.mark.parametrize("mode", ["interrupt", "process"])
@pytest.mark.parametrize("body", [sleepy, spin], ids=["sleeping", "cpu-bound"])
def test_a_task_is_timed_out_near_its_deadline(journal: Journal, body: Any, mode: str) -> None:
    state, elapsed = run_timed(body, mode)
    assert state.is_failed() and state.name == "TimedOut"
    assert isinstance(state.data, RunTimeout) and isinstance(state.data, TimeoutError)
    assert elapsed < DEADLINE + 1.0
    [run] = journal.list_flow_runs()
    [t] = journal.task_runs(run.id)
    assert (t.state_type.value, t.state_name) == ("FAILED", "TimedOut")


def test_the_process_mode_kills_the_whole_process_group(journal: Journal, tmp_path: Path) -> None:
    pid_file = tmp_path / "shell.pid"

    def starts_a_shell() -> None:
        child = subprocess.Popen(["sleep", "600"])
        pid_file.write_text(str(child.pid))
        time.sleep(600)

    state, _ = run_timed(starts_a_shell, "process")
    assert state.name == "TimedOut"
    pid = int(pid_file.read_text())
    wait_for(lambda: process_start(pid) is None, timeout=10)  # `sleep 600` died with it


def test_the_process_mode_returns_values_and_raises_errors(journal: Journal) -> None:
    @task(timeout_seconds=30, timeout_mode="process")
    def compute(x: int) -> dict[str, int]:
        return {"square": x * x}

    @task(timeout_seconds=30, timeout_mode="process")
    def broken() -> None:
        raise KeyError("from the child")

    @flow
    def both() -> dict[str, int]:
        with pytest.raises(KeyError, match="from the child"):
            broken()
        return compute(7)

    assert both() == {"square": 49}


def test_outside_the_main_thread_the_run_still_times_out_on_time(journal: Journal) -> None:
    outcome: list[Any] = []
    thread = threading.Thread(target=lambda: outcome.append(run_timed(sleepy, "interrupt")))
    thread.start()
    thread.join(30)
    [(state, elapsed)] = outcome
    assert state.name == "TimedOut" and elapsed < DEADLINE + 1.0


def test_a_timed_out_attempt_is_retried(journal: Journal) -> None:
    attempts: list[int] = []

    @task(timeout_seconds=DEADLINE, retries=1)
    def slow_then_fast() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            time.sleep(30)
        return "done"

    @flow
    def patient() -> str:
        return slow_then_fast()

    assert patient() == "done" and len(attempts) == 2


def test_a_flow_deadline_stops_the_task_inside_it(journal: Journal) -> None:
    @task(timeout_seconds=30)
    def long() -> None:
        time.sleep(30)

    @flow(timeout_seconds=DEADLINE)
    def bounded() -> None:
        long()

    started = time.monotonic()
    state = bounded(return_state=True)
    assert state.name == "TimedOut" and time.monotonic() - started < DEADLINE + 1.0
    [run] = journal.list_flow_runs()
    assert run.state_name == "TimedOut"


def test_an_unknown_timeout_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="timeout_mode"):
        task(timeout_seconds=1, timeout_mode="thread")(sleepy)


def test_a_flow_deadline_is_not_retried_by_the_task_it_interrupts(journal: Journal) -> None:
    attempts: list[int] = []

    @task(retries=3, retry_delay_seconds=0)
    def long() -> None:
        attempts.append(1)
        time.sleep(30)

    @flow(timeout_seconds=DEADLINE)
    def bounded() -> None:
        long()

    started = time.monotonic()
    assert bounded(return_state=True).name == "TimedOut"
    assert attempts == [1] and time.monotonic() - started < DEADLINE + 1.0
