"""Durable retries: the policy (pure), the engine, and a kill during the backoff."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from persevere import Abort, State, exponential_backoff, flow, task
from persevere.journal import Journal
from persevere.statemachine.retries import RetryPolicy, next_attempt_ms, retry_delay

from .conftest import FLOWS, cli_env, run_cli


def test_a_fixed_delay_for_every_retry_then_none() -> None:
    policy = RetryPolicy(2, 10)
    assert [next_attempt_ms(policy, used, 1000, 0.5) for used in range(3)] == [11000, 11000, None]


def test_a_list_gives_one_delay_per_retry_and_repeats_the_last() -> None:
    policy = RetryPolicy(4, [1, 2, 5])
    assert [retry_delay(policy, n, 0.5) for n in range(1, 5)] == [1, 2, 5, 5]


def test_a_function_of_the_retry_number() -> None:
    assert [retry_delay(RetryPolicy(3, lambda n: n * 1.5), n, 0.5) for n in (1, 2, 3)] == [
        1.5, 3.0, 4.5
    ]  # fmt: skip


def test_exponential_backoff_doubles_from_the_factor() -> None:
    policy = RetryPolicy(4, exponential_backoff(3))
    assert [retry_delay(policy, n, 0.5) for n in range(1, 5)] == [3, 6, 12, 24]


@given(
    delay=st.floats(min_value=0, max_value=1e4),
    factor=st.floats(min_value=0, max_value=1),
    rand=st.floats(min_value=0, max_value=1, exclude_max=True),
)
def test_jitter_stays_within_its_bounds(delay: float, factor: float, rand: float) -> None:
    value = retry_delay(RetryPolicy(1, delay, factor), 1, rand)
    assert delay * (1 - factor) - 1e-6 <= value <= delay * (1 + factor) + 1e-6


@pytest.mark.parametrize(
    "options",
    [
        {"retries": -1},
        {"retries": 1.5},
        {"delay": -1},
        {"delay": []},
        {"delay": [1, -2]},
        {"delay": "soon"},
        {"delay": True},
        {"jitter_factor": 2},
    ],
)
def test_bad_options_are_refused_when_declared(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**{"retries": 1, **options})


def counting_task(fails: int, **options: Any) -> tuple[Any, list[int]]:
    attempts: list[int] = []

    @task(**options)
    def flaky() -> int:
        attempts.append(len(attempts) + 1)
        if len(attempts) <= fails:
            raise ConnectionError(f"attempt {len(attempts)}")
        return len(attempts)

    return flaky, attempts


def in_a_flow(t: Any) -> Any:
    @flow(result_serializer="pickle")
    def wrapper() -> Any:
        return t(return_state=True)

    return wrapper()


def names(journal: Journal) -> list[str]:
    [run] = journal.list_flow_runs()
    [t] = journal.task_runs(run.id)
    return [m.name for m in journal.history(t.id)]


def test_retries_until_success_journaling_each_wait(journal: Journal) -> None:
    flaky, attempts = counting_task(2, retries=3, retry_delay_seconds=0.01)
    state = in_a_flow(flaky)
    assert state.result() == 3 and attempts == [1, 2, 3]
    assert names(journal) == ["Pending", "Running", "AwaitingRetry", "Pending", "Retrying",
                              "AwaitingRetry", "Pending", "Retrying", "Completed"]  # fmt: skip
    [run] = journal.list_flow_runs()
    [t] = journal.task_runs(run.id)
    assert (t.attempt, t.retries_used) == (3, 2)


def test_retries_run_out(journal: Journal) -> None:
    flaky, attempts = counting_task(5, retries=2)
    state = in_a_flow(flaky)
    assert state.is_failed() and attempts == [1, 2, 3]
    assert names(journal)[-1] == "Failed"


def test_abort_is_never_retried(journal: Journal) -> None:
    calls: list[int] = []

    @task(retries=5)
    def gives_up() -> None:
        calls.append(1)
        raise Abort("the input is wrong: retrying cannot help")

    assert in_a_flow(gives_up).is_failed() and calls == [1]


def test_retry_condition_decides(journal: Journal) -> None:
    seen: list[str] = []

    def only_connection_errors(t: Any, run: Any, state: State) -> bool:
        seen.append(type(state.data).__name__)
        return isinstance(state.data, ConnectionError)

    calls: list[int] = []

    @task(retries=5, retry_condition_fn=only_connection_errors)
    def picky() -> None:
        calls.append(1)
        raise (ConnectionError if len(calls) < 3 else KeyError)("x")

    assert in_a_flow(picky).is_failed()
    assert calls == [1, 1, 1] and seen == ["ConnectionError", "ConnectionError", "KeyError"]


def test_a_process_killed_during_the_backoff_resumes_the_count_and_waits_the_rest(
    db: Path, tmp_path: Path
) -> None:
    side = tmp_path / "side.txt"
    env = {"RETRY_SIDE_FILE": str(side), "RETRY_DELAY": "3"}
    killed = subprocess.run(
        [sys.executable, "-m", "persevere", "run", f"{FLOWS / 'retrying.py'}:retrying"],
        env=cli_env(db, RETRY_KILL_ON="1", **env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert killed.returncode == -signal.SIGKILL
    [run] = json.loads(run_cli(db, "runs", "ls", "--json").stdout)
    with sqlite3.connect(db) as conn:
        [(wake, used, attempt)] = conn.execute(
            "SELECT next_attempt_ms, retries_used, attempt FROM task_runs"
        ).fetchall()
    assert (used, attempt) == (1, 1)
    resumed_at = time.time() * 1000
    done = run_cli(db, "runs", "resume", run["id"], **env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == "ok after 3 attempts"
    lines = side.read_text().splitlines()
    assert [line.split()[1] for line in lines] == ["1", "2", "3"]  # the count went on
    assert len({line.split()[2] for line in lines}) == 1  # one idempotency key
    with sqlite3.connect(db) as conn:
        retried = conn.execute(
            "SELECT ts_ms FROM states WHERE name = 'Retrying' ORDER BY ts_ms"
        ).fetchall()
    first_retry = retried[0][0]
    assert first_retry >= wake  # not before the journaled wake-up time
    assert first_retry - resumed_at < 3000 - 300  # only what was left of the 3 s delay


def test_a_flow_retry_replays_completed_tasks(journal: Journal) -> None:
    calls = {"first": 0, "second": 0}

    @task
    def first() -> int:
        calls["first"] += 1
        return 1

    @task
    def second() -> int:
        calls["second"] += 1
        if calls["second"] == 1:
            raise ConnectionError("once")
        return 2

    @flow(retries=2, retry_delay_seconds=0.01)
    def twice() -> int:
        return first() + second()

    assert twice() == 3
    assert calls == {"first": 1, "second": 2}
    [run] = journal.list_flow_runs()
    assert [m.name for m in journal.history(run.id)] == [
        "Pending", "Running", "AwaitingRetry", "Pending", "Retrying", "Completed"
    ]  # fmt: skip
    assert run.retries_used == 1


def test_a_flow_that_aborts_is_not_retried(journal: Journal) -> None:
    calls: list[int] = []

    @flow(retries=3)
    def stubborn() -> None:
        calls.append(1)
        raise Abort("no point")

    with pytest.raises(Abort):
        stubborn()
    assert calls == [1]


def test_a_flow_killed_during_its_backoff_is_resumed_after_the_rest_of_the_delay(
    db: Path, tmp_path: Path
) -> None:
    side = tmp_path / "side.txt"
    env = {"RETRY_SIDE_FILE": str(side), "RETRY_DELAY": "3"}
    killed = subprocess.run(
        [sys.executable, "-m", "persevere", "run", f"{FLOWS / 'retrying.py'}:flaky_flow"],
        env=cli_env(db, RETRY_KILL_ON="1", **env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert killed.returncode == -signal.SIGKILL
    [run] = json.loads(run_cli(db, "runs", "ls", "--json").stdout)
    assert run["state_name"] == "AwaitingRetry"
    with sqlite3.connect(db) as conn:
        [(wake,)] = conn.execute("SELECT scheduled_ms FROM flow_runs").fetchall()
    done = run_cli(db, "runs", "resume", run["id"], **env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == 2
    assert side.read_text().splitlines() == ["first-step", "flow-body", "flow-body"]
    with sqlite3.connect(db) as conn:
        [(retried_at,)] = conn.execute(
            "SELECT ts_ms FROM states WHERE run_id = ? AND name = 'Retrying'", (run["id"],)
        ).fetchall()
    assert retried_at >= wake
